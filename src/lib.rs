//! # camp-server
//!
//! A server (and client) for CAMP v1, a small binary protocol over
//! WebSocket, whose extensions are sandboxed WebAssembly components.
//!
//! The crate is laid out the way data flows through it; each module uses
//! only the ones before it (protocol ← metrics ← session ← extension ←
//! client ← server ← admin; [`transport`] and [`tls`] are leaves):
//!
//! - [`protocol`]: frames and their byte layout (pure, no I/O);
//! - [`metrics`]: the counters every layer adds to;
//! - [`session`]: one task per connection (handshake, ACKs, heartbeat,
//!   queue), the [`Session`](session::Session) handle, and the
//!   [`Filter`](session::Filter) seam every message passes through;
//! - [`extension`]: the [`Extension`](extension::Extension) trait and the
//!   ordered [`Pipeline`](extension::Pipeline), which is the session's
//!   filter; WebAssembly plugins;
//! - [`client`]: dialing a CAMP server;
//! - [`server`]: listener, HTTP upgrade (auth, session id, subprotocol),
//!   registry, peers and graceful shutdown;
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/admin`.
//!
//! An echo server and a client talking to it:
//!
//! ```
//! use camp_server::{client::Client, extension::Message, server::Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (server, mut incoming) = Server::builder().tokens(["secret"]).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let url = format!("ws://{}/", listener.local_addr().unwrap());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(async move {
//!     server.serve(listener, async { let _ = stopped.await; }).await
//! });
//! tokio::spawn(async move {
//!     while let Some((session, mut events)) = incoming.next().await {
//!         tokio::spawn(async move {
//!             while let Some(Message::Utf8(text)) = events.next_message().await {
//!                 session.send_utf8(text);
//!             }
//!         });
//!     }
//! });
//!
//! let (client, mut events) = Client::new(url, "secret").connect().await.unwrap();
//! client.send_utf8("hello").acked().await.unwrap();
//! assert_eq!(events.next_message().await, Some(Message::Utf8("hello".into())));
//! stop.send(()).unwrap();
//! running.await.unwrap().unwrap();
//! # }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod client;
pub mod config;
pub mod extension;
mod memory;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod tls;
pub mod transport;
