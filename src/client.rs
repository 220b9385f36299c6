//! A CAMP client: dials a server, runs the handshake, and returns the same
//! [`Session`] handle and [`SessionEvents`] stream the server side uses.
//!
//! ```no_run
//! # async fn demo() -> Result<(), camp_server::client::ClientError> {
//! use camp_server::client::Client;
//!
//! let (session, mut events) = Client::new("ws://127.0.0.1:8080/", "secret").connect().await?;
//! session.send_utf8("hello").acked().await.expect("acknowledged");
//! let reply = events.next_message().await;
//! session.close("done");
//! # Ok(()) }
//! ```

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};

use crate::extension::Pipeline;
use crate::protocol;
use crate::server::SUBPROTOCOL;
pub use crate::server::tls::{ClientTls, TlsError};
use crate::session::{
    Backpressure, CloseInfo, Driver, Role, Session, SessionConfig, SessionEvents, event_channel,
};

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The TCP connection or the TLS handshake failed.
    #[error("cannot connect: {0}")]
    Io(#[from] std::io::Error),
    /// No TLS roots could be loaded for a `wss://` URL.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] TlsError),
    /// The server refused the upgrade with this HTTP status.
    #[error("server refused the upgrade with HTTP {status}: {body}")]
    Refused {
        /// The HTTP status (401 bad token, 409 sid in use, 400 bad request).
        status: u16,
        /// The response body.
        body: String,
    },
    /// The WebSocket handshake or connection failed.
    #[error("WebSocket error: {0}")]
    WebSocket(Box<WsError>),
    /// The CAMP handshake failed; the session was closed.
    #[error("CAMP handshake failed ({}): {}", .0.code, .0.reason)]
    Handshake(CloseInfo),
}

/// Configures and opens a client session.
#[must_use]
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    token: String,
    sid: Option<u64>,
    subprotocol: bool,
    sid_params: Vec<String>,
    keep_alive: Duration,
    handshake_timeout: Duration,
    backpressure: Backpressure,
    pipeline: Pipeline,
    /// Roots trusted for `wss://` (default: the system bundle).
    tls: Option<ClientTls>,
}

impl Client {
    /// A client for `url` (`ws://host:port/path`) with bearer `token`.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Client {
        Client {
            url: url.into(),
            token: token.into(),
            sid: None,
            subprotocol: true,
            sid_params: vec!["x-camp-sid".into()],
            keep_alive: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            backpressure: Backpressure::default(),
            pipeline: Pipeline::new(),
            tls: None,
        }
    }

    /// The certificate authorities trusted for `wss://` URLs (default: the
    /// system bundle, see [`ClientTls::system`]).
    pub fn tls(mut self, roots: ClientTls) -> Client {
        self.tls = Some(roots);
        self
    }

    /// Liveness window: the session reports statistics this often.
    pub fn keep_alive(mut self, interval: Duration) -> Client {
        self.keep_alive = interval;
        self
    }

    /// The session id to ask for (default: random).
    pub fn sid(mut self, sid: u64) -> Client {
        self.sid = Some(sid);
        self
    }

    /// Whether to offer the `camp` subprotocol (default true; the
    /// reference's own client offers none).
    pub fn subprotocol(mut self, offer: bool) -> Client {
        self.subprotocol = offer;
        self
    }

    /// The query parameter names that carry the session id (default
    /// `x-camp-sid`); peers send `x-CAMP-sid` too for the reference server.
    pub fn sid_params<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Client {
        self.sid_params = names.into_iter().map(Into::into).collect();
        self
    }

    /// Outgoing queue limits.
    pub fn backpressure(mut self, backpressure: Backpressure) -> Client {
        self.backpressure = backpressure;
        self
    }

    /// Extensions applied to this session's messages.
    pub fn pipeline(mut self, pipeline: Pipeline) -> Client {
        self.pipeline = pipeline;
        self
    }

    /// How long the server has to complete the CAMP handshake.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Client {
        self.handshake_timeout = timeout;
        self
    }

    /// Connects, upgrades and runs the CAMP handshake.
    pub async fn connect(self) -> Result<(Session, SessionEvents), ClientError> {
        self.connect_until(None).await
    }

    /// Like [`Client::connect`]; the session closes gracefully when
    /// `shutdown` turns true (a server's peers use the server's signal).
    pub(crate) async fn connect_until(
        self,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<(Session, SessionEvents), ClientError> {
        let sid = self.sid.unwrap_or_else(random_sid);
        let target = UpgradeTarget::parse(&self.url, &self.token, &self.sid_params, sid)?;
        let (secure, host, port, full) = (target.secure, target.host, target.port, target.url);
        let mut request = full
            .into_client_request()
            .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
        if self.subprotocol {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        let remote = tcp.peer_addr().ok();
        if !secure {
            return self.establish(tcp, request, sid, remote, shutdown).await;
        }
        let roots = match &self.tls {
            Some(roots) => roots.clone(),
            None => ClientTls::system()?,
        };
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| ClientError::InvalidUrl(format!("{}: {e}", self.url)))?;
        let stream = roots.connector().connect(name, tcp).await?;
        self.establish(stream, request, sid, remote, shutdown).await
    }

    /// Upgrades `stream` to a WebSocket, runs the CAMP handshake and starts
    /// the session's task.
    async fn establish<S>(
        self,
        stream: S,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
        sid: u64,
        remote: Option<std::net::SocketAddr>,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<(Session, SessionEvents), ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Not tungstenite's client handshake: it traces the request, token
        // included.
        let ws =
            crate::server::client_upgrade(stream, &request, crate::server::ws_config()).await?;
        let config = SessionConfig {
            keep_alive: self.keep_alive,
            handshake_timeout: self.handshake_timeout,
            backpressure: self.backpressure,
            features: protocol::FEATURES,
            metrics: Default::default(),
            // What the reference server sends (e.g. its off-by-one PUSH
            // offsets) is accepted and counted, as a server accepts it
            // from the reference clients.
            strict: false,
            tx_limits: Default::default(),
        };
        let mut driver = Driver::new(ws, sid, Role::Client, config, self.pipeline);
        // Without a server's shutdown signal, one that never fires (its
        // sender is dropped at once).
        let shutdown = shutdown.unwrap_or_else(|| watch::channel(false).1);
        let features = driver
            .handshake(shutdown.clone())
            .await
            .map_err(ClientError::Handshake)?;
        let (session, commands) = Session::new(sid, remote, features);
        let (events_tx, events) = event_channel();
        tokio::spawn(driver.run(session.clone(), commands, events_tx, shutdown));
        Ok((session, events))
    }
}

