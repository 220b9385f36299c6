//! A lean CAMP client connection for load generation: the WebSocket plus
//! the handshake and the few frames the load needs, written straight to the
//! socket without the library's session task, so the generator spends as
//! little of the machine's two cores as possible on itself.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use camp_server::client::UpgradeTarget;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// CAMP type bytes used here (see `CAMP-PROTOCOL.md`).
pub(crate) mod ty {
    /// ENDPOINT_INFO.
    pub const ENDPOINT_INFO: u8 = 0xff;
    /// BYE.
    pub const BYE: u8 = 0xfe;
    /// ACK.
    pub const ACK: u8 = 0xfd;
    /// ERROR.
    pub const ERROR: u8 = 0xfc;
    /// PING_PONG.
    pub const PING_PONG: u8 = 0xfb;
    /// UTF8DATA.
    pub const UTF8: u8 = 0xfa;
    /// BINARYDATA.
    pub const BINARY: u8 = 0xf9;
}

/// Length of `sid u64 | type u8 | ack u32`, the header of every ACK-tracked
/// base frame.
pub(crate) const TRACKED_HEADER: usize = 13;

/// The generator's WebSocket read buffer. tungstenite zero-fills the free
/// part of its read buffer before every socket read, so its 128 KiB
/// default costs a 128 KiB memset per read: CPU the generator would take
/// from the server it measures on a two-core machine. 16 KiB still reads
/// several 4 KiB echoes at once.
const READ_BUFFER: usize = 16 * 1024;

/// How long connecting and the CAMP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An ACK frame for `ack` on session `sid`.
pub(crate) fn ack_frame(sid: u64, ack: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(TRACKED_HEADER);
    b.put_u64(sid);
    b.put_u8(ty::ACK);
    b.put_u32(ack);
    b.freeze()
}

/// A PING_PONG frame with `payload` (`ping` or `pong`).
pub(crate) fn ping_pong(sid: u64, payload: &[u8; 4]) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    b.put_u64(sid);
    b.put_u8(ty::PING_PONG);
    b.put_slice(payload);
    b.freeze()
}

/// An ENDPOINT_INFO frame (version 1) with `ack` and `features`.
pub(crate) fn endpoint_info(sid: u64, ack: u32, features: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(25);
    b.put_u64(sid);
    b.put_u8(ty::ENDPOINT_INFO);
    b.put_u32(ack);
    b.put_u32(1);
    b.put_u64(features);
    b.freeze()
}

/// A BYE frame with `ack` and `reason`.
pub(crate) fn bye(sid: u64, ack: u32, reason: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(TRACKED_HEADER + reason.len());
    b.put_u64(sid);
    b.put_u8(ty::BYE);
    b.put_u32(ack);
    b.put_slice(reason.as_bytes());
    b.freeze()
}

/// The type byte and, for ACK-tracked frames, the ack id of a frame.
pub(crate) fn header(frame: &[u8]) -> Option<(u8, Option<u32>)> {
    let ty = *frame.get(8)?;
    let tracked = matches!(
        ty,
        ty::ENDPOINT_INFO | ty::BYE | ty::ERROR | ty::UTF8 | ty::BINARY
    );
    if !tracked {
        return Some((ty, None));
    }
    let ack = frame.get(9..13)?;
    Some((ty, Some(u32::from_be_bytes(ack.try_into().ok()?))))
}

/// An open CAMP session over a plain WebSocket, after the handshake.
pub(crate) struct Conn {
    /// The WebSocket.
    pub ws: WebSocketStream<TcpStream>,
    /// The session id every outgoing frame carries.
    pub sid: u64,
    /// The next ack id for an ACK-tracked frame we send.
    pub next_ack: u32,
}

