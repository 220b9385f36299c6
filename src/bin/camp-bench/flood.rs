//! `camp-bench flood`: a peer that never reads. It sends N PINGs (each
//! answered with a PONG) or N small UTF-8 messages (each answered with an
//! ACK and an echo) as fast as the server takes them and never reads a
//! byte, then reports how many frames went out before the server stopped
//! reading and the server's resident memory (VmRSS) before and after: the
//! cost of a client that does not read.

use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use clap::{Args, ValueEnum};
use futures_util::SinkExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::wire::{Conn, ping_pong};

/// What the peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FloodKind {
    /// CAMP PINGs.
    Ping,
    /// 32-byte UTF8DATA messages.
    Data,
}

/// Options of `flood`.
#[derive(Debug, Args)]
pub(crate) struct FloodArgs {
    /// The server's URL (`ws://127.0.0.1:PORT/`); loopback only.
    #[arg(long)]
    url: String,
    /// The bearer token.
    #[arg(long, env = "CAMP_TOKEN", hide_env_values = true)]
    token: String,
    /// What to send.
    #[arg(long, value_enum, default_value_t = FloodKind::Ping)]
    kind: FloodKind,
    /// How many frames to send at most.
    #[arg(long, default_value_t = 3_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    frames: u64,
    /// Stop once a send has been blocked this long (the server stopped
    /// reading).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    blocked_s: u64,
    /// The server's process id, to read its VmRSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The session id.
    #[arg(long, default_value_t = 3_000_000)]
    sid: u64,
}

/// The result line, printed last.
#[derive(Debug, Serialize)]
struct Report {
    /// What was measured (`flood`).
    bench: &'static str,
    /// `ping` or `data`.
    kind: &'static str,
    /// Frames sent before the server stopped reading (or all of them).
    sent: u64,
    /// Whether the server stopped reading before all frames went out.
    blocked: bool,
    /// Server VmRSS before the flood, bytes.
    rss_before: Option<u64>,
    /// Server VmRSS after it, bytes.
    rss_after: Option<u64>,
    /// Seconds the flood took.
    elapsed_s: f64,
}

/// Runs `flood`.
pub(crate) async fn run(args: FloodArgs) -> anyhow::Result<()> {
    let addr = crate::loopback_target(&args.url).await?;
    let rss = |pid: Option<u32>| pid.map(crate::rss_bytes).transpose();
    let mut conn = Conn::open(&args.url, addr, &args.token, args.sid, "x-camp-sid")
        .await
        .context("cannot open the session")?;
    let rss_before = rss(args.server_pid)?;
    let started = Instant::now();
    let blocked_after = Duration::from_secs(args.blocked_s);
    let mut sent = 0;
    let mut blocked = false;
    while sent < args.frames {
        let frame = match args.kind {
            FloodKind::Ping => ping_pong(conn.sid, b"ping"),
            FloodKind::Data => {
                let ack = conn.take_ack();
                let mut b = BytesMut::with_capacity(13 + 32);
                b.put_u64(conn.sid);
                b.put_u8(crate::wire::ty::UTF8);
                b.put_u32(ack);
                b.put_slice(&[b'x'; 32]);
                b.freeze()
            }
        };
        match tokio::time::timeout(blocked_after, conn.ws.send(Ws::Binary(frame))).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => return Err(e).context("the server closed the connection"),
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let report = Report {
        bench: "flood",
        kind: match args.kind {
            FloodKind::Ping => "ping",
            FloodKind::Data => "data",
        },
        sent,
        blocked,
        rss_before,
        rss_after: rss(args.server_pid)?,
        elapsed_s,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
