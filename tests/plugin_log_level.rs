//! `host.log-enabled` (camp:extension@0.2.1) answers what the server's log
//! filter lets through, by the same test `host.log` applies, and the
//! example logger uses it: with plugin lines of its level filtered out it
//! declares no hook, so the host never calls it.

use std::path::Path;
use std::time::{Duration, Instant};

use camp_server::client::Client;
use camp_server::extension::{Extension, Hook, HookSet, Message, Verdict};
use camp_server::session::Session;

use crate::binary_plugins::admin_get;
use crate::plugin_support::*;

/// A subscriber like the server's (`--log FILTER`) writing into `capture`.
fn filtered(filter: &str, capture: &LogCapture) -> impl tracing::Subscriber + Send + Sync {
    let capture = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(move || capture.clone())
        .finish()
}

#[test]
fn log_enabled_answers_what_the_log_filter_lets_through_as_log_does() {
    let probe = probe("levels", "{}", "");
    let (session, _outbox) = Session::detached(3);
    // The probe's answer per level, and whether an info line it writes
    // through host.log reached the log.
    let ask = |filter: &str| {
        let capture = LogCapture::default();
        let answer = tracing::subscriber::with_default(filtered(filter, &capture), || {
            let (result, answer) = call(
                &*probe,
                Hook::OnReceiveUtf8,
                &session,
                Message::Utf8("LOGENABLED".into()),
            );
            assert_eq!(result, Ok(Verdict::Pass));
            let (result, _) = call(
                &*probe,
                Hook::OnReceiveUtf8,
                &session,
                Message::Utf8("LOGFLOOD:1".into()),
            );
            assert_eq!(result, Ok(Verdict::Pass));
            answer
        });
        let Message::Utf8(answer) = answer else {
            panic!("{answer:?}")
        };
        (answer, capture.text().contains(&"l".repeat(100)))
    };
    let all_but = |off: usize| {
        let levels = ["trace", "debug", "info", "warn", "error"];
        levels
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{l}={}", u8::from(i >= off)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(ask("warn"), (all_but(3), false));
    assert_eq!(ask("info"), (all_but(2), true));
    assert_eq!(ask("trace"), (all_but(0), true));
    // The filter for plugin lines (their target is the host's module), not
    // the server's default level.
    assert_eq!(
        ask("warn,camp_server::extension::wasm=debug"),
        (all_but(1), true)
    );
    assert_eq!(
        ask("info,camp_server::extension::wasm=error"),
        (all_but(4), false)
    );
}

#[test]
fn the_logger_declares_no_hook_when_its_lines_would_be_dropped() {
    // hooks() runs after on-register, so the level from the config counts.
    let hooks = |filter: &str, level: &str| {
        let capture = LogCapture::default();
        let plugin = tracing::subscriber::with_default(filtered(filter, &capture), || {
            load("logger", LOGGER, &format!("config = \"{level}\""))
        });
        let meta = plugin.meta();
        (plugin.hooks(), meta.session_opened, meta.session_closed)
    };
    let none = (HookSet::NONE, false, false);
    let all = (HookSet::ALL, true, true);
    assert_eq!(hooks("warn", "info"), none);
    assert_eq!(hooks("info", "debug"), none);
    assert_eq!(hooks("info", "info"), all);
    assert_eq!(hooks("warn", "warn"), all);
    assert_eq!(
        hooks("warn,camp_server::extension::wasm=debug", "debug"),
        all
    );
}

/// The server binary with the example plugins at `--log level`, its log
/// written to `log`: its CAMP URL and admin address.
async fn example_server(level: &str, log: &Path) -> (tokio::process::Child, String, String) {
    let dir = log.with_file_name("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let built = Path::new(crate::common::examples_dir());
    for name in ["logger", "filter", "rpc"] {
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(built.join(&file), dir.join(&file)).unwrap();
        }
    }
    let spawned = crate::common::spawn_logging_to(
        env!("CARGO_BIN_EXE_camp-server"),
        &[
            "--bind",
            "127.0.0.1:0",
            "--admin-bind",
            "127.0.0.1:0",
            "--token",
            "secret",
            "--log",
            level,
            "--plugins",
            dir.to_str().unwrap(),
        ],
        log,
    )
    .await;
    let (child, url) = (spawned.child, spawned.url);
    let admin = spawned.admin.expect("an admin listener");
    crate::common::wait_ready(&url, "secret").await;
    (child, url, admin)
}

/// One session through the example pipeline: "hello" echoes; returns the
/// logger's hook calls (`camp_extension_calls_total`) and its hooks and
/// WIT version as `/admin` shows them.
async fn one_session(url: &str, admin: &str) -> (u64, serde_json::Value, serde_json::Value) {
    let (client, mut events) = Client::new(url, "secret").sid(77).connect().await.unwrap();
    client.send_utf8("hello");
    let echoed = tokio::time::timeout(Duration::from_secs(5), events.next_message()).await;
    assert_eq!(echoed, Ok(Some(Message::Utf8("hello".into()))));
    client.close("done");
    let _ = events.closed().await;
    let metrics = admin_get(admin, "/metrics").await;
    let calls = metrics
        .lines()
        .find(|l| l.starts_with("camp_extension_calls_total{extension=\"logger\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no logger calls in {metrics}"));
    let view: serde_json::Value = serde_json::from_str(&admin_get(admin, "/admin").await).unwrap();
    let logger = view["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "logger")
        .unwrap_or_else(|| panic!("no logger in {view}"))["loaded"]
        .clone();
    (
        calls,
        logger["hooks"].clone(),
        logger["wit_version"].clone(),
    )
}

#[tokio::test]
async fn the_example_logger_is_not_called_when_the_server_logs_at_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("warn.log");
    let (_child, url, admin) = example_server("warn", &log).await;
    let (calls, hooks, wit) = one_session(&url, &admin).await;
    assert_eq!(calls, 0, "the logger's hooks were called");
    assert_eq!(hooks, serde_json::json!([]), "no hook, no notification");
    assert_eq!(wit, "0.2.1");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("session=77"), "{text}");
}

#[tokio::test]
async fn the_example_logger_writes_its_lines_when_the_server_logs_at_info() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("info.log");
    let (_child, url, admin) = example_server("info", &log).await;
    let (calls, hooks, _) = one_session(&url, &admin).await;
    assert_eq!(calls, 2, "in and out");
    assert_eq!(hooks.as_array().map(Vec::len), Some(8), "{hooks}");
    let wanted = [
        "open session=77 addr=127.0.0.1:",
        "in session=77 kind=utf8 size=5",
        "out session=77 kind=utf8 size=5",
        "close session=77",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if wanted.iter().all(|w| text.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "missing logger lines in {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
