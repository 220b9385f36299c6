//! The server: listener, HTTP upgrade, the session registry and shutdown.
//!
//! ```no_run
//! use camp_server::server::Server;
//!
//! # async fn demo() -> std::io::Result<()> {
//! let (server, mut incoming) = Server::builder().tokens(["secret"]).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! tokio::spawn(async move { server.serve(listener, shutdown).await });
//! while let Some((session, mut events)) = incoming.next().await {
//!     tokio::spawn(async move {
//!         while let Some(message) = events.next_message().await {
//!             println!("session {} sent {message:?}", session.id());
//!         }
//!     });
//! }
//! # Ok(()) }
//! ```

mod limits;
mod registry;
pub mod tls;
mod tokens;
mod upgrade;
#[cfg(test)]
mod upgrade_proptests;

pub use limits::UpgradeLimits;
pub use tokens::TokenList;
pub use upgrade::{MAX_HEADERS, Refusal, SUBPROTOCOL};
pub(crate) use upgrade::{client_upgrade, read_head as read_request_head};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::{Client, ClientError};
use crate::extension::Pipeline;
use crate::metrics::{Metrics, Tolerated};
use crate::protocol;
use crate::session::transaction::TxLimits;
use crate::session::{
    Backpressure, Driver, Role, Session, SessionConfig, SessionEvents, event_channel,
};
use registry::Registry;
use tls::{ClientTls, TlsConfig};
use upgrade::Prefixed;

/// An async check of a bearer token: true admits the client.
pub type Validator =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// How long shutdown waits for sessions to say goodbye before it cuts them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Configures a [`Server`]. Defaults are the reference server's.
#[must_use]
pub struct ServerBuilder {
    keep_alive: Duration,
    handshake_timeout: Duration,
    backpressure: Backpressure,
    validator: Option<Validator>,
    pipeline: Pipeline,
    /// Certificate and key when the server speaks TLS.
    tls: Option<TlsConfig>,
    /// Roots trusted when dialing `wss://` peers.
    peer_tls: Option<ClientTls>,
    /// Refuse what the reference server tolerates.
    strict: bool,
    /// Serve upgrades from the start.
    ready: bool,
    /// Limits before a connection is a session.
    upgrade_limits: UpgradeLimits,
    /// Transaction limits of every session.
    tx_limits: TxLimits,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            keep_alive: Duration::from_millis(15_000),
            handshake_timeout: Duration::from_secs(10),
            backpressure: Backpressure::default(),
            validator: None,
            pipeline: Pipeline::new(),
            tls: None,
            peer_tls: None,
            strict: false,
            ready: true,
            upgrade_limits: UpgradeLimits::default(),
            tx_limits: TxLimits::default(),
        }
    }
}

impl ServerBuilder {
    /// Heartbeat interval (default 15 s): a PING goes out every interval,
    /// and at every tick a session that sent nothing since the previous
    /// tick is closed (after one to two intervals of silence).
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Whether the server serves upgrades as soon as it runs (default
    /// true). With false, upgrades are refused with 503 (`not_ready`) until
    /// [`Server::set_ready`]: the `camp-server` binary starts so, so that
    /// no session is served before its initial plugins are loaded.
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// Refuse the deviations the reference server tolerates from the
    /// published clients (default off: they are accepted and counted in
    /// `camp_protocol_tolerated_total`, see [`Tolerated`]).
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// How long a client has to complete the CAMP handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Outgoing queue limits of every session.
    pub fn backpressure(mut self, backpressure: Backpressure) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// The token validator: called with the bearer token (without
    /// `Bearer `) of every upgrade request. Without one, every request is
    /// refused.
    pub fn validator<F, Fut>(mut self, validator: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.validator = Some(Arc::new(move |token| Box::pin(validator(token))));
        self
    }

    /// Admits exactly these tokens.
    pub fn tokens<I, T>(self, tokens: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        // Compared in constant time (see `tokens::TokenList`).
        let set = Arc::new(tokens::TokenList::new(tokens.into_iter().map(Into::into)));
        self.validator(move |token| {
            let ok = set.contains(&token);
            async move { ok }
        })
    }

    /// The extension pipeline every session's messages pass through.
    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = pipeline;
        self
    }

    /// Serve TLS (`wss://`) with this certificate instead of plain TCP.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The roots [`Server::connect_peer`] trusts for `wss://` peers
    /// (default: the system bundle).
    pub fn peer_tls(mut self, roots: ClientTls) -> Self {
        self.peer_tls = Some(roots);
        self
    }

