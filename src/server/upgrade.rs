//! The HTTP side of accepting a session: reading the upgrade request,
//! authentication, the session id and the subprotocol, and refusals.
//!
//! The token validator is async, but the WebSocket library's request
//! callback is not; so the request head is read and judged here first, and
//! handed to the WebSocket handshake afterwards through [`Prefixed`].
//!
//! The client side of the upgrade is here too ([`client_upgrade`]): the
//! WebSocket library's own client handshake traces the whole request
//! (`log` at TRACE), whose query carries the bearer token, so an
//! application embedding the library with TRACE logging on would log
//! tokens. Ours writes the request itself and logs nothing of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest request head the admin listener reads.
const MAX_HEAD: usize = 16 * 1024;

/// Most request headers parsed (more: 431). A fixed bound of the parser,
/// whose header table lives on the stack.
pub const MAX_HEADERS: usize = 64;

/// Longest a refused connection is drained for.
pub(crate) const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Most bytes a refused connection is drained of.
pub(crate) const DRAIN_BYTES: u64 = 16 * 1024 * 1024;

/// The subprotocol token of CAMP.
pub const SUBPROTOCOL: &str = "camp";

/// Why an upgrade request is refused: an HTTP status and a short text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// Short machine-friendly label (used in logs and metrics).
    pub reason: &'static str,
    /// Human-readable body.
    pub body: String,
}

impl Refusal {
    pub(crate) fn new(status: u16, reason: &'static str, body: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            body: body.into(),
        }
    }

    /// The HTTP response for this refusal.
    pub(crate) fn response(&self) -> String {
        let phrase = match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            408 => "Request Timeout",
            409 => "Conflict",
            413 => "Payload Too Large",
            414 => "URI Too Long",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let body = format!("{}\n", self.body);
        let mut extra = String::new();
        if self.status == 401 {
            extra.push_str("WWW-Authenticate: Bearer\r\n");
        }
        if self.status == 426 {
            extra.push_str("Upgrade: websocket\r\n");
        }
        format!(
            "HTTP/1.1 {} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
    }

    /// Writes the response and closes the write side.
    pub(crate) async fn send<S: AsyncWrite + Unpin>(&self, stream: &mut S) -> io::Result<()> {
        stream.write_all(self.response().as_bytes()).await?;
        stream.shutdown().await
    }

    /// Writes the response, closes the write side, then reads and discards
    /// what the client still sends (the rest of a huge request) for at most
    /// [`DRAIN_TIME`] and [`DRAIN_BYTES`], into no buffer: closing a socket
    /// with unread input resets it, and the client would lose the response.
    pub(crate) async fn send_and_drain<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
    ) -> io::Result<()> {
        self.send(stream).await?;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut (&mut *stream).take(DRAIN_BYTES), &mut sink).await;
        })
        .await;
        Ok(())
    }
}

/// What an acceptable upgrade request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upgrade {
    /// The session id from `x-camp-sid`.
    pub sid: u64,
    /// Whether the sid came as `x-cryo-sid` (tolerated, not strict).
    pub legacy_sid: bool,
    /// The bearer token (without `Bearer `), for the validator.
    pub token: String,
    /// Whether the client offered the `camp` subprotocol (echoed back).
    pub camp_subprotocol: bool,
}

/// Reads the request head (through the blank line), at most 16 KiB (the
/// admin listener's requests).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Bytes, Refusal> {
    read_head_max(stream, MAX_HEAD).await
}

/// Reads the request head (through the blank line), at most `max` bytes
/// (`limits.max_request_head_bytes`): beyond, 414 if the request line
/// alone is longer (a huge query, a 1 MB token), 431 otherwise (huge
/// headers). Returns the bytes read, which may include the start of the
/// WebSocket stream after the head. Memory: at most about twice `max`.
pub(crate) async fn read_head_max<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Bytes, Refusal> {
    let mut buf = BytesMut::with_capacity(1024.min(max));
    // Where the search for the blank line resumes (no rescans).
    let mut searched = 0;
    loop {
        if let Some(at) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            if searched + at + 4 > max {
                return Err(head_too_large(&buf, max));
            }
            return Ok(buf.freeze());
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() >= max {
            return Err(head_too_large(&buf, max));
        }
        // Never read past the limit (plus what one read brings).
        buf.reserve((max - buf.len()).min(8 * 1024));
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|_| Refusal::new(400, "io", "connection failed while reading the request"))?;
        if n == 0 {
            return Err(Refusal::new(400, "incomplete", "incomplete request"));
        }
    }
}

