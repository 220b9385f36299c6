//! `camp-bench transfer`: stream throughput. A file of `--size-mb` MB goes
//! to the server as a PUSH or PULL stream; the `camp-server` binary
//! streams every stream back under the same name and behaviour, and the
//! generator reads the echo to the end, checking every byte. The figure is
//! the file size over the time from TX_START to the last echoed byte.
//!
//! PUSH: the upload and the echo run at the same time (the server sends
//! back what it reads). PULL: the server fetches the whole stream and
//! spools it to a temporary file before announcing its echo (a PULL needs
//! its size up front), then the generator fetches the echo: the two legs
//! run one after the other, so PULL reports about half the PUSH figure
//! for the same link speed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use camp_server::client::Client;
use camp_server::session::{Session, StreamOptions};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Options of `transfer`.
#[derive(Debug, Args)]
pub(crate) struct TransferArgs {
    /// The server's URL (`ws://127.0.0.1:PORT/`); loopback only. The server
    /// must stream every stream back (the `camp-server` binary does).
    #[arg(long)]
    url: String,
    /// The bearer token.
    #[arg(long, env = "CAMP_TOKEN", hide_env_values = true)]
    token: String,
    /// Size of the stream in MB (10^6 bytes).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    size_mb: u64,
    /// Which behaviour to measure.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Give up on a transfer after this many seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_s: u64,
}

/// PUSH, PULL or both, one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The sender sends the stream front to back.
    Push,
    /// The receiver fetches ranges.
    Pull,
    /// PUSH, then PULL.
    Both,
}

/// One behaviour's result.
#[derive(Debug, Serialize)]
struct Leg {
    /// `push` or `pull`.
    behaviour: &'static str,
    /// Seconds from TX_START until the last echoed byte was read.
    echo_s: f64,
    /// Stream size over `echo_s`, MB/s (10^6 bytes).
    mb_per_s: f64,
    /// Seconds until the server acknowledged our TX_FINISH.
    upload_s: f64,
}

/// The result line, printed last.
#[derive(Debug, Serialize)]
struct Report {
    /// What was measured (`transfer`).
    bench: &'static str,
    /// The server's URL.
    url: String,
    /// Stream size in bytes.
    size: u64,
    /// One entry per behaviour measured.
    legs: Vec<Leg>,
    /// PUSH MB/s, when measured.
    push_mb_per_s: Option<f64>,
    /// PULL MB/s, when measured.
    pull_mb_per_s: Option<f64>,
}

/// Byte `i` of the stream repeats every `PERIOD` bytes, a prime, so that
/// no chunk, fetch or buffer size lines up with it and a misplaced chunk is
/// caught.
const PERIOD: usize = 1_048_573;

/// Longest slice [`pattern`] gives.
const MAX_SLICE: usize = 1 << 20;

/// The stream's bytes from `offset` on, `n` ≤ [`MAX_SLICE`] of them: a
/// slice of a table built once, so that neither writing the source nor
/// checking the echo costs the client a computation per byte (it did:
/// generating the pattern byte by byte took the client more CPU than the
/// server spent on the whole transfer, and the client set the pace).
fn pattern(offset: u64, n: usize) -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..PERIOD + MAX_SLICE)
            .map(|i| {
                let i = i % PERIOD;
                ((i % 251) as u8) ^ ((i >> 16) as u8)
            })
            .collect()
    });
    let start = (offset % PERIOD as u64) as usize;
    &table[start..start + n]
}

/// A temporary source file, removed on drop.
struct Source(PathBuf);

impl Drop for Source {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn write_source(size: u64) -> anyhow::Result<Source> {
    let path = std::env::temp_dir().join(format!("camp-bench-{}.bin", std::process::id()));
    let source = Source(path.clone());
    let mut file = tokio::fs::File::create(&path)
        .await
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(MAX_SLICE as u64) as usize;
        file.write_all(pattern(offset, n)).await?;
        offset += n as u64;
    }
    file.flush().await?;
    Ok(source)
}

