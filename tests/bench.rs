//! `camp-bench` as a process: a small echo run against the `camp-server`
//! binary and against `camp-bench baseline`, each on `127.0.0.1:0`, ends
//! with a JSON line whose counts match what was asked.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::common::TOKEN;

/// Starts `program` with `args`; returns it and the `ws://` URL it
/// announces on stdout.
async fn start(program: &str, args: &[&str]) -> (Child, String) {
    let spawned = crate::common::spawn_announcing(program, args).await;
    (spawned.child, spawned.url)
}

/// Starts the `camp-server` binary ([`crate::common::spawn_server`]).
async fn start_server(extra: &[&str]) -> (Child, String) {
    let spawned = crate::common::spawn_server(extra).await;
    (spawned.child, spawned.url)
}

/// Runs `camp-bench` with `args`; returns its exit success and the JSON of
/// its last stdout line.
async fn bench(args: &[&str]) -> (bool, serde_json::Value) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_camp-bench"))
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("camp-bench finishes within 30 s")
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().expect("a result line");
    (
        out.status.success(),
        serde_json::from_str(last).expect("the last line is JSON"),
    )
}

/// Checks an echo report of `sessions` x `messages`.
fn check_echo(report: &serde_json::Value, sessions: u64, messages: u64, size: u64) {
    assert_eq!(report["bench"], "echo");
    assert_eq!(report["sessions"], sessions);
    assert_eq!(report["messages"], messages);
    assert_eq!(report["size"], size);
    assert_eq!(report["connected"], sessions);
    assert_eq!(report["echoes"], sessions * messages);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["timed_out"], false);
    let rate = report["echo_per_s"].as_f64().unwrap();
    assert!(rate > 0.0, "{report}");
    let p50 = report["p50_us"].as_u64().unwrap();
    let p99 = report["p99_us"].as_u64().unwrap();
    assert!(p50 > 0 && p50 <= p99, "{report}");
    assert!(p99 <= report["max_us"].as_u64().unwrap(), "{report}");
}

fn echo_args<'a>(url: &'a str, size: &'a str) -> Vec<&'a str> {
    vec![
        "echo",
        "--url",
        url,
        "--token",
        TOKEN,
        "--sessions",
        "2",
        "--messages",
        "200",
        "--window",
        "8",
        "--size",
        size,
        "--timeout-s",
        "20",
    ]
}

#[tokio::test]
async fn echo_against_the_server_binary() {
    let (mut server, url) = start_server(&[]).await;
    let (ok, report) = bench(&echo_args(&url, "64")).await;
    assert!(ok, "{report}");
    check_echo(&report, 2, 200, 64);
    // The URL as users type it, without the trailing slash, works too.
    let bare = url.trim_end_matches('/').to_string();
    let (ok, report) = bench(&echo_args(&bare, "4096")).await;
    assert!(ok, "{report}");
    check_echo(&report, 2, 200, 4096);
    assert_eq!(report["kind"], "binary");
    let mut text = echo_args(&url, "100");
    text.push("--text");
    let (ok, report) = bench(&text).await;
    assert!(ok, "{report}");
    check_echo(&report, 2, 200, 100);
    assert_eq!(report["kind"], "utf8");

    // A wrong token: every session fails, the report says so, exit 1.
    let mut args = echo_args(&url, "64");
    args[4] = "wrong";
    let (ok, report) = bench(&args).await;
    assert!(!ok);
    assert_eq!(report["connected"], 0);
    assert_eq!(report["errors"], 400);
    assert!(
        report["error_samples"][0]
            .as_str()
            .unwrap()
            .contains("HTTP 401"),
        "{report}"
    );
    server.kill().await.unwrap();
}

#[tokio::test]
async fn echo_against_the_baseline() {
    let (mut baseline, url) = start(
        env!("CARGO_BIN_EXE_camp-bench"),
        &["baseline", "--bind", "127.0.0.1:0", "--max-s", "60"],
    )
    .await;
    let (ok, report) = bench(&echo_args(&url, "64")).await;
    assert!(ok, "{report}");
    check_echo(&report, 2, 200, 64);
    baseline.kill().await.unwrap();
}

#[tokio::test]
async fn idle_reports_memory_per_session() {
    let (mut server, url) = start_server(&[]).await;
    let pid = server.id().unwrap().to_string();
    let (ok, report) = bench(&[
        "idle",
        "--url",
        &url,
        "--token",
        TOKEN,
        "--sessions",
        "20",
        "--server-pid",
        &pid,
        "--settle-s",
        "0",
    ])
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["connected"], 20);
    assert!(report["rss_after"].as_u64().unwrap() >= report["rss_before"].as_u64().unwrap());
    assert!(report["rss_per_session"].is_u64(), "{report}");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn refuses_non_loopback_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_camp-bench"))
        .args(["baseline", "--bind", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[tokio::test]
async fn transfer_reports_push_and_pull_throughput() {
    let (mut server, url) = start_server(&[]).await;
    let (ok, report) = bench(&[
        "transfer",
        "--url",
        &url,
        "--token",
        TOKEN,
        "--size-mb",
        "2",
        "--timeout-s",
        "20",
    ])
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["size"], 2_000_000);
    assert_eq!(report["legs"][0]["behaviour"], "push");
    assert_eq!(report["legs"][1]["behaviour"], "pull");
    assert!(report["push_mb_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["pull_mb_per_s"].as_f64().unwrap() > 0.0, "{report}");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn echo_through_the_example_plugin_pipeline() {
    // A copy of the built logger, filter and rpc plugins (the server
    // watches its folder).
    let dir = tempfile::tempdir().unwrap();
    let built = std::path::Path::new(crate::common::examples_dir());
    for name in ["logger", "filter", "rpc"] {
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(built.join(&file), dir.path().join(&file)).unwrap();
        }
    }
    let (mut server, url) = start_server(&["--plugins", dir.path().to_str().unwrap()]).await;
    crate::common::wait_ready(&url, TOKEN).await;
    let mut args = echo_args(&url, "64");
    args.push("--text");
    let (ok, report) = bench(&args).await;
    assert!(ok, "{report}");
    check_echo(&report, 2, 200, 64);
    assert_eq!(report["kind"], "utf8");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn flood_a_server_that_stops_reading() {
    let (mut server, url) = start_server(&[]).await;
    let pid = server.id().unwrap().to_string();
    let (ok, report) = bench(&[
        "flood",
        "--url",
        &url,
        "--token",
        TOKEN,
        "--kind",
        "ping",
        "--frames",
        "20000",
        "--blocked-s",
        "2",
        "--server-pid",
        &pid,
    ])
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["bench"], "flood");
    assert_eq!(report["kind"], "ping");
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent == 20_000 || report["blocked"] == true, "{report}");
    assert!(report["rss_after"].as_u64().unwrap() > 0, "{report}");
    server.kill().await.unwrap();
}