impl Conn {
    /// Connects to `addr` with the path and query of `url`, upgrades with
    /// the bearer `token` and the session id in query parameter
    /// `sid_param`, and runs the CAMP handshake.
    pub(crate) async fn open(
        url: &str,
        addr: SocketAddr,
        token: &str,
        sid: u64,
        sid_param: &str,
    ) -> anyhow::Result<Conn> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Conn::open_inner(url, addr, token, sid, sid_param),
        )
        .await
        .with_context(|| format!("session {sid}: no handshake within {CONNECT_TIMEOUT:?}"))?
    }

    async fn open_inner(
        url: &str,
        addr: SocketAddr,
        token: &str,
        sid: u64,
        sid_param: &str,
    ) -> anyhow::Result<Conn> {
        let target = UpgradeTarget::parse(url, token, &[sid_param.to_string()], sid)?;
        let mut request = target.url.into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("camp"));
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => anyhow::anyhow!(
                    "server refused the upgrade with HTTP {}: {}",
                    r.status().as_u16(),
                    String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).trim()
                ),
                other => anyhow::anyhow!("WebSocket handshake failed: {other}"),
            })?;
        let mut conn = Conn {
            ws,
            sid,
            next_ack: 0,
        };
        conn.handshake().await?;
        Ok(conn)
    }

    /// Waits for the server's ENDPOINT_INFO, ACKs it, announces ourselves
    /// and waits for the ACK of our announcement.
    async fn handshake(&mut self) -> anyhow::Result<()> {
        let mut announced: Option<u32> = None;
        loop {
            let frame = self.recv().await?;
            match header(&frame) {
                Some((ty::ENDPOINT_INFO, Some(ack))) if announced.is_none() => {
                    self.ws.feed(Ws::Binary(ack_frame(self.sid, ack))).await?;
                    let ours = self.take_ack();
                    self.ws
                        .send(Ws::Binary(endpoint_info(self.sid, ours, 0)))
                        .await?;
                    announced = Some(ours);
                }
                Some((ty::ACK, None)) => {
                    let acked = u32::from_be_bytes(frame[9..13].try_into()?);
                    if announced == Some(acked) {
                        return Ok(());
                    }
                }
                Some((ty::PING_PONG, None)) if &frame[9..] == b"ping" => {
                    self.ws
                        .send(Ws::Binary(ping_pong(self.sid, b"pong")))
                        .await?;
                }
                Some((ty, _)) => bail!("unexpected frame type {ty:#04x} during the handshake"),
                None => bail!("malformed frame during the handshake"),
            }
        }
    }

    /// A fresh ack id.
    pub(crate) fn take_ack(&mut self) -> u32 {
        let id = self.next_ack;
        self.next_ack = self.next_ack.wrapping_add(1);
        id
    }

    /// The next binary message; WebSocket control messages are skipped.
    pub(crate) async fn recv(&mut self) -> anyhow::Result<Bytes> {
        loop {
            match self.ws.next().await {
                Some(Ok(Ws::Binary(b))) => return Ok(b),
                Some(Ok(Ws::Close(frame))) => bail!(
                    "server closed the session: {}",
                    frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default()
                ),
                Some(Ok(Ws::Text(_))) => bail!("server sent a text WebSocket message"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("connection failed: {e}"),
                None => bail!("connection closed"),
            }
        }
    }

    /// Says BYE and closes the WebSocket, waiting at most `linger` for the
    /// server's close.
    pub(crate) async fn close(mut self, linger: Duration) {
        let ack = self.take_ack();
        let _ = self
            .ws
            .send(Ws::Binary(bye(self.sid, ack, "benchmark done")))
            .await;
        let _ = tokio::time::timeout(linger, async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if let Ws::Close(_) = msg {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use camp_server::protocol::{Body, Frame, PingPong};

    #[test]
    fn frames_match_the_codec() {
        assert_eq!(
            Frame::decode(ack_frame(7, 9)).unwrap(),
            Frame::new(7, Body::Ack { acked: 9 })
        );
        assert_eq!(
            Frame::decode(ping_pong(7, b"pong")).unwrap(),
            Frame::new(7, Body::Ping(PingPong::Pong))
        );
        assert_eq!(
            Frame::decode(endpoint_info(7, 3, 1)).unwrap(),
            Frame::new(
                7,
                Body::EndpointInfo {
                    ack: 3,
                    version: 1,
                    features: 1
                }
            )
        );
        assert_eq!(
            Frame::decode(bye(7, 4, "done")).unwrap(),
            Frame::new(
                7,
                Body::Bye {
                    ack: 4,
                    reason: "done".into()
                }
            )
        );
        let utf8 = Frame::new(
            1,
            Body::Utf8 {
                ack: 0x0102_0304,
                text: "x".into(),
            },
        )
        .encode();
        assert_eq!(header(&utf8), Some((ty::UTF8, Some(0x0102_0304))));
        assert_eq!(header(&ack_frame(1, 5)), Some((ty::ACK, None)));
        assert_eq!(header(&[0; 8]), None);
        assert_eq!(header(&[0, 0, 0, 0, 0, 0, 0, 0, ty::BINARY, 1]), None);
    }
}
