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

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::extension::Pipeline;
use crate::metrics::Metrics;
use crate::protocol;
use crate::session::{
    Backpressure, CloseInfo, Role, Session, SessionConfig, SessionEvents, Setup, open,
};
pub use crate::tls::{ClientTls, TlsError};
use crate::transport::{Dialled, Prefixed, SUBPROTOCOL, read_head, ws_config};

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
        let dial = self.dial().await?;
        let setup = self.setup(&dial, Arc::default(), None);
        let (session, events, driver) =
            open(dial.ws, setup).await.map_err(ClientError::Handshake)?;
        tokio::spawn(driver.run());
        Ok((session, events))
    }

    /// What a session dialled by this client runs with: its settings, the
    /// `metrics` it counts into and the `shutdown` signal it closes on
    /// (a server's, for its peers; none for a plain client).
    pub(crate) fn setup(
        &self,
        dialled: &Dial,
        metrics: Arc<Metrics>,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> Setup {
        Setup {
            sid: dialled.sid,
            role: Role::Client,
            remote: dialled.remote,
            config: SessionConfig {
                keep_alive: self.keep_alive,
                handshake_timeout: self.handshake_timeout,
                backpressure: self.backpressure,
                features: protocol::FEATURES,
                metrics,
                // What the reference server sends (e.g. its off-by-one PUSH
                // offsets) is accepted and counted, as a server accepts it
                // from the reference clients.
                strict: false,
                tx_limits: Default::default(),
            },
            filter: Arc::new(self.pipeline.clone()),
            // Without a server's shutdown signal, one that never fires (its
            // sender is dropped at once).
            shutdown: shutdown.unwrap_or_else(|| watch::channel(false).1),
        }
    }

    /// Connects (TCP, then TLS for `wss://`) and upgrades to a WebSocket;
    /// the CAMP session is not started yet.
    pub(crate) async fn dial(&self) -> Result<Dial, ClientError> {
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
        let stream = if secure {
            let roots = match &self.tls {
                Some(roots) => roots.clone(),
                None => ClientTls::system()?,
            };
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| ClientError::InvalidUrl(format!("{}: {e}", self.url)))?;
            Dialled::Tls(Box::new(roots.connector().connect(name, tcp).await?))
        } else {
            Dialled::Plain(tcp)
        };
        // Not tungstenite's client handshake: it traces the request, whose
        // query carries the token.
        let ws = client_upgrade(stream, &request, ws_config()).await?;
        Ok(Dial { ws, sid, remote })
    }
}

/// An upgraded connection on which a client session is about to start.
pub(crate) struct Dial {
    /// The WebSocket.
    pub(crate) ws: WebSocketStream<Prefixed<Dialled>>,
    /// The session id asked for.
    pub(crate) sid: u64,
    /// The server's address.
    pub(crate) remote: Option<SocketAddr>,
}

/// Largest refusal body a client keeps (the rest is not read).
const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// The client side of the WebSocket upgrade: writes `request` (built by
/// `IntoClientRequest`, so its key and headers are tungstenite's), reads
/// and checks the response, and returns the WebSocket. A response other
/// than 101 is [`ClientError::Refused`] with its body (at most 64 KiB).
/// Nothing of the request is logged: its query carries the token.
pub(crate) async fn client_upgrade<S>(
    mut stream: S,
    request: &tokio_tungstenite::tungstenite::handshake::client::Request,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
) -> Result<WebSocketStream<Prefixed<S>>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::error::{
        Error as WsError, ProtocolError, SubProtocolError,
    };
    let protocol = |e: ProtocolError| ClientError::WebSocket(Box::new(WsError::Protocol(e)));
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        let value = value
            .to_str()
            .map_err(|_| protocol(ProtocolError::InvalidHeader(Box::new(name.clone()))))?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // A server refusing a huge request may answer and close before it was
    // all written: its answer is still read.
    let written = match stream.write_all(head.as_bytes()).await {
        Ok(()) => stream.flush().await,
        Err(e) => Err(e),
    };
    drop(head);
    let key = request
        .headers()
        .get("Sec-WebSocket-Key")
        .ok_or_else(|| protocol(ProtocolError::MissingSecWebSocketKey))?
        .as_bytes()
        .to_vec();
    let offered = request.headers().contains_key("Sec-WebSocket-Protocol");

    let response = match (read_head(&mut stream).await, written) {
        (Ok(response), _) => response,
        (Err(_), Err(e)) => return Err(ClientError::Io(e)),
        (Err(r), Ok(())) if r.status == 414 || r.status == 431 => {
            return Err(protocol(ProtocolError::HttparseError(
                httparse::Error::TooManyHeaders,
            )));
        }
        (Err(r), Ok(())) => {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                r.body,
            )));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(&response) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(protocol(ProtocolError::HandshakeIncomplete)),
        Err(e) => return Err(protocol(ProtocolError::HttparseError(e))),
    };
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let status = parsed.code.unwrap_or(0);
    if status != 101 {
        let length = header("content-length")
            .and_then(|l| l.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_REFUSAL_BODY);
        let mut body = response[head_len..].to_vec();
        body.truncate(length);
        while body.len() < length {
            let mut more = vec![0; length - body.len()];
            match stream.read(&mut more).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&more[..n]),
            }
        }
        return Err(ClientError::Refused {
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    let has = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has("upgrade", "websocket") {
        return Err(protocol(ProtocolError::MissingUpgradeWebSocketHeader));
    }
    if !has("connection", "upgrade") {
        return Err(protocol(ProtocolError::MissingConnectionUpgradeHeader));
    }
    let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    if header("sec-websocket-accept").as_deref().map(str::trim) != Some(expected.as_str()) {
        return Err(protocol(ProtocolError::SecWebSocketAcceptKeyMismatch));
    }
    match header("sec-websocket-protocol") {
        Some(p) if !offered => {
            let _ = p;
            return Err(protocol(ProtocolError::SecWebSocketSubProtocolError(
                SubProtocolError::ServerSentSubProtocolNoneRequested,
            )));
        }
        Some(p) if p.trim() != SUBPROTOCOL => {
            return Err(protocol(ProtocolError::SecWebSocketSubProtocolError(
                SubProtocolError::InvalidSubProtocol,
            )));
        }
        _ => {}
    }
    let rest = response.slice(head_len..);
    Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(
        Prefixed::new(rest, stream),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        Some(config),
    )
    .await)
}

/// A random session id from the standard library's randomly seeded hasher.
fn random_sid() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
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
    /// sid parameter name, form-encoded (`url` crate).
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
        let mut parsed =
            url::Url::parse(url).map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
        let secure = match parsed.scheme() {
            "ws" => false,
            "wss" => true,
            _ => {
                return Err(ClientError::InvalidUrl(format!(
                    "{url}: only ws:// and wss:// are supported"
                )));
            }
        };
        let host = match parsed.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(ClientError::InvalidUrl(format!("{url}: no host"))),
        };
        // ws and wss are special schemes to the URL standard: 80 and 443.
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no port")))?;
        parsed
            .query_pairs_mut()
            .append_pair("authorization", &format!("Bearer {token}"))
            .extend_pairs(sid_params.iter().map(|name| (name, sid.to_string())));
        Ok(UpgradeTarget {
            secure,
            host,
            port,
            url: parsed.into(),
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
        let query = "authorization=Bearer+a+b&x-camp-sid=7";
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
