//! The HTTP side of accepting a session: reading the upgrade request,
//! authentication, the session id and the subprotocol, and refusals.
//!
//! The token validator is async, but the WebSocket library's request
//! callback is not; so the request head is read and judged here first, and
//! handed to the WebSocket handshake afterwards through [`Prefixed`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

pub use crate::transport::SUBPROTOCOL;

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
            409 => "Conflict",
            413 => "Payload Too Large",
            426 => "Upgrade Required",
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

/// Reads the request head (through the blank line). Returns the bytes read,
/// which may include the start of the WebSocket stream after the head.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Bytes, Refusal> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf.freeze());
        }
        if buf.len() >= MAX_HEAD {
            return Err(Refusal::new(
                413,
                "head_too_large",
                "request head too large",
            ));
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|_| Refusal::new(400, "io", "connection failed while reading the request"))?;
        if n == 0 {
            return Err(Refusal::new(400, "incomplete", "incomplete request"));
        }
    }
}

/// Judges the request head: method, upgrade headers, subprotocol,
/// authorization and session id, in that order (authentication before the
/// session id so that an unauthenticated client learns nothing about sids).
///
/// Decisions: a missing and a malformed `x-camp-sid` are both 400 (the
/// reference answers 401 for a missing one; it is not an authentication
/// problem). Query parameter names are matched case-insensitively.
pub(crate) fn check(head: &[u8], strict: bool) -> Result<Upgrade, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
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
            if self.prefix.is_empty() {
                // Let go of the request's buffer: this stream lives as
                // long as the session.
                self.prefix = Bytes::new();
            }
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
        let up = check(&head(path, ""), false).unwrap();
        assert_eq!((up.sid, up.legacy_sid), (9, true));
        assert_eq!(check(&head(path, ""), true).unwrap_err().status, 400);
        // Both given: x-camp-sid wins and nothing was tolerated.
        let up = check(
            &head("/?authorization=Bearer%20a&x-cryo-sid=9&x-camp-sid=3", ""),
            false,
        )
        .unwrap();
        assert_eq!((up.sid, up.legacy_sid), (3, false));
    }

    #[test]
    fn refusals_have_the_documented_statuses() {
        let status = |path: &str, extra: &str| check(&head(path, extra), true).unwrap_err().status;
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
        assert_eq!(check(plain, true).unwrap_err().status, 426);
        assert_eq!(
            check(b"POST / HTTP/1.1\r\n\r\n", true).unwrap_err().status,
            400
        );
        assert_eq!(
            check(b"\x00\x01garbage\r\n\r\n", true).unwrap_err().status,
            400
        );
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