    /// Builds the server and the stream of its new sessions.
    pub fn build(self) -> (Server, Incoming) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let inner = Inner {
            session: SessionConfig {
                keep_alive: self.keep_alive,
                handshake_timeout: self.handshake_timeout,
                backpressure: self.backpressure,
                features: protocol::FEATURES,
                metrics: Arc::default(),
                strict: self.strict,
                tx_limits: self.tx_limits,
            },
            validator: self
                .validator
                .unwrap_or_else(|| Arc::new(|_| Box::pin(async { false }))),
            pipeline: self.pipeline,
            tls: self.tls,
            peer_tls: self.peer_tls,
            registry: Registry::default(),
            incoming: tx,
            shutdown,
            ready: AtomicBool::new(self.ready),
            connections: Arc::new(limits::Connections::new(self.upgrade_limits)),
        };
        (
            Server {
                inner: Arc::new(inner),
            },
            Incoming(rx),
        )
    }
}

/// New sessions, each with its event stream, once their handshake is done.
#[derive(Debug)]
pub struct Incoming(mpsc::UnboundedReceiver<(Session, SessionEvents)>);

impl Incoming {
    /// The next session; `None` once the server is gone.
    pub async fn next(&mut self) -> Option<(Session, SessionEvents)> {
        self.0.recv().await
    }
}

struct Inner {
    session: SessionConfig,
    validator: Validator,
    pipeline: Pipeline,
    /// Accept TLS with this certificate.
    tls: Option<TlsConfig>,
    /// Roots for `wss://` peers.
    peer_tls: Option<ClientTls>,
    registry: Registry,
    incoming: mpsc::UnboundedSender<(Session, SessionEvents)>,
    /// Turns true when the server shuts down; every session watches it.
    shutdown: watch::Sender<bool>,
    /// Whether upgrades are served: false until the application says the
    /// server is ready (e.g. its initial plugins loaded).
    ready: AtomicBool,
    /// Connections held, against the upgrade limits.
    connections: Arc<limits::Connections>,
}

/// A CAMP server. Cheap to clone; clones are the same server.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// A builder with the reference server's defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Whether the server serves upgrades (see [`ServerBuilder::ready`]).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Marks the server ready: upgrades are served from now on.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// The extension pipeline (register, replace, unregister, list).
    pub fn pipeline(&self) -> &Pipeline {
        &self.inner.pipeline
    }

    /// The open sessions.
    pub fn sessions(&self) -> Vec<Session> {
        self.inner.registry.sessions()
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.session.metrics
    }

    /// The open session with this id.
    pub fn session(&self, sid: u64) -> Option<Session> {
        self.inner.registry.get(sid)
    }

    /// Dials another CAMP server (`ws://` or `wss://` URL, bearer `token`;
    /// the reference's `ConnectPeer`) and returns the session, with the
    /// same API as an accepted one: this server's keep-alive, backpressure
    /// and extension pipeline apply, and it closes when the server shuts
    /// down. The session id goes as both `x-camp-sid` and `x-CAMP-sid`, so
    /// the reference server (which reads only the latter) accepts it; no
    /// subprotocol is offered, like the reference's own peer client.
    pub async fn connect_peer(
        &self,
        url: impl Into<String>,
        token: impl Into<String>,
    ) -> Result<(Session, SessionEvents), ClientError> {
        let config = &self.inner.session;
        let mut client = Client::new(url, token)
            .sid_params(["x-camp-sid", "x-CAMP-sid"])
            .subprotocol(false)
            .keep_alive(config.keep_alive)
            .handshake_timeout(config.handshake_timeout)
            .backpressure(config.backpressure)
            .pipeline(self.inner.pipeline.clone());
        if let Some(roots) = &self.inner.peer_tls {
            client = client.tls(roots.clone());
        }
        client
            .connect_until(Some(self.inner.shutdown.subscribe()))
            .await
    }

    /// Accepts connections on `listener` until `shutdown` completes; then
    /// stops accepting, says BYE to every session, waits for them to close
    /// (at most 5 s) and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        let _ = tcp.set_nodelay(true);
                        let inner = self.inner.clone();
                        connections.spawn(async move { inner.accept(tcp, remote).await });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next() => {}
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!(sessions = connections.len(), "shutting down");
        self.inner.shutdown.send_replace(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(left = connections.len(), "sessions did not close in time");
            connections.shutdown().await;
        }
        Ok(())
    }
}

