//! Sends a file to a CAMP server as a PULL stream (the server fetches the
//! ranges it wants; the file is read by range, never loaded whole) and
//! reads the echo back, comparing it byte for byte.
//!
//! ```text
//! cargo run -- --token secret &
//! cargo run --example file_transfer -- ws://127.0.0.1:8080/ secret some-file
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use camp_server::client::Client;
use camp_server::session::StreamOptions;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token), Some(path)) = (args.next(), args.next(), args.next()) else {
        bail!("usage: file_transfer <ws[s]://host:port/> <token> <file>");
    };
    let (session, _events) = Client::new(url, token).connect().await?;
    let name = std::path::Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());

    // The echo server streams it back under the same name.
    let back = session.wait_for_stream(name.clone(), Duration::from_secs(30));
    let file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("cannot open {path}"))?;
    let started = Instant::now();
    let transfer = session.stream_seekable(file, StreamOptions::pull(name));
    let mut stream = back.await?;
    let mut original = tokio::fs::File::open(&path).await?;
    let (mut a, mut b) = (vec![0; 1 << 20], vec![0; 1 << 20]);
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut a).await?;
        if n == 0 {
            break;
        }
        original.read_exact(&mut b[..n]).await?;
        if a[..n] != b[..n] {
            bail!(
                "the echo differs within bytes {total}..{}",
                total + n as u64
            );
        }
        total += n as u64;
    }
    let sent = transfer.await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{sent} bytes sent, {total} identical bytes back in {secs:.2} s ({:.0} MB/s each way)",
        total as f64 / secs / 1e6
    );
    session.close("done");
    Ok(())
}
