//! The admin listener: Prometheus metrics, a health check and a JSON view
//! of live sessions and loaded extensions. It binds to loopback by default
//! and speaks just enough HTTP/1.1 for scrapers and `curl`.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | counters and histograms, Prometheus text format |
//! | `GET /healthz` | `ok` (the process is up) |
//! | `GET /readyz` | 200 `ready` once sessions are served (the initial plugins loaded); 503 `starting` before |
//! | `GET /admin` | JSON: `sessions`, `extensions` (and `plugins` when a plugin host reports) |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::extension::ExtensionStats;
use crate::extension::wasm::{PluginDir, PluginStatus};
use crate::metrics::{DROP_POLICIES, Metrics, Tolerated, family, rfc3339};
use crate::protocol::FrameType;
use crate::server::Server;

/// Something that adds to the admin view and the metrics (the WebAssembly
/// plugin host: files, hashes, load errors, reloads).
pub trait AdminReport: Send + Sync {
    /// A JSON value shown under `plugins` in `/admin`.
    fn admin_json(&self) -> Value;
    /// Extra Prometheus text appended to `/metrics`.
    fn metrics_text(&self) -> String;
}

/// The plugin folder reports every file's state: what is loaded (hash,
/// load time, config), the last load error, loads and failed loads.
impl AdminReport for PluginDir {
    fn admin_json(&self) -> Value {
        serde_json::to_value(self.status()).unwrap_or(Value::Null)
    }

    fn metrics_text(&self) -> String {
        let status = self.status();
        let mut o = String::new();
        let per_plugin = |value: fn(&PluginStatus) -> u64| {
            status
                .iter()
                .map(move |p| (format!("plugin=\"{}\"", p.name), value(p)))
        };
        family(
            &mut o,
            "camp_plugin_loads_total",
            "Successful plugin loads and reloads.",
            "counter",
            per_plugin(|p| p.loads),
        );
        family(
            &mut o,
            "camp_plugin_load_errors_total",
            "Plugin loads that failed (the old version kept serving).",
            "counter",
            per_plugin(|p| p.load_errors),
        );
        family(
            &mut o,
            "camp_plugin_loaded",
            "1 when a version of the plugin is serving.",
            "gauge",
            per_plugin(|p| u64::from(p.loaded.is_some())),
        );
        family(
            &mut o,
            "camp_plugin_rollbacks_total",
            "Replacements rolled back to the previous version after failing on probation.",
            "counter",
            per_plugin(|p| p.rollbacks),
        );
        family(
            &mut o,
            "camp_plugin_on_probation",
            "1 while a replacement is on probation (the previous version kept ready).",
            "gauge",
            per_plugin(|p| u64::from(p.on_probation)),
        );
        family(
            &mut o,
            "camp_plugin_failing_sessions",
            "Sessions for which the serving version is failing or backing off.",
            "gauge",
            per_plugin(|p| p.failing_sessions as u64),
        );
        family(
            &mut o,
            "camp_plugin_instances",
            "Instances of the serving version alive now (at most max_instances).",
            "gauge",
            per_plugin(|p| p.instances as u64),
        );
        family(
            &mut o,
            "camp_plugin_waiting_calls",
            "Hook calls waiting for an instance: all max_instances of the serving version busy.",
            "gauge",
            per_plugin(|p| p.waiting_calls as u64),
        );
        family(
            &mut o,
            "camp_plugin_output_dropped_bytes_total",
            "Guest stdout/stderr bytes dropped over output_bytes_per_call.",
            "counter",
            per_plugin(|p| p.output_dropped_bytes),
        );
        let polling = matches!(
            self.watch_mode(),
            Some(crate::extension::wasm::WatchMode::Polling { .. })
        );
        family(
            &mut o,
            "camp_plugin_watch_polling",
            "1 when the plugin folder could not be watched and is polled (plugin_poll_ms).",
            "gauge",
            [(String::new(), u64::from(polling))],
        );
        o
    }
}

