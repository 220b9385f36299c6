//! `camp-bench echo`: S sessions, W messages in flight each, M messages per
//! session; a message is done when its echo arrives. Every ACK-tracked
//! frame received is ACKed, so each echo costs four WebSocket messages:
//! data out, ACK and echo in, ACK of the echo out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use bytes::{BufMut, BytesMut};
use clap::Args;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::wire::{self, Conn, TRACKED_HEADER, ty};

/// How many sessions connect at the same time; more would only overflow
/// the listener's backlog.
const CONNECT_CONCURRENCY: usize = 64;

/// Options of `echo`.
#[derive(Debug, Args)]
pub(crate) struct EchoArgs {
    /// The server's URL (`ws://127.0.0.1:PORT/`); loopback only.
    #[arg(long)]
    url: String,
    /// The bearer token.
    #[arg(long, env = "CAMP_TOKEN", hide_env_values = true)]
    token: String,
    /// Number of concurrent sessions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    sessions: u32,
    /// Messages per session.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    messages: u32,
    /// Messages in flight per session (sent, echo not yet received).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    window: u32,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    size: u32,
    /// Send UTF8DATA (lower-case letters) instead of BINARYDATA, so that
    /// plugins that only hook text messages see the load too.
    #[arg(long)]
    text: bool,
    /// The query parameter that carries the session id.
    #[arg(long, default_value = "x-camp-sid")]
    sid_param: String,
    /// Give up after this many seconds; missing echoes count as errors.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_s: u64,
    /// First session id; session i uses `sid_base + i`.
    #[arg(long, default_value_t = 1_000_000)]
    sid_base: u64,
}

/// The result line: one JSON object, printed last.
#[derive(Debug, Serialize)]
struct Report {
    /// What was measured (`echo`).
    bench: &'static str,
    /// The server's URL.
    url: String,
    /// Sessions asked for.
    sessions: u32,
    /// Messages per session asked for.
    messages: u32,
    /// Messages in flight per session.
    window: u32,
    /// Payload bytes per message.
    size: u32,
    /// `utf8` or `binary`.
    kind: &'static str,
    /// Sessions that connected and completed the handshake.
    connected: u32,
    /// Echoes received, over all sessions (`sessions * messages` when all
    /// went well).
    echoes: u64,
    /// Failures: sessions that did not connect, missing or wrong echoes,
    /// sessions that ended early.
    errors: u64,
    /// The first few failures, for a person to read.
    error_samples: Vec<String>,
    /// Whether the run hit `--timeout-s`.
    timed_out: bool,
    /// From the first send to the last echo, in seconds.
    elapsed_s: f64,
    /// Echoes per second over `elapsed_s`.
    echo_per_s: f64,
    /// Payload megabytes per second, one direction.
    mb_per_s: f64,
    /// Round-trip latency quantiles, microseconds.
    p50_us: u32,
    /// 90th percentile.
    p90_us: u32,
    /// 99th percentile.
    p99_us: u32,
    /// 99.9th percentile.
    p999_us: u32,
    /// Largest round trip.
    max_us: u32,
}

/// What one session measured.
#[derive(Debug, Default)]
struct Outcome {
    /// Round trips in microseconds, one per echo.
    latencies: Vec<u32>,
    /// When the last echo arrived.
    finished: Option<Instant>,
    /// Messages asked for but never echoed, plus wrong echoes.
    errors: u64,
    /// Why the session failed, if it did.
    error: Option<String>,
}