impl Inner {
    /// Handles one accepted TCP connection from request to close.
    async fn accept(&self, tcp: TcpStream, remote: SocketAddr) {
        // Held until the connection ends (the session included).
        let _permit = match self.connections.admit(remote.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                let (tls, metrics) = (self.tls.is_some(), &self.session.metrics);
                return limits::refuse_at_accept(tcp, remote, refusal, tls, metrics).await;
            }
        };
        let timeout = self.connections.limits.request_timeout;
        let Some(tls) = &self.tls else {
            return self.upgrade(tcp, remote).await;
        };
        match tokio::time::timeout(timeout, tls.acceptor().accept(tcp)).await {
            Ok(Ok(stream)) => self.upgrade(stream, remote).await,
            Ok(Err(e)) => tracing::info!(%remote, "TLS handshake failed: {e}"),
            Err(_) => tracing::info!(%remote, "TLS handshake not completed in time"),
        }
    }

    // The WebSocket library's callback type fixes a large error type.
    #[allow(clippy::result_large_err)]
    async fn upgrade<S>(&self, mut stream: S, remote: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &self.connections.limits;
        let reading = upgrade::read_head_max(&mut stream, limits.max_request_head_bytes);
        let head = match tokio::time::timeout(limits.request_timeout, reading).await {
            Ok(Ok(head)) => head,
            Ok(Err(refusal)) => return self.refuse(&mut stream, remote, refusal).await,
            Err(_) => {
                let refusal = limits::timed_out(limits);
                return self.refuse(&mut stream, remote, refusal).await;
            }
        };
        let up = match upgrade::check(&head, self.session.strict, limits.max_query_params) {
            Ok(up) => up,
            Err(refusal) => return self.refuse(&mut stream, remote, refusal).await,
        };
        if up.legacy_sid {
            self.session.metrics.tolerated(Tolerated::LegacySidParam);
            tracing::info!(%remote, sid = up.sid, kind = Tolerated::LegacySidParam.label(),
                "tolerated, as the reference server does (strict mode refuses it): x-cryo-sid instead of x-camp-sid");
        }
        let shutting_down = *self.shutdown.borrow();
        if shutting_down {
            let refusal = Refusal::new(503, "shutting_down", "server is shutting down");
            return self.refuse(&mut stream, remote, refusal).await;
        }
        if !self.ready.load(Ordering::Acquire) {
            // Never serve a session before its extensions are in place.
            let refusal = Refusal::new(503, "not_ready", "server is starting (loading plugins)");
            return self.refuse(&mut stream, remote, refusal).await;
        }
        if !(self.validator)(up.token.clone()).await {
            let refusal = Refusal::new(401, "rejected_token", "token rejected");
            return self.refuse(&mut stream, remote, refusal).await;
        }
        let Some(reservation) = self.registry.reserve(up.sid) else {
            let refusal = Refusal::new(
                409,
                "duplicate_sid",
                format!("session {} is already connected", up.sid),
            );
            return self.refuse(&mut stream, remote, refusal).await;
        };
        let camp = up.camp_subprotocol;
        let callback = move |_: &Request, mut response: Response| {
            if camp {
                response.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static(SUBPROTOCOL),
                );
            }
            Ok(response)
        };
        let ws = match tokio_tungstenite::accept_hdr_async_with_config(
            Prefixed::new(head, stream),
            callback,
            Some(ws_config()),
        )
        .await
        {
            Ok(ws) => ws,
            Err(e) => {
                tracing::info!(%remote, "WebSocket handshake failed: {e}");
                return;
            }
        };
        let mut driver = Driver::new(
            ws,
            up.sid,
            Role::Server,
            self.session.clone(),
            self.pipeline.clone(),
        );
        let features = match driver.handshake(self.shutdown.subscribe()).await {
            Ok(features) => features,
            Err(info) => {
                tracing::info!(%remote, sid = up.sid, code = info.code, "handshake failed: {}", info.reason);
                return;
            }
        };
        let (session, commands) = Session::new(up.sid, Some(remote), features);
        reservation.attach(session.clone());
        let (events_tx, events) = event_channel();
        let _ = self.incoming.send((session.clone(), events));
        tracing::info!(%remote, sid = up.sid, "session open");
        let metrics = &self.session.metrics;
        metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        metrics.sessions_open.fetch_add(1, Ordering::Relaxed);
        let info = driver
            .run(session, commands, events_tx, self.shutdown.subscribe())
            .await;
        metrics.sessions_open.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(%remote, sid = up.sid, code = info.code, by_peer = info.by_peer, "session closed: {}", info.reason);
        drop(reservation);
    }

    async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        remote: SocketAddr,
        refusal: Refusal,
    ) {
        // Never log the request itself: it carries the bearer token.
        tracing::info!(%remote, status = refusal.status, reason = refusal.reason, "upgrade refused");
        self.session.metrics.refused(refusal.reason);
        let _ = refusal.send_and_drain(stream).await;
    }
}

/// WebSocket settings: messages a little larger than the largest CAMP frame
/// still reach the codec, so an oversized frame gets a precise ERROR.
///
/// The read buffer is 8 KiB instead of tungstenite's 128 KiB default:
/// tungstenite allocates it per connection up front and zero-fills its
/// free part before every socket read, so the default made every idle
/// session cost ~128 KiB of resident memory and every read a 128 KiB
/// memset. Measured with `camp-bench` (see BENCHMARKS.md): idle memory
/// drops from ~139 KiB to ~30 KiB per session; large frames still arrive
/// whole (the buffer grows to the frame's length and reads in 8 KiB
/// steps).
pub(crate) const READ_BUFFER: usize = 8 * 1024;

pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(2 * protocol::MAX_FRAME))
        .max_frame_size(Some(2 * protocol::MAX_FRAME))
}
