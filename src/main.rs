//! The `camp-server` binary: a CAMP server whose application echoes every
//! message back to its session, with extensions loaded from a folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use camp_server::config::{
    AdminConfig, BackpressureConfig, Config, LimitsConfig, PluginCache, TlsConfig as TlsFiles,
};
use camp_server::extension::Pipeline;
use camp_server::extension::wasm::{DirOptions, HostOptions, PluginHost, TokenPlugin, WatchMode};
use camp_server::server::{Server, TokenList};
use camp_server::tls::TlsConfig;
use clap::Parser;

/// Command-line options. Every option can also be set in the `--config`
/// TOML file; a flag given here wins over the file.
#[derive(Debug, Parser)]
#[command(
    name = "camp-server",
    version,
    about = "A CAMP v1 server with WebAssembly extensions"
)]
struct Args {
    /// TOML configuration file (same keys as the flags, plus sections).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    bind: Option<SocketAddr>,
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
    /// A WebAssembly token-validating plugin (`wit/auth/camp-auth.wit`, settings
    /// in the `.toml` beside it): tokens it accepts are admitted too; with
    /// it, --token may be left out.
    #[arg(long)]
    token_plugin: Option<PathBuf>,
    /// Heartbeat interval in milliseconds [default: 15000].
    #[arg(long)]
    keep_alive_ms: Option<u64>,
    /// Refuse what the reference server tolerates from the published
    /// clients (no client ENDPOINT_INFO, off-by-one PUSH offsets, frames
    /// with another sid, `x-cryo-sid`, `x-camp-sid` twice with different
    /// values) instead of accepting and counting it in
    /// camp_protocol_tolerated_total.
    #[arg(long)]
    strict: bool,
    /// Backpressure profile: default, optimize_latency or optimize_memory.
    #[arg(long)]
    backpressure_profile: Option<String>,
    /// Address of the admin listener (metrics, health, admin view)
    /// [default: 127.0.0.1:9090].
    #[arg(long)]
    admin_bind: Option<SocketAddr>,
    /// Do not start the admin listener.
    #[arg(long)]
    no_admin: bool,
    /// Folder of WebAssembly plugins (NAME.wasm + optional NAME.toml),
    /// loaded in file-name order and hot-reloaded while the server runs.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Scan interval in milliseconds of a plugin folder that cannot be
    /// watched (inotify limit reached): hot reload goes on by polling
    /// [default: 1000].
    #[arg(long)]
    plugin_poll_ms: Option<u64>,
    /// Folder where compiled plugins are cached across restarts
    /// [default: $XDG_CACHE_HOME/camp-server/plugins, else
    /// ~/.cache/camp-server/plugins].
    #[arg(long, conflicts_with = "no_plugin_cache")]
    plugin_cache: Option<PathBuf>,
    /// Keep compiled plugins in memory only: every start compiles them
    /// again (`plugin_cache = false`).
    #[arg(long)]
    no_plugin_cache: bool,
    /// PEM certificate chain: serve TLS (wss://) with it (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections held at once, sessions and upgrades in progress; above
    /// it upgrades get 503 [default: 16384] (also `[limits]` in the file).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections held at once from one IP address; above it upgrades get
    /// 429 [default: 1024].
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Log filter (RUST_LOG syntax) [default: info]; RUST_LOG wins when set.
    #[arg(long)]
    log: Option<String>,
}

