//! `camp-bench`: a load generator for CAMP servers and the bare-stack
//! baseline it is measured against.
//!
//! - `echo` drives S sessions with W messages in flight each and prints
//!   throughput and round-trip latency as one JSON line (the last line on
//!   stdout);
//! - `baseline` is a bare tokio-tungstenite server that answers the same load
//!   with the same WebSocket messages per echo as a CAMP server (data in;
//!   ACK and echo out; ACK of the echo in), so the two can be compared in
//!   the same run;
//! - `idle` opens N idle sessions and reports the server's resident memory
//!   per session;
//! - `transfer` measures stream throughput (MB/s) for PUSH and PULL;
//! - `flood` is a peer that sends and never reads, and reports the server's
//!   memory before and after.
//!
//! Every subcommand talks to loopback addresses only and is bounded in
//! count and time.

mod baseline;
mod echo;
mod flood;
mod idle;
mod transfer;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "camp-bench",
    version,
    about = "Load generator for CAMP servers (loopback only)"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// What to measure or serve.
#[derive(Debug, Subcommand)]
enum Command {
    /// Echo throughput and round-trip latency against a CAMP server or the
    /// baseline.
    Echo(echo::EchoArgs),
    /// A bare tokio-tungstenite echo server speaking just enough CAMP to be
    /// driven by `echo` (the limit of the stack).
    Baseline(baseline::BaselineArgs),
    /// Idle sessions and the server's resident memory per session.
    Idle(idle::IdleArgs),
    /// Stream throughput (MB/s) for PUSH and PULL against a server that
    /// streams every stream back (the `camp-server` binary).
    Transfer(transfer::TransferArgs),
    /// A peer that sends PINGs or data and never reads; the server's
    /// memory before and after.
    Flood(flood::FloodArgs),
}

/// Exit status 0 when the run completed without errors, 1 otherwise (the
/// JSON line is printed either way when a run took place), 2 for usage
/// errors (clap).
fn main() -> ExitCode {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| {
            runtime.block_on(async move {
                match args.command {
                    Command::Echo(a) => echo::run(a).await,
                    Command::Baseline(a) => baseline::run(a).await,
                    Command::Idle(a) => idle::run(a).await,
                    Command::Transfer(a) => transfer::run(a).await,
                    Command::Flood(a) => flood::run(a).await,
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camp-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The socket address of a `ws://` URL, refused unless it is a loopback
/// address: load from this tool must never leave the machine.
pub(crate) async fn loopback_target(url: &str) -> anyhow::Result<SocketAddr> {
    // The library's one URL parser (scheme, host, port).
    let target = camp_server::client::UpgradeTarget::parse(url, "", &[], 0)?;
    if target.secure {
        bail!("{url}: only ws:// URLs are supported");
    }
    let (host, port) = (target.host, target.port);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    match addrs.iter().find(|a| a.ip().is_loopback()) {
        Some(addr) if addrs.iter().all(|a| a.ip().is_loopback()) => Ok(*addr),
        _ => bail!("{url}: camp-bench only targets loopback addresses (127.0.0.0/8, ::1)"),
    }
}

/// Refuses a bind address that is not loopback.
pub(crate) fn loopback_bind(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let ip: IpAddr = addr.ip();
    if !ip.is_loopback() {
        bail!("{addr}: camp-bench only listens on loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok(addr)
}

/// The value at quantile `q` (0..=1) of sorted samples; 0 when empty.
pub(crate) fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Reads `VmRSS` of a process from `/proc/PID/status`, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("no VmRSS in {path}"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("unreadable VmRSS line {line:?}"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[tokio::test]
    async fn only_loopback_targets() {
        assert!(loopback_target("ws://127.0.0.1:9/").await.is_ok());
        assert!(loopback_target("ws://[::1]:9/").await.is_ok());
        assert!(loopback_target("ws://10.0.0.1:9/").await.is_err());
        assert!(loopback_target("http://127.0.0.1:9/").await.is_err());
        assert!(loopback_bind("0.0.0.0:1".parse().unwrap()).is_err());
        assert!(loopback_bind("127.0.0.1:0".parse().unwrap()).is_ok());
    }

    #[test]
    fn rss_of_this_process() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
