//! What a CAMP connection runs on, for both ends: the WebSocket settings,
//! the subprotocol token, the byte stream a client dials (plain TCP or
//! TLS), and the HTTP/1.1 head reader and refusal the server, the client
//! and the admin listener share.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::protocol;

/// The subprotocol token of CAMP (`Sec-WebSocket-Protocol: camp`).
pub const SUBPROTOCOL: &str = "camp";

/// The WebSocket read buffer: 8 KiB instead of tungstenite's 128 KiB
/// default. Tungstenite allocates it per connection up front and
/// zero-fills its free part before every socket read, so the default made
/// every idle session cost ~128 KiB of resident memory and every read a
/// 128 KiB memset. Measured with `camp-bench` (see BENCHMARKS.md): idle
/// memory drops from ~139 KiB to ~30 KiB per session; large frames still
/// arrive whole (the buffer grows to the frame's length and reads in
/// 8 KiB steps).
pub(crate) const READ_BUFFER: usize = 8 * 1024;

/// WebSocket settings of both ends: messages a little larger than the
/// largest CAMP frame still reach the codec, so an oversized frame gets a
/// precise ERROR. The write buffer is capped too (tungstenite's default is
/// unbounded): tungstenite answers every WebSocket ping with a pong it
/// writes into that buffer, outside our queue, so a peer that sent pings
/// and never read grew the server by ~235 MB a second (the attacker trial
/// of issue 14). At the cap, tungstenite keeps only the latest pong; our
/// own frames wait for the socket (`Driver::poll_write`).
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(2 * protocol::MAX_FRAME))
        .max_frame_size(Some(2 * protocol::MAX_FRAME))
        .max_write_buffer_size(MAX_WRITE_BUFFER)
}

/// The WebSocket write buffer's cap: two of the largest frames, so that
/// one always fits an emptied buffer.
pub(crate) const MAX_WRITE_BUFFER: usize = 2 * protocol::MAX_FRAME;

/// A dialled connection: plain TCP (`ws://`) or TLS (`wss://`).
#[derive(Debug)]
pub(crate) enum Dialled {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Dialled {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialled::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Dialled::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Dialled {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Dialled::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Dialled::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialled::Plain(s) => Pin::new(s).poll_flush(cx),
            Dialled::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialled::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Dialled::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Largest request head the admin listener reads.
const MAX_HEAD: usize = 16 * 1024;

/// Longest a refused connection is drained for.
pub(crate) const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Most bytes a refused connection is drained of.
pub(crate) const DRAIN_BYTES: u64 = 16 * 1024 * 1024;

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
