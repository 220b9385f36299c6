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

mod echo;
mod limits;
mod registry;
mod tokens;
mod upgrade;
#[cfg(test)]
mod upgrade_proptests;

pub use echo::echo;
pub use limits::UpgradeLimits;
pub use tokens::TokenList;
pub use upgrade::{MAX_HEADERS, Refusal, SUBPROTOCOL};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::client::{Client, ClientError};
use crate::extension::Pipeline;
use crate::metrics::Metrics;
use crate::protocol;
use crate::session::transaction::TxLimits;
use crate::session::{
    Backpressure, Driver, Filter, Role, Session, SessionConfig, SessionEvents, Setup, open,
};
use crate::tls::{ClientTls, TlsConfig};
use crate::transport::ws_config;
use limits::Permit;
use registry::{Registry, Reservation};
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
    /// `camp_protocol_tolerated_total`, see [`Tolerated`](crate::metrics::Tolerated)).
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
            filter: Arc::new(self.pipeline.clone()),
            pipeline: self.pipeline,
            tls: self.tls,
            peer_tls: self.peer_tls,
            registry: Registry::default(),
            sessions: Mutex::default(),
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
    /// The pipeline as every session's filter.
    filter: Arc<dyn Filter>,
    /// Accept TLS with this certificate.
    tls: Option<TlsConfig>,
    /// Roots for `wss://` peers.
    peer_tls: Option<ClientTls>,
    registry: Registry,
    /// The tasks of open sessions, accepted or dialled with
    /// [`Server::connect_peer`]; shutdown waits for them.
    sessions: Mutex<JoinSet<()>>,
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
    /// and extension pipeline apply, it counts in this server's metrics,
    /// is listed in [`Server::sessions`] (and `/admin`), and shutdown says
    /// BYE to it and waits for it like for accepted sessions. The session id
    /// goes as both `x-camp-sid` and `x-CAMP-sid`, so the reference server
    /// (which reads only the latter) accepts it; no subprotocol is offered,
    /// like the reference's own peer client.
    pub async fn connect_peer(
        &self,
        url: impl Into<String>,
        token: impl Into<String>,
    ) -> Result<(Session, SessionEvents), ClientError> {
        let inner = &self.inner;
        let config = &inner.session;
        let mut client = Client::new(url, token)
            .sid_params(["x-camp-sid", "x-CAMP-sid"])
            .subprotocol(false)
            .keep_alive(config.keep_alive)
            .handshake_timeout(config.handshake_timeout)
            .backpressure(config.backpressure)
            .pipeline(inner.pipeline.clone());
        if let Some(roots) = &inner.peer_tls {
            client = client.tls(roots.clone());
        }
        let dial = client.dial().await?;
        let Some(reservation) = inner.registry.reserve(dial.sid) else {
            return Err(ClientError::Io(std::io::Error::other(format!(
                "session id {} is in use on this server",
                dial.sid
            ))));
        };
        let remote = dial.remote;
        let mut setup = client.setup(
            &dial,
            config.metrics.clone(),
            Some(inner.shutdown.subscribe()),
        );
        // The server's own limits on streams apply to its peers too.
        setup.config.tx_limits = config.tx_limits.clone();
        let (session, events, driver) =
            open(dial.ws, setup).await.map_err(ClientError::Handshake)?;
        reservation.attach(session.clone());
        // Dialled, not accepted: outside the connection limits.
        Inner::spawn(inner, driver, (reservation, None), remote);
        Ok((session, events))
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
        // A finished task's memory (sized to its future) is freed only
        // once its handle is taken from the set: reaped every second.
        let mut reap = tokio::time::interval(Duration::from_secs(1));
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = reap.tick() => {
                    let mut sessions = self.inner.sessions();
                    while sessions.try_join_next().is_some() {}
                }
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
        // Upgrades in progress finish (or are refused) first; every session
        // they open is in `sessions` by then.
        self.inner.shutdown.send_replace(true);
        let mut sessions = JoinSet::new();
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
            // Peers dialled meanwhile join the set late: take it until it
            // stays empty.
            loop {
                let more = std::mem::take(&mut *self.inner.sessions());
                if more.is_empty() {
                    break;
                }
                tracing::info!(sessions = more.len(), "shutting down");
                sessions = more;
                while sessions.join_next().await.is_some() {}
            }
        })
        .await;
        if drained.is_err() {
            let mut late = std::mem::take(&mut *self.inner.sessions());
            tracing::warn!(
                left = connections.len() + sessions.len() + late.len(),
                "sessions did not close in time"
            );
            connections.shutdown().await;
            sessions.shutdown().await;
            late.shutdown().await;
        }
        Ok(())
    }
}