impl Args {
    /// The flags as a partial configuration, to lay over the file's.
    fn as_config(&self) -> Config {
        Config {
            bind: self.bind,
            tokens: Some(self.tokens.clone()).filter(|t| !t.is_empty()),
            token_file: self.token_file.clone(),
            token_plugin: self.token_plugin.clone(),
            keep_alive_ms: self.keep_alive_ms,
            strict: self.strict.then_some(true),
            log: self.log.clone(),
            plugins: self.plugins.clone(),
            plugin_cache: match (&self.plugin_cache, self.no_plugin_cache) {
                (_, true) => Some(PluginCache::Enabled(false)),
                (dir, false) => dir.clone().map(PluginCache::Dir),
            },
            plugin_poll_ms: self.plugin_poll_ms,
            plugin_defaults: None,
            tls: self.tls_cert.clone().map(|cert| TlsFiles {
                cert: Some(cert),
                key: self.tls_key.clone(),
            }),
            backpressure: self
                .backpressure_profile
                .clone()
                .map(|p| BackpressureConfig {
                    profile: Some(p),
                    ..BackpressureConfig::default()
                }),
            limits: (self.max_connections.is_some() || self.max_connections_per_ip.is_some()).then(
                || LimitsConfig {
                    max_connections: self.max_connections,
                    max_connections_per_ip: self.max_connections_per_ip,
                    ..LimitsConfig::default()
                },
            ),
            admin: (self.admin_bind.is_some() || self.no_admin).then(|| AdminConfig {
                bind: self.admin_bind,
                enabled: self.no_admin.then_some(false),
            }),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let settings = file.overridden_by(args.as_config()).resolve()?;
    // The library's clients no longer use tungstenite's client handshake
    // (which traces the whole request, token included); the directive stays
    // as a second guard for any other dialer linked in.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log))
        .add_directive(
            "tungstenite::handshake::client=debug"
                .parse()
                .expect("a valid directive"),
        );
    // Logs on stderr; stdout carries only the announced addresses.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: log files and journals get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let pipeline = Pipeline::new();
    // No plugin, no cache folder.
    let uses_plugins = settings.plugins.is_some() || settings.token_plugin.is_some();
    let cache_dir = settings.plugin_cache.clone().filter(|_| uses_plugins);
    let host = match PluginHost::new(HostOptions {
        cache_dir: cache_dir.clone(),
        defaults: settings.plugin_defaults.clone(),
    }) {
        Err(e @ camp_server::extension::wasm::HostError::Cache { .. }) => {
            // A cache that cannot be used costs start-up time, not service.
            tracing::warn!("{e}; compiled plugins are kept in memory only (plugin_cache)");
            PluginHost::new(HostOptions {
                cache_dir: None,
                defaults: settings.plugin_defaults.clone(),
            })?
        }
        host => host?,
    };
    if let Some(dir) = &cache_dir {
        tracing::debug!(dir = %dir.display(), "compiled plugins cached in");
    }
    // With a plugin folder, sessions are refused (503) until its plugins
    // are loaded, while the listeners, the admin view and /readyz are up
    // at once.
    let dir_options = DirOptions {
        poll_interval: settings.plugin_poll,
        ..DirOptions::default()
    };
    let plugins = settings
        .plugins
        .as_ref()
        .map(|dir| Arc::new(host.plugin_dir(dir.clone(), pipeline.clone(), dir_options.clone())));

    let token_plugin = match &settings.token_plugin {
        Some(wasm) => Some(
            TokenPlugin::load_file(&host, wasm)
                .await
                .with_context(|| format!("token_plugin {}", wasm.display()))?,
        ),
        None => None,
    };
    let mut builder = Server::builder().pipeline(pipeline);
    builder = match token_plugin {
        None => builder.tokens(settings.tokens.clone()),
        Some(plugin) => {
            tracing::info!(
                plugin = plugin.name(),
                "tokens are also validated by a plugin"
            );
            let list = Arc::new(TokenList::new(settings.tokens.clone()));
            builder.validator(move |token| {
                let (list, plugin) = (list.clone(), plugin.clone());
                async move { list.contains(&token) || plugin.admits(token).await }
            })
        }
    };
    let mut builder = builder
        .keep_alive(settings.keep_alive)
        .strict(settings.strict)
        .backpressure(settings.backpressure)
        .upgrade_limits(settings.upgrade_limits)
        .transaction_limits(settings.tx_limits.clone())
        .ready(plugins.is_none());
    let scheme = match &settings.tls {
        Some((cert, key)) => {
            builder = builder.tls(TlsConfig::from_pem_files(cert, key)?);
            "wss"
        }
        None => "ws",
    };
    let (server, mut incoming) = builder.build();
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("cannot listen on {}", settings.bind))?;
    let local = listener.local_addr()?;
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(admin_addr) = settings.admin {
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("cannot listen on {admin_addr} (admin)"))?;
        let admin_local = admin.local_addr()?;
        tracing::info!("admin on http://{admin_local}/ (/metrics, /healthz, /readyz, /admin)");
        announce(&format!("camp-server admin on http://{admin_local}/"));
        tokio::spawn(camp_server::admin::serve(
            admin,
            server.clone(),
            plugins
                .clone()
                .map(|p| p as Arc<dyn camp_server::admin::AdminReport>),
            async {
                let _ = admin_stopped.await;
            },
        ));
    }
    tracing::info!("listening on {scheme}://{local}/");
    announce(&format!("camp-server listening on {scheme}://{local}/"));

    tokio::spawn(async move {
        while let Some((session, events)) = incoming.next().await {
            tokio::spawn(camp_server::server::echo(session, events));
        }
    });
    let (abort, aborted) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let server = server.clone();
        async move {
            let stop = async {
                tokio::select! {
                    _ = shutdown_signal() => {}
                    _ = aborted => {}
                }
            };
            server.serve(listener, stop).await
        }
    });
    let mut failed = None;
    if let (Some(plugins), Some(dir)) = (&plugins, &settings.plugins) {
        let started = std::time::Instant::now();
        let loading = plugins.clone();
        let report = tokio::task::spawn_blocking(move || loading.load_initial()).await?;
        let how = match plugins.watch() {
            Ok(WatchMode::Events) => Ok("watching the folder for changes"),
            // The warning naming the folder and the cause is logged.
            Ok(WatchMode::Polling { .. }) => Ok("polling the folder for changes"),
            Err(e) => Err(e),
        };
        tracing::info!(
            dir = %dir.display(),
            loaded = ?report.loaded,
            failed = ?report.failed,
            ms = started.elapsed().as_millis() as u64,
            "plugins loaded; serving sessions and {}",
            how.as_ref().map_or("stopping", |h| h)
        );
        match how {
            Ok(_) => server.set_ready(),
            Err(e) => {
                failed = Some(e);
                let _ = abort.send(());
            }
        }
    }
    serving.await??;
    let _ = stop_admin.send(());
    if let Some(plugins) = &plugins {
        plugins.stop();
        plugins.unload_all();
    }
    host.shutdown();
    if let Some(e) = failed {
        return Err(e.into());
    }
    tracing::info!("stopped");
    Ok(())
}

/// Writes one of the lines that announce the server's addresses on stdout.
/// A closed stdout (`camp-server … | head -1`) must not stop the server:
/// `println!` would panic.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
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