/// The refusal of a request head over `max` bytes.
fn head_too_large(buf: &[u8], max: usize) -> Refusal {
    let line_done = buf[..buf.len().min(max)].windows(2).any(|w| w == b"\r\n");
    if line_done {
        Refusal::new(
            431,
            "head_too_large",
            format!("request headers larger than {max} bytes (limits.max_request_head_bytes)"),
        )
    } else {
        Refusal::new(
            414,
            "uri_too_long",
            format!("request line longer than {max} bytes (limits.max_request_head_bytes)"),
        )
    }
}

/// Judges the request head: method, upgrade headers, subprotocol,
/// authorization and session id, in that order (authentication before the
/// session id so that an unauthenticated client learns nothing about sids).
///
/// Decisions: a missing and a malformed `x-camp-sid` are both 400 (the
/// reference answers 401 for a missing one; it is not an authentication
/// problem). Query parameter names are matched case-insensitively.
pub(crate) fn check(head: &[u8], strict: bool, max_params: usize) -> Result<Upgrade, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                "too_many_headers",
                format!("more than {MAX_HEADERS} request headers"),
            ));
        }
        _ => return Err(Refusal::new(400, "bad_request", "malformed HTTP request")),
    }
    if req.method != Some("GET") {
        return Err(Refusal::new(
            400,
            "bad_request",
            "the upgrade request must be a GET",
        ));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
    };
    let is_websocket = header("upgrade")
        .iter()
        .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return Err(Refusal::new(
            426,
            "not_websocket",
            "this endpoint only speaks CAMP over WebSocket",
        ));
    }
    let offered: Vec<String> = header("sec-websocket-protocol")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let camp_subprotocol = offered.iter().any(|p| p == SUBPROTOCOL);
    if !offered.is_empty() && !camp_subprotocol {
        return Err(Refusal::new(
            400,
            "subprotocol",
            format!("unsupported subprotocol; offer \"{SUBPROTOCOL}\""),
        ));
    }
    let path = req.path.unwrap_or("/");
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let params = query.split('&').filter(|kv| !kv.is_empty()).count();
    if params > max_params {
        return Err(Refusal::new(
            414,
            "too_many_params",
            format!(
                "{params} query parameters; at most {max_params} are read (limits.max_query_params)"
            ),
        ));
    }
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| percent_decode(k).eq_ignore_ascii_case(name))
            .map(|(_, v)| percent_decode(v))
    };
    let authorization = param("authorization")
        .ok_or_else(|| Refusal::new(401, "no_token", "missing authorization query parameter"))?;
    let token = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::new(401, "bad_token", "authorization must be \"Bearer <token>\""))?
        .to_string();
    // `x-cryo-sid` is the parameter's former name, which the stock Node
    // client still sends; accepted unless strict.
    let (sid, legacy_sid) = match param("x-camp-sid") {
        Some(sid) => (sid, false),
        None => match param("x-cryo-sid").filter(|_| !strict) {
            Some(sid) => (sid, true),
            None => {
                return Err(Refusal::new(
                    400,
                    "no_sid",
                    "missing x-camp-sid query parameter",
                ));
            }
        },
    };
    let sid = sid.parse::<u64>().map_err(|_| {
        Refusal::new(
            400,
            "bad_sid",
            "x-camp-sid must be a decimal unsigned 64-bit integer",
        )
    })?;
    Ok(Upgrade {
        sid,
        token,
        camp_subprotocol,
        legacy_sid,
    })
}

/// Decodes `%XX` escapes and `+` (as a space) of a query component. Invalid
/// escapes are kept as they are; invalid UTF-8 is replaced.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
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
) -> Result<tokio_tungstenite::WebSocketStream<Prefixed<S>>, crate::client::ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use crate::client::ClientError;
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