pub(crate) async fn run(args: TransferArgs) -> anyhow::Result<()> {
    crate::loopback_target(&args.url).await?;
    let size = args.size_mb * 1_000_000;
    let source = write_source(size).await?;
    let (session, _events) = Client::new(args.url.clone(), args.token.clone())
        .connect()
        .await
        .with_context(|| format!("cannot open a session on {}", args.url))?;
    let timeout = Duration::from_secs(args.timeout_s);
    let mut legs = Vec::new();
    if args.mode != Mode::Pull {
        legs.push(leg(&session, &source, size, false, timeout).await?);
    }
    if args.mode != Mode::Push {
        legs.push(leg(&session, &source, size, true, timeout).await?);
    }
    session.close("benchmark done");
    let pick = |b: &str| legs.iter().find(|l| l.behaviour == b).map(|l| l.mb_per_s);
    let report = Report {
        bench: "transfer",
        url: args.url.clone(),
        size,
        push_mb_per_s: pick("push"),
        pull_mb_per_s: pick("pull"),
        legs,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Sends the source once with `pull` behaviour and reads its echo back.
async fn leg(
    session: &Session,
    source: &Source,
    size: u64,
    pull: bool,
    timeout: Duration,
) -> anyhow::Result<Leg> {
    let behaviour = if pull { "pull" } else { "push" };
    let name = format!("camp-bench-{behaviour}");
    let back = session.wait_for_stream(name.clone(), timeout);
    let file = tokio::fs::File::open(&source.0).await?;
    let options = if pull {
        StreamOptions::pull(name.clone())
    } else {
        StreamOptions::push(name.clone()).size(size)
    };
    let start = Instant::now();
    let transfer = session.stream_seekable(file, options);
    let upload = tokio::spawn(async move {
        let result = transfer.await;
        (result, Instant::now())
    });
    let work = async {
        let mut stream = back
            .await
            .with_context(|| format!("the {behaviour} echo was not announced"))?;
        let mut got = vec![0u8; MAX_SLICE];
        let mut offset = 0u64;
        loop {
            let n = stream.read(&mut got).await?;
            if n == 0 {
                break;
            }
            if got[..n] != *pattern(offset, n) {
                bail!(
                    "the {behaviour} echo differs within bytes {offset}..{}",
                    offset + n as u64
                );
            }
            offset += n as u64;
        }
        if offset != size {
            bail!("the {behaviour} echo has {offset} bytes, expected {size}");
        }
        Ok(Instant::now())
    };
    let echoed = tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("{behaviour}: not done within {timeout:?}"))??;
    let (sent, uploaded) = tokio::time::timeout(timeout, upload)
        .await
        .with_context(|| format!("{behaviour}: upload not acknowledged within {timeout:?}"))??;
    let sent = sent.with_context(|| format!("{behaviour} upload failed"))?;
    if sent != size {
        bail!("{behaviour}: sent {sent} bytes, expected {size}");
    }
    let echo_s = echoed.duration_since(start).as_secs_f64();
    eprintln!("camp-bench transfer: {behaviour} {size} bytes echoed in {echo_s:.3} s");
    Ok(Leg {
        behaviour,
        echo_s,
        mb_per_s: size as f64 / echo_s / 1e6,
        upload_s: uploaded.duration_since(start).as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_depends_on_the_position() {
        assert_eq!(pattern(0, 300)[1..], pattern(1, 299)[..]);
        assert_ne!(pattern(0, 300), pattern(1, 300));
        assert_ne!(pattern(5, 1), pattern(5 + 65_536, 1));
        // Periodic, and continuous across the period.
        assert_eq!(pattern(7, 10), pattern(7 + PERIOD as u64, 10));
        assert_eq!(pattern(PERIOD as u64 - 3, 6)[3..], pattern(0, 3)[..]);
        assert_ne!(pattern(0, 4096), pattern(1 << 20, 4096));
    }
}
