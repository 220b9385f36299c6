//! Two CAMP servers in one process: B accepts, A dials B with
//! `connect_peer` and both use the ordinary session API on the link.
//!
//! ```text
//! cargo run --example peer
//! ```

use std::time::Duration;

use camp_server::extension::Message;
use camp_server::server::Server;
use camp_server::session::{SessionEvent, StreamOptions};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Server B: greets every peer and prints what it streams.
    let (b, mut b_incoming) = Server::builder().tokens(["b-secret"]).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let b_url = format!("ws://{}/", listener.local_addr()?);
    tokio::spawn(async move { b.serve(listener, std::future::pending()).await });
    tokio::spawn(async move {
        while let Some((session, mut events)) = b_incoming.next().await {
            drop(session.send_utf8(format!("B welcomes peer {}", session.id())));
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    match event {
                        SessionEvent::Message(m) => println!("B got {m:?}"),
                        SessionEvent::Stream(mut s) => {
                            let mut text = String::new();
                            match s.read_to_string(&mut text).await {
                                Ok(_) => println!("B got stream {:?}: {text:?}", s.name()),
                                Err(e) => println!("B: stream failed: {e}"),
                            }
                        }
                        SessionEvent::Stats(_) => {}
                        SessionEvent::Closed(info) => println!("B: peer left ({})", info.reason),
                    }
                }
            });
        }
    });

    // Server A dials B.
    let (a, _a_incoming) = Server::builder().tokens(["a-secret"]).build();
    let (to_b, mut from_b) = a.connect_peer(b_url, "b-secret").await?;
    if let Some(Message::Utf8(greeting)) = from_b.next_message().await {
        println!("A got {greeting:?}");
    }
    to_b.send_utf8("hello from A").acked().await?;
    let sent = to_b
        .stream(
            &b"a stream from A to B"[..],
            StreamOptions::push("greeting"),
        )
        .await?;
    println!("A streamed {sent} bytes");
    to_b.close("done");
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