/// Serves the admin endpoints for `server` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    server: Server,
    report: Option<Arc<dyn AdminReport>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let server = server.clone();
                let report = report.clone();
                tasks.spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        handle(stream, &server, report.as_deref()),
                    )
                    .await;
                });
            }
            Some(_) = tasks.join_next() => {}
            _ = &mut shutdown => break,
        }
    }
}

async fn handle(mut stream: TcpStream, server: &Server, report: Option<&dyn AdminReport>) {
    let head = {
        let mut reader = BufReader::new(&mut stream);
        match crate::transport::read_head(&mut reader).await {
            Ok(head) => head,
            Err(_) => return,
        }
    };
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let text = render_metrics(server, report);
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
        }
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string()),
        ("GET", "/readyz") if server.is_ready() => {
            ("200 OK", "text/plain; charset=utf-8", "ready\n".to_string())
        }
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain; charset=utf-8",
            "starting\n".to_string(),
        ),
        ("GET", "/admin") => {
            let view = admin_view(server, report);
            ("200 OK", "application/json", format!("{view:#}\n"))
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Renders all of `/metrics` in the Prometheus text format: the server's
/// sessions, frames, acks and refusals, its extensions, and what `report`
/// (the plugin folder) adds.
pub fn render_metrics(server: &Server, report: Option<&dyn AdminReport>) -> String {
    let m: &Metrics = server.metrics();
    let pipeline = server.pipeline();
    let mut o = String::with_capacity(8192);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let none = String::new;
    let open = m.sessions_open.load(Ordering::Relaxed);
    family(
        &mut o,
        "camp_sessions_open",
        "Sessions open now.",
        "gauge",
        [(none(), open)],
    );
    for (name, help, counter) in [
        (
            "camp_sessions_total",
            "Sessions that completed the handshake.",
            &m.sessions_total,
        ),
        (
            "camp_malformed_frames_total",
            "Malformed frames received.",
            &m.malformed,
        ),
        (
            "camp_ack_timeouts_total",
            "Tracked frames not acknowledged within 2.5 s.",
            &m.ack_timeouts,
        ),
        (
            "camp_socket_flushes_total",
            "Flushes of the sessions' WebSockets that put frames on the wire (a flush is one or more writes to the socket; tungstenite also writes when its 128 KiB buffer fills); frames sent per flush is how well a session batches its ACKs and replies.",
            &m.socket_flushes,
        ),
    ] {
        family(&mut o, name, help, "counter", [(none(), load(counter))]);
    }
    family(
        &mut o,
        "camp_protocol_tolerated_total",
        "Deviations from CAMP v1 accepted as the reference server accepts them (off with strict).",
        "counter",
        Tolerated::ALL
            .iter()
            .map(|k| (format!("kind=\"{}\"", k.label()), m.tolerated_count(*k))),
    );
    let refused = m.refusal_counts();
    family(
        &mut o,
        "camp_upgrades_refused_total",
        "Upgrade requests refused, by reason.",
        "counter",
        refused
            .iter()
            .map(|(reason, n)| (format!("reason=\"{reason}\""), *n)),
    );
    type PerType = fn(&Metrics, FrameType) -> u64;
    let per_type: [(&str, &str, PerType); 4] = [
        (
            "camp_frames_in_total",
            "Frames received, by type.",
            Metrics::frames_in,
        ),
        (
            "camp_frames_out_total",
            "Frames sent, by type.",
            Metrics::frames_out,
        ),
        (
            "camp_bytes_in_total",
            "Bytes of frames received, by type.",
            Metrics::bytes_in,
        ),
        (
            "camp_bytes_out_total",
            "Bytes of frames sent, by type.",
            Metrics::bytes_out,
        ),
    ];
    family(
        &mut o,
        "camp_limits_hit_total",
        "Limits reached inside sessions, by config key (upgrade refusals: camp_upgrades_refused_total).",
        "counter",
        m.limit_hit_counts()
            .iter()
            .map(|(l, n)| (format!("limit=\"{l}\""), *n)),
    );
    for (name, help, count) in per_type {
        let samples = FrameType::ALL.map(|ty| (format!("type=\"{}\"", ty.name()), count(m, ty)));
        family(&mut o, name, help, "counter", samples);
    }
    family(
        &mut o,
        "camp_queue_drops_total",
        "Data frames dropped by backpressure, by policy.",
        "counter",
        DROP_POLICIES
            .iter()
            .map(|policy| (format!("policy=\"{policy}\""), m.queue_drops(policy))),
    );
    family::<u64>(
        &mut o,
        "camp_ack_rtt_seconds",
        "Ack round-trip time.",
        "histogram",
        [],
    );
    m.ack_rtt.render(&mut o, "camp_ack_rtt_seconds", "");

    let extensions = pipeline.list();
    // By name and version: a replacement has series of its own.
    let label = |e: &crate::extension::ExtensionInfo| {
        if e.version.is_empty() {
            format!("extension=\"{}\"", e.name)
        } else {
            format!("extension=\"{}\",version=\"{}\"", e.name, e.version)
        }
    };
    family(
        &mut o,
        "camp_extension_calls_total",
        "Hook calls, by extension and version.",
        "counter",
        extensions.iter().map(|e| (label(e), load(&e.stats.calls))),
    );
    family(
        &mut o,
        "camp_extension_drops_total",
        "Messages dropped by an extension's verdict.",
        "counter",
        extensions.iter().map(|e| (label(e), load(&e.stats.drops))),
    );
    family(
        &mut o,
        "camp_extension_failures_total",
        "Hook failures, by extension, version and kind.",
        "counter",
        extensions.iter().flat_map(|e| {
            ExtensionStats::FAILURE_KINDS
                .iter()
                .zip(&e.stats.failures)
                .map(move |(kind, n)| (format!("{},kind=\"{kind}\"", label(e)), load(n)))
        }),
    );
    family::<u64>(
        &mut o,
        "camp_hook_duration_seconds",
        "Hook call latency, by extension and version.",
        "histogram",
        [],
    );
    for e in &extensions {
        e.stats
            .latency
            .render(&mut o, "camp_hook_duration_seconds", &label(e));
    }
    if let Some(r) = report {
        o.push_str(&r.metrics_text());
    }
    o
}

/// The JSON admin view.
pub fn admin_view(server: &Server, report: Option<&dyn AdminReport>) -> Value {
    let mut listed = server.sessions();
    listed.sort_by_key(|s| s.id());
    let sessions: Vec<Value> = listed
        .iter()
        .map(|s| {
            let st = s.stats();
            json!({
                // A string: session ids use all 64 bits, and JSON readers
                // (JavaScript, jq) round numbers above 2^53.
                "id": s.id().to_string(),
                "remote": s.remote_addr().map(|a| a.to_string()),
                "peer_features": s.peer_features(),
                "rtt_ms": st.rtt_ms,
                "bytes_rx": st.bytes_rx,
                "bytes_tx": st.bytes_tx,
                "ack_timeouts": st.ack_timeouts,
                "queue_drops": st.queue_drops,
            })
        })
        .collect();
    let extensions: Vec<Value> = server
        .pipeline()
        .list()
        .iter()
        .map(|e| {
            use std::sync::atomic::Ordering::Relaxed;
            json!({
                "name": e.name,
                "version": e.version,
                "order": e.order,
                "hooks": e.hooks.iter().map(|h| h.name()).collect::<Vec<_>>(),
                "failure_policy": e.policy,
                "registered_at": rfc3339(e.registered_at),
                "calls": e.stats.calls.load(Relaxed),
                "drops": e.stats.drops.load(Relaxed),
                "failures": e.stats.failure_count(),
                "failures_by_kind": ExtensionStats::FAILURE_KINDS
                    .iter()
                    .zip(&e.stats.failures)
                    .map(|(kind, n)| (kind.to_string(), json!(n.load(Relaxed))))
                    .collect::<serde_json::Map<_, _>>(),
                "last_error": e.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            })
        })
        .collect();
    let mut view = json!({ "sessions": sessions, "extensions": extensions });
    if let Some(r) = report {
        view["plugins"] = r.admin_json();
    }
    view
}
