//! The `camp-server` binary: a CAMP server whose application echoes every
//! message back to its session, with extensions loaded from a folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use camp_server::extension::Message;
use camp_server::server::Server;
use camp_server::server::tls::TlsConfig;
use camp_server::session::{Session, SessionEvent, SessionEvents};
use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "camp-server",
    version,
    about = "A CAMP v1 server with WebAssembly extensions"
)]
struct Args {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// A bearer token clients may use (repeatable; also CAMP_TOKENS,
    /// comma-separated).
    #[arg(
        long = "token",
        env = "CAMP_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// A file with one accepted token per line (blank lines and lines
    /// starting with # are ignored).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    keep_alive_ms: u64,
    /// PEM certificate chain: serve TLS (wss://) with it (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log filter (RUST_LOG syntax); RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let mut tokens: Vec<String> = args.tokens.iter().map(|t| t.trim().to_string()).collect();
    if let Some(file) = &args.token_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read token file {}", file.display()))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    tokens.retain(|t| !t.is_empty());
    if tokens.is_empty() {
        bail!("no token configured: pass --token, CAMP_TOKENS or --token-file");
    }
    if args.keep_alive_ms == 0 {
        bail!("--keep-alive-ms must be positive");
    }

    let mut builder = Server::builder()
        .tokens(tokens)
        .keep_alive(Duration::from_millis(args.keep_alive_ms));
    let scheme = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            builder = builder.tls(TlsConfig::from_pem_files(cert, key)?);
            "wss"
        }
        _ => "ws",
    };
    let (server, mut incoming) = builder.build();
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let local = listener.local_addr()?;
    tracing::info!("listening on {scheme}://{local}/");
    println!("camp-server listening on {scheme}://{local}/");

    tokio::spawn(async move {
        while let Some((session, events)) = incoming.next().await {
            tokio::spawn(echo(session, events));
        }
    });
    server.serve(listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The built-in application: every message that reaches it goes back to
/// its session, and every stream is streamed back with the same name and
/// behaviour (PUSH stays PUSH, PULL stays PULL).
async fn echo(session: Session, mut events: SessionEvents) {
    while let Some(event) = events.next().await {
        match event {
            SessionEvent::Message(Message::Utf8(text)) => drop(session.send_utf8(text)),
            SessionEvent::Message(Message::Binary(bytes)) => drop(session.send_binary(bytes)),
            SessionEvent::Message(Message::Error(text)) => {
                tracing::info!(sid = session.id(), "peer reported: {text}")
            }
            SessionEvent::Stream(stream) => {
                let options = stream.options();
                let transfer = session.stream(stream, options);
                let sid = session.id();
                tokio::spawn(async move {
                    if let Err(e) = transfer.await {
                        tracing::info!(sid, "stream echo failed: {e}");
                    }
                });
            }
            SessionEvent::Stats(_) => {}
            SessionEvent::Closed(_) => break,
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