/// A random session id from the standard library's randomly seeded hasher.
fn random_sid() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Percent-encodes a query component (RFC 3986 unreserved characters
/// stay), e.g. a token for the `authorization` query parameter.
///
/// ```
/// assert_eq!(camp_server::client::percent_encode("Bearer a+b"), "Bearer%20a%2Bb");
/// ```
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where and how to upgrade: the one place every client in the repository
/// (`Client`, `Server::connect_peer`, the `camp` CLI, `camp-bench`) turns a
/// CAMP URL into the upgrade request's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeTarget {
    /// `wss://`.
    pub secure: bool,
    /// The host (IPv6 without brackets).
    pub host: String,
    /// The port (80 or 443 by default).
    pub port: u16,
    /// The URL to request: the given path (`/` when there is none) and
    /// query, plus `authorization=Bearer <token>` and `NAME=<sid>` for each
    /// sid parameter name, percent-encoded.
    pub url: String,
}

impl UpgradeTarget {
    /// Parses a `ws://` or `wss://` URL, with or without a path, a trailing
    /// slash or a query of its own.
    pub fn parse(
        url: &str,
        token: &str,
        sid_params: &[String],
        sid: u64,
    ) -> Result<UpgradeTarget, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(ClientError::InvalidUrl(format!(
                    "{url}: only ws:// and wss:// are supported"
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no host")))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let mut query = uri.query().map(|q| format!("{q}&")).unwrap_or_default();
        query.push_str(&format!("authorization=Bearer%20{}", percent_encode(token)));
        for name in sid_params {
            query.push_str(&format!("&{}={sid}", percent_encode(name)));
        }
        let path = match uri.path() {
            "" => "/",
            path => path,
        };
        let scheme = if secure { "wss" } else { "ws" };
        Ok(UpgradeTarget {
            secure,
            host,
            port,
            url: format!("{scheme}://{authority}{path}?{query}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(given: &str) -> String {
        UpgradeTarget::parse(given, "a b", &["x-camp-sid".into()], 7)
            .unwrap()
            .url
    }

    #[test]
    fn every_form_of_url_gives_one_upgrade_url() {
        let query = "authorization=Bearer%20a%20b&x-camp-sid=7";
        assert_eq!(
            url("ws://127.0.0.1:9"),
            format!("ws://127.0.0.1:9/?{query}")
        );
        assert_eq!(
            url("ws://127.0.0.1:9/"),
            format!("ws://127.0.0.1:9/?{query}")
        );
        assert_eq!(url("ws://h:9/camp"), format!("ws://h:9/camp?{query}"));
        assert_eq!(
            url("ws://h:9/camp/?x=1"),
            format!("ws://h:9/camp/?x=1&{query}")
        );
        assert_eq!(url("ws://h:9?x=1"), format!("ws://h:9/?x=1&{query}"));
        let t = UpgradeTarget::parse("wss://[::1]", "t", &[], 1).unwrap();
        assert_eq!((t.secure, t.host.as_str(), t.port), (true, "::1", 443));
        assert!(UpgradeTarget::parse("http://h/", "t", &[], 1).is_err());
    }
}
