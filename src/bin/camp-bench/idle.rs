//! `camp-bench idle`: opens N sessions that only answer heartbeats, and
//! reads the server's resident set size (VmRSS) before and after, so the
//! memory cost of an idle session can be stated.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use camp_server::client::Client;
use camp_server::session::{Session, SessionEvents};
use clap::Args;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How many sessions connect at the same time.
const CONNECT_CONCURRENCY: usize = 128;

/// Options of `idle`.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    /// The server's URL (`ws://127.0.0.1:PORT/`); loopback only.
    #[arg(long)]
    url: String,
    /// The bearer token.
    #[arg(long, env = "CAMP_TOKEN", hide_env_values = true)]
    token: String,
    /// Number of idle sessions (each needs a file descriptor here and one
    /// in the server: raise `ulimit -n` for large counts).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    sessions: u32,
    /// The server's process id, to read its VmRSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait after the last session opened before reading the
    /// memory, so the server settles.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    settle_s: u64,
    /// The query parameter that carries the session id.
    #[arg(long, default_value = "x-camp-sid")]
    sid_param: String,
    /// First session id; session i uses `sid_base + i`.
    #[arg(long, default_value_t = 2_000_000)]
    sid_base: u64,
    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_s: u64,
}

/// The result line, printed last.
#[derive(Debug, Serialize)]
struct Report {
    /// What was measured (`idle`).
    bench: &'static str,
    /// Sessions asked for.
    sessions: u32,
    /// Sessions open when the memory was read.
    connected: u32,
    /// Sessions that failed to open.
    errors: u32,
    /// The first few failures.
    error_samples: Vec<String>,
    /// Seconds to open them all.
    connect_s: f64,
    /// Server VmRSS before the first session, bytes.
    rss_before: Option<u64>,
    /// Server VmRSS with all sessions open, bytes.
    rss_after: Option<u64>,
    /// (after - before) / connected, bytes.
    rss_per_session: Option<u64>,
    /// The same in KiB.
    kib_per_session: Option<f64>,
}

pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<()> {
    crate::loopback_target(&args.url).await?;
    let rss_before = args.server_pid.map(crate::rss_bytes).transpose()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout_s);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = Vec::with_capacity(args.sessions as usize);
    for i in 0..args.sessions {
        let client = Client::new(args.url.clone(), args.token.clone())
            .sid(args.sid_base.wrapping_add(u64::from(i)))
            .sid_params([args.sid_param.clone()]);
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await;
            tokio::time::timeout_at(deadline, client.connect())
                .await
                .map_err(|_| "timeout while connecting".to_string())?
                .map_err(|e| e.to_string())
        }));
    }
    let mut open: Vec<(Session, SessionEvents)> = Vec::with_capacity(tasks.len());
    let mut errors = 0u32;
    let mut samples = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await? {
            Ok(pair) => open.push(pair),
            Err(e) => {
                errors += 1;
                if samples.len() < 5 {
                    samples.push(format!("session {i}: {e}"));
                }
            }
        }
        if (i + 1) % 1000 == 0 {
            eprintln!("camp-bench idle: {} sessions opened", open.len());
        }
    }
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let still_open = open.iter().filter(|(s, _)| !s.is_closed()).count() as u32;
    let rss_after = args.server_pid.map(crate::rss_bytes).transpose()?;
    let per_session = match (rss_before, rss_after) {
        (Some(b), Some(a)) if still_open > 0 => Some(a.saturating_sub(b) / u64::from(still_open)),
        _ => None,
    };
    let report = Report {
        bench: "idle",
        sessions: args.sessions,
        connected: still_open,
        errors: errors + (open.len() as u32 - still_open),
        error_samples: samples,
        connect_s,
        rss_before,
        rss_after,
        rss_per_session: per_session,
        kib_per_session: per_session.map(|b| b as f64 / 1024.0),
    };
    for (session, _) in &open {
        session.close("benchmark done");
    }
    // Let the BYEs go out before the process exits.
    let closing = async {
        for (_, events) in &mut open {
            events.closed().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
    println!("{}", serde_json::to_string(&report)?);
    if report.errors > 0 {
        bail!(
            "{} sessions failed (first: {:?})",
            report.errors,
            report.error_samples.first()
        );
    }
    Ok(())
}