/// A stream that first yields bytes already read from it (the request
/// head), then reads from the stream itself.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn accepts_a_good_request_with_any_case_sid() {
        let up = check(
            &head("/?authorization=Bearer%20abc&x-CAMP-sid=42", ""),
            true,
            64,
        )
        .unwrap();
        assert_eq!(
            up,
            Upgrade {
                sid: 42,
                token: "abc".into(),
                camp_subprotocol: false,
                legacy_sid: false,
            }
        );
        let up = check(
            &head(
                "/camp?x-camp-sid=18446744073709551615&authorization=Bearer+t%2B1",
                "Sec-WebSocket-Protocol: chat, camp\r\n",
            ),
            true,
            64,
        )
        .unwrap();
        assert_eq!(
            (up.sid, up.token.as_str(), up.camp_subprotocol),
            (u64::MAX, "t+1", true)
        );
    }

    #[test]
    fn the_former_sid_parameter_is_accepted_unless_strict() {
        let path = "/?authorization=Bearer%20a&x-cryo-sid=9";
        let up = check(&head(path, ""), false, 64).unwrap();
        assert_eq!((up.sid, up.legacy_sid), (9, true));
        assert_eq!(check(&head(path, ""), true, 64).unwrap_err().status, 400);
        // Both given: x-camp-sid wins and nothing was tolerated.
        let up = check(
            &head("/?authorization=Bearer%20a&x-cryo-sid=9&x-camp-sid=3", ""),
            false,
            64,
        )
        .unwrap();
        assert_eq!((up.sid, up.legacy_sid), (3, false));
    }

    #[test]
    fn refusals_have_the_documented_statuses() {
        let status =
            |path: &str, extra: &str| check(&head(path, extra), true, 64).unwrap_err().status;
        assert_eq!(status("/?x-camp-sid=1", ""), 401);
        assert_eq!(status("/?authorization=Basic%20x&x-camp-sid=1", ""), 401);
        assert_eq!(status("/?authorization=Bearer%20&x-camp-sid=1", ""), 401);
        assert_eq!(status("/?authorization=Bearer%20a", ""), 400);
        assert_eq!(status("/?authorization=Bearer%20a&x-camp-sid=abc", ""), 400);
        assert_eq!(status("/?authorization=Bearer%20a&x-camp-sid=-1", ""), 400);
        assert_eq!(
            status(
                "/?authorization=Bearer%20a&x-camp-sid=18446744073709551616",
                ""
            ),
            400
        );
        assert_eq!(
            status(
                "/?authorization=Bearer%20a&x-camp-sid=1",
                "Sec-WebSocket-Protocol: chat\r\n"
            ),
            400
        );
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(check(plain, true, 64).unwrap_err().status, 426);
        assert_eq!(
            check(b"POST / HTTP/1.1\r\n\r\n", true, 64)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check(b"\x00\x01garbage\r\n\r\n", true, 64)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn heads_and_queries_are_bounded() {
        let many = (0..65)
            .map(|i| format!("p{i}=1"))
            .collect::<Vec<_>>()
            .join("&");
        let r = check(&head(&format!("/?{many}"), ""), true, 64).unwrap_err();
        assert_eq!((r.status, r.reason), (414, "too_many_params"));
        assert!(r.body.contains("limits.max_query_params"), "{}", r.body);
        let headers: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
        let r = check(
            &head("/?authorization=Bearer%20a&x-camp-sid=1", &headers),
            true,
            64,
        )
        .unwrap_err();
        assert_eq!((r.status, r.reason), (431, "too_many_headers"));

        let read = |bytes: Vec<u8>, max: usize| {
            let mut reader = &bytes[..];
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(read_head_max(&mut reader, max))
        };
        let long_line = format!("GET /?t={} HTTP/1.1\r\n\r\n", "a".repeat(5000)).into_bytes();
        let r = read(long_line.clone(), 4096).unwrap_err();
        assert_eq!((r.status, r.reason), (414, "uri_too_long"));
        assert!(
            r.body.contains("limits.max_request_head_bytes"),
            "{}",
            r.body
        );
        assert!(read(long_line, 8192).is_ok());
        let big_headers = head("/", &format!("X-Big: {}\r\n", "b".repeat(5000)));
        let r = read(big_headers.clone(), 4096).unwrap_err();
        assert_eq!((r.status, r.reason), (431, "head_too_large"));
        // Exactly at the limit is accepted; one byte more is not.
        let n = big_headers.len();
        assert!(read(big_headers.clone(), n).is_ok());
        assert_eq!(read(big_headers, n - 1).unwrap_err().status, 431);
    }

    #[test]
    fn percent_decoding_handles_edge_cases() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn refusal_response_is_valid_http() {
        let r = Refusal::new(409, "duplicate_sid", "session 7 is already connected").response();
        assert!(r.starts_with("HTTP/1.1 409 Conflict\r\n"));
        assert!(r.contains("Content-Length: 31\r\n"));
        assert!(r.ends_with("\r\n\r\nsession 7 is already connected\n"));
    }
}