pub(crate) async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let addr = crate::loopback_target(&args.url).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let args = Arc::new(args);
    let (go_tx, go_rx) = watch::channel::<Option<Instant>>(None);
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(args.sessions as usize);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = Vec::with_capacity(args.sessions as usize);
    for i in 0..args.sessions {
        let args = args.clone();
        let go = go_rx.clone();
        let ready = ready_tx.clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            session(i, addr, args, permits, ready, go, deadline).await
        }));
    }
    drop(ready_tx);
    let mut connected = 0u32;
    while let Some(ok) = ready_rx.recv().await {
        connected += u32::from(ok);
    }
    eprintln!(
        "camp-bench echo: {connected}/{} sessions connected; sending {} x {} B with {} in flight each",
        args.sessions, args.messages, args.size, args.window
    );
    let start = Instant::now();
    go_tx.send_replace(Some(start));

    let mut latencies = Vec::with_capacity(args.sessions as usize * args.messages as usize);
    let mut errors = 0u64;
    let mut samples = Vec::new();
    let mut end = start;
    let mut timed_out = false;
    for task in tasks {
        let outcome = task.await?;
        latencies.extend_from_slice(&outcome.latencies);
        errors += outcome.errors;
        if let Some(e) = outcome.error {
            timed_out |= e.contains("timeout");
            if samples.len() < 5 {
                samples.push(e);
            }
        }
        if let Some(f) = outcome.finished {
            end = end.max(f);
        }
    }
    latencies.sort_unstable();
    let elapsed = end.duration_since(start).as_secs_f64();
    let echoes = latencies.len() as u64;
    let rate = |n: f64| if elapsed > 0.0 { n / elapsed } else { 0.0 };
    let report = Report {
        bench: "echo",
        url: args.url.clone(),
        sessions: args.sessions,
        messages: args.messages,
        window: args.window,
        size: args.size,
        kind: if args.text { "utf8" } else { "binary" },
        connected,
        echoes,
        errors,
        error_samples: samples,
        timed_out,
        elapsed_s: elapsed,
        echo_per_s: rate(echoes as f64),
        mb_per_s: rate(echoes as f64 * f64::from(args.size)) / 1e6,
        p50_us: crate::quantile(&latencies, 0.50),
        p90_us: crate::quantile(&latencies, 0.90),
        p99_us: crate::quantile(&latencies, 0.99),
        p999_us: crate::quantile(&latencies, 0.999),
        max_us: crate::quantile(&latencies, 1.0),
    };
    println!("{}", serde_json::to_string(&report)?);
    if report.errors > 0 {
        bail!(
            "{} errors (first: {:?})",
            report.errors,
            report.error_samples.first()
        );
    }
    Ok(())
}

/// One session: connect, wait for the start, run the window, close.
async fn session(
    index: u32,
    addr: SocketAddr,
    args: Arc<EchoArgs>,
    permits: Arc<Semaphore>,
    ready: mpsc::Sender<bool>,
    mut go: watch::Receiver<Option<Instant>>,
    deadline: Instant,
) -> Outcome {
    let expected = u64::from(args.messages);
    let sid = args.sid_base.wrapping_add(u64::from(index));
    let opened = {
        let _permit = permits.acquire().await;
        tokio::time::timeout_at(
            deadline,
            Conn::open(&args.url, addr, &args.token, sid, &args.sid_param),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timeout while connecting")))
    };
    let _ = ready.send(opened.is_ok()).await;
    drop(ready);
    let mut conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            return Outcome {
                errors: expected,
                error: Some(format!("session {sid}: {e:#}")),
                ..Outcome::default()
            };
        }
    };
    if go.wait_for(Option::is_some).await.is_err() {
        return Outcome {
            errors: expected,
            error: Some("benchmark aborted".into()),
            ..Outcome::default()
        };
    }
    let mut outcome = Outcome {
        latencies: Vec::with_capacity(args.messages as usize),
        ..Outcome::default()
    };
    let result = tokio::time::timeout_at(deadline, drive(&mut conn, &args, &mut outcome)).await;
    let done = outcome.latencies.len() as u64;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => outcome.error = Some(format!("session {sid}: {e:#}")),
        Err(_) => outcome.error = Some(format!("session {sid}: timeout after {done} echoes")),
    }
    outcome.errors += expected.saturating_sub(done);
    conn.close(Duration::from_secs(1)).await;
    outcome
}