impl Inner {
    /// Handles one accepted TCP connection up to its open session, which
    /// then runs on a task of its own ([`Inner::spawn`]) holding the
    /// connection's place in the limits.
    ///
    /// A task allocates its future's largest state up front, and this one
    /// holds the TLS, request, WebSocket and CAMP handshake futures: they
    /// are boxed, so a connection costs only the step it is in (the task
    /// was 12.7 KiB per connection, for its whole life, before; see
    /// BENCHMARKS.md).
    async fn accept(self: &Arc<Self>, tcp: TcpStream, remote: SocketAddr) {
        let permit = match self.connections.admit(remote.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                let (tls, metrics) = (self.tls.is_some(), &self.session.metrics);
                return limits::refuse_at_accept(tcp, remote, refusal, tls, metrics).await;
            }
        };
        let timeout = self.connections.limits.request_timeout;
        let Some(tls) = &self.tls else {
            return self.upgrade(tcp, remote, permit).await;
        };
        let handshake = Box::pin(tls.acceptor().accept(tcp));
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => Box::pin(self.upgrade(stream, remote, permit)).await,
            Ok(Err(e)) => tracing::info!(%remote, "TLS handshake failed: {e}"),
            Err(_) => tracing::info!(%remote, "TLS handshake not completed in time"),
        }
    }

    // The WebSocket library's callback type fixes a large error type.
    #[allow(clippy::result_large_err)]
    async fn upgrade<S>(self: &Arc<Self>, mut stream: S, remote: SocketAddr, permit: Permit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &self.connections.limits;
        let reading = Box::pin(upgrade::read_head_max(
            &mut stream,
            limits.max_request_head_bytes,
        ));
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
        // Counted once the upgrade is accepted: a request refused anyway
        // (401, 409, 503) was not tolerated.
        for &(kind, what) in &up.tolerated {
            self.session.metrics.tolerated(kind);
            tracing::info!(%remote, sid = up.sid, kind = kind.label(),
                "tolerated, as the reference server does (strict mode refuses it): {what}");
        }
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
        let ws = match Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
            Prefixed::new(head, stream),
            callback,
            Some(ws_config()),
        ))
        .await
        {
            Ok(ws) => ws,
            Err(e) => {
                tracing::info!(%remote, "WebSocket handshake failed: {e}");
                return;
            }
        };
        let setup = Setup {
            sid: up.sid,
            role: Role::Server,
            remote: Some(remote),
            config: self.session.clone(),
            filter: self.filter.clone(),
            shutdown: self.shutdown.subscribe(),
        };
        let (session, events, driver) = match Box::pin(open(ws, setup)).await {
            Ok(opened) => opened,
            Err(info) => {
                tracing::info!(%remote, sid = up.sid, code = info.code, "handshake failed: {}", info.reason);
                return;
            }
        };
        reservation.attach(session.clone());
        let _ = self.incoming.send((session, events));
        Inner::spawn(self, driver, (reservation, Some(permit)), Some(remote));
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs an open session on its own task, tracked for shutdown. The
    /// task holds only the session's state: the upgrade that opened it has
    /// ended.
    fn spawn<S>(
        this: &Arc<Inner>,
        driver: Driver<S>,
        (reservation, permit): (Reservation, Option<Permit>),
        remote: Option<SocketAddr>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let sid = reservation.sid();
        // The driver moves into its future here, not into the task's
        // state as well.
        let run = driver.run();
        let mut sessions = this.sessions();
        // Reap sessions that ended, so the set holds only live ones.
        while sessions.try_join_next().is_some() {}
        // A peer dialled by us has no remote address here: "-".
        let remote = remote.map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::info!(%remote, sid, "session open");
        // `map`, not an `async` block: a block would keep the future it
        // awaits twice (captured and awaited), doubling the task.
        sessions.spawn(run.map(move |info| {
            tracing::info!(
                %remote,
                sid,
                code = info.code,
                by_peer = info.by_peer,
                "session closed: {}",
                info.reason
            );
            // The id and the connection's place are free again only now.
            drop((reservation, permit));
        }));
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
