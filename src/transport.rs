//! What a CAMP connection runs on, for both ends: the WebSocket settings,
//! the subprotocol token, and the byte stream a client dials (plain TCP or
//! TLS).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
/// precise ERROR.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(2 * protocol::MAX_FRAME))
        .max_frame_size(Some(2 * protocol::MAX_FRAME))
}

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
