//! `camp-bench baseline`: the bare stack. A tokio-tungstenite server that
//! does per message only what any CAMP echo must do on the wire: for each
//! data frame it sends an ACK and the echo (with its own ack id), it
//! ignores the client's ACKs, answers `ping` with `pong`, and performs the
//! ENDPOINT_INFO handshake so `camp-bench echo` drives it exactly like a
//! CAMP server. No session task, no queue, no pipeline, no ack tracking:
//! what it reaches is the limit of tokio + tungstenite on this machine.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::Args;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::wire::{self, TRACKED_HEADER, ty};

/// Options of `baseline`.
#[derive(Debug, Args)]
pub(crate) struct BaselineArgs {
    /// Loopback address and port to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8090")]
    bind: SocketAddr,
    /// tungstenite's read buffer per connection, in bytes (its default is
    /// 128 KiB; set it to what the CAMP server uses to compare like with
    /// like).
    #[arg(long, default_value_t = 128 * 1024)]
    read_buffer: usize,
    /// Stop after this many seconds (the server is bounded in time).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_s: u64,
}

pub(crate) async fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let bind = crate::loopback_bind(args.bind)?;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let local = listener.local_addr()?;
    println!("camp-bench baseline listening on ws://{local}/");
    let config = WebSocketConfig::default().read_buffer_size(args.read_buffer.max(256));
    let serve = async {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection(tcp, config).await {
                            eprintln!("baseline: connection ended: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    eprintln!("baseline: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    tokio::select! {
        () = serve => {}
        _ = tokio::signal::ctrl_c() => eprintln!("baseline: interrupted"),
        () = tokio::time::sleep(Duration::from_secs(args.max_s)) => eprintln!("baseline: --max-s reached"),
    }
    Ok(())
}

/// The session id from the query (`x-camp-sid`, any case); 0 if absent,
/// in which case the first frame's sid is used.
fn query_sid(request: &Request) -> Option<u64> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.eq_ignore_ascii_case("x-camp-sid")
            .then(|| value.parse().ok())?
    })
}

/// Serves one connection until it closes.
async fn connection(tcp: TcpStream, config: WebSocketConfig) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut sid = None;
    // The callback's error type is tungstenite's, large by its design.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        sid = query_sid(request);
        let offers_camp = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == "camp");
        if offers_camp {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("camp"));
        }
        Ok(response)
    };
    let mut ws =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await?;
    let mut sid = sid.unwrap_or(0);
    let mut next_ack: u32 = 0;
    ws.send(Ws::Binary(wire::endpoint_info(sid, next_ack, 1)))
        .await?;
    next_ack += 1;
    while let Some(msg) = ws.next().await {
        let mut next = Some(msg?);
        // Answer everything already received, then flush once.
        while let Some(msg) = next {
            match msg {
                Ws::Binary(frame) => {
                    if sid == 0 && frame.len() >= 8 {
                        sid = u64::from_be_bytes(frame[..8].try_into()?);
                    }
                    let Some((kind, ack)) = wire::header(&frame) else {
                        close_violation(&mut ws, "malformed frame").await?;
                        return Ok(());
                    };
                    if let Some(ack) = ack {
                        ws.feed(Ws::Binary(wire::ack_frame(sid, ack))).await?;
                    }
                    match kind {
                        ty::UTF8 | ty::BINARY => {
                            ws.feed(Ws::Binary(echo(&frame, next_ack))).await?;
                            next_ack = next_ack.wrapping_add(1);
                        }
                        ty::PING_PONG if frame.get(9..) == Some(b"ping") => {
                            ws.feed(Ws::Binary(wire::ping_pong(sid, b"pong"))).await?;
                        }
                        ty::BYE => {
                            ws.send(Ws::Close(Some(CloseFrame {
                                code: CloseCode::from(4000),
                                reason: "bye".into(),
                            })))
                            .await?;
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                Ws::Close(_) => return Ok(()),
                Ws::Text(_) => {
                    close_violation(&mut ws, "text messages are not CAMP").await?;
                    return Ok(());
                }
                Ws::Ping(_) | Ws::Pong(_) | Ws::Frame(_) => {}
            }
            next = match ws.next().now_or_never() {
                Some(Some(msg)) => Some(msg?),
                Some(None) => None,
                None => None,
            };
        }
        ws.flush().await?;
    }
    Ok(())
}

/// The echo of a data frame: the same bytes with our own ack id.
fn echo(frame: &Bytes, ack: u32) -> Bytes {
    let mut out = BytesMut::from(&frame[..]);
    out[9..TRACKED_HEADER].copy_from_slice(&ack.to_be_bytes());
    out.freeze()
}

/// Closes with 4001 after a protocol violation.
async fn close_violation(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    reason: &str,
) -> anyhow::Result<()> {
    ws.send(Ws::Close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: reason.to_string().into(),
    })))
    .await?;
    Ok(())
}