/// Keeps `window` messages in flight until `messages` echoes came back.
async fn drive(conn: &mut Conn, args: &EchoArgs, outcome: &mut Outcome) -> anyhow::Result<()> {
    let total = args.messages as usize;
    let size = args.size as usize;
    // The data frame, built once; each send patches in its ack id.
    let mut template = BytesMut::with_capacity(TRACKED_HEADER + size);
    template.put_u64(conn.sid);
    if args.text {
        template.put_u8(ty::UTF8);
        template.put_u32(0);
        template.extend((0..size).map(|i| b'a' + (i % 26) as u8));
    } else {
        template.put_u8(ty::BINARY);
        template.put_u32(0);
        template.extend((0..size).map(|i| (i % 251) as u8));
    }
    let data = |ack: u32| {
        let mut frame = template.clone();
        frame[9..13].copy_from_slice(&ack.to_be_bytes());
        frame.freeze()
    };
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(args.window as usize);
    let mut sent = 0usize;
    while sent < total && in_flight.len() < args.window as usize {
        let ack = conn.take_ack();
        conn.ws.feed(Ws::Binary(data(ack))).await?;
        in_flight.push_back(Instant::now());
        sent += 1;
    }
    conn.ws.flush().await?;
    while outcome.latencies.len() < total {
        let first = conn.recv().await?;
        let mut next = Some(first);
        // Handle everything already received, then flush once.
        while let Some(frame) = next {
            match wire::header(&frame) {
                Some((ty::BINARY | ty::UTF8, Some(ack))) => {
                    conn.ws
                        .feed(Ws::Binary(wire::ack_frame(conn.sid, ack)))
                        .await?;
                    let Some(sent_at) = in_flight.pop_front() else {
                        bail!("an echo arrived that was not asked for");
                    };
                    let rtt = sent_at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    outcome.latencies.push(rtt);
                    if frame.len() != TRACKED_HEADER + size
                        || frame[TRACKED_HEADER..] != template[TRACKED_HEADER..]
                    {
                        outcome.errors += 1;
                    }
                    if sent < total {
                        let ack = conn.take_ack();
                        conn.ws.feed(Ws::Binary(data(ack))).await?;
                        in_flight.push_back(Instant::now());
                        sent += 1;
                    }
                }
                Some((ty::ACK, None)) => {}
                Some((ty::PING_PONG, None)) => {
                    if &frame[9..] == b"ping" {
                        conn.ws
                            .feed(Ws::Binary(wire::ping_pong(conn.sid, b"pong")))
                            .await?;
                    }
                }
                Some((ty::ERROR, Some(ack))) => {
                    conn.ws
                        .feed(Ws::Binary(wire::ack_frame(conn.sid, ack)))
                        .await?;
                    bail!(
                        "server sent ERROR: {}",
                        String::from_utf8_lossy(&frame[TRACKED_HEADER..])
                    );
                }
                Some((ty::BYE, Some(ack))) => {
                    conn.ws
                        .feed(Ws::Binary(wire::ack_frame(conn.sid, ack)))
                        .await?;
                    conn.ws.flush().await?;
                    bail!(
                        "server said BYE: {}",
                        String::from_utf8_lossy(&frame[TRACKED_HEADER..])
                    );
                }
                Some((other, _)) => bail!("unexpected frame type {other:#04x}"),
                None => bail!("malformed frame from the server"),
            }
            next = match conn.ws.next().now_or_never() {
                Some(Some(Ok(Ws::Binary(b)))) => Some(b),
                Some(Some(Ok(Ws::Close(_)))) | Some(None) => {
                    bail!("server closed the connection")
                }
                Some(Some(Err(e))) => bail!("connection failed: {e}"),
                Some(Some(Ok(_))) | None => None,
            };
        }
        conn.ws.flush().await?;
    }
    outcome.finished = Some(Instant::now());
    Ok(())
}
