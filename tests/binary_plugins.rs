//! The README's main job: the `camp-server` binary with the example plugins
//! (logger, filter, rpc) from the build, hot reload through the folder, and
//! the admin view listing them.

use crate::common::rss_kib;
use std::path::Path;
use std::time::{Duration, Instant};

use camp_server::client::Client;
use camp_server::extension::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

/// Starts the binary on the plugin folder `dir`; returns the child, the
/// CAMP URL and the admin address.
async fn start(dir: &Path) -> (Child, String, String) {
    let dir = dir.to_str().expect("a UTF-8 temp path");
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--admin-bind",
        "127.0.0.1:0",
        "--token",
        "secret",
        "--plugins",
        dir,
        "--log",
        "warn",
    ];
    let spawned = crate::common::spawn_announcing(env!("CARGO_BIN_EXE_camp-server"), &args).await;
    let admin = spawned.admin.expect("the admin address is announced");
    (spawned.child, spawned.url, admin)
}

/// [`start`], then waits until the initial plugins are loaded.
async fn start_ready(dir: &Path) -> (Child, String, String) {
    let started = start(dir).await;
    crate::common::wait_ready(&started.1, "secret").await;
    started
}

pub(crate) async fn admin_get(addr: &str, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

async fn reply(events: &mut camp_server::session::SessionEvents) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), events.next_message()).await {
        Ok(Some(Message::Utf8(t))) => Some(t),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn binary_runs_the_example_pipeline_and_hot_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let built = Path::new(crate::common::examples_dir());
    for name in ["logger", "filter", "rpc"] {
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(built.join(&file), dir.path().join(&file)).unwrap();
        }
    }
    let (_child, url, admin) = start_ready(dir.path()).await;
    let (client, mut events) = Client::new(&url, "secret").connect().await.unwrap();

    // rpc answers and consumes its requests.
    client.send_utf8(r#"{"jsonrpc":"2.0","id":1,"method":"add","params":[2,3]}"#);
    let answer: serde_json::Value =
        serde_json::from_str(&reply(&mut events).await.unwrap()).unwrap();
    assert_eq!(
        (answer["id"].as_i64(), answer["result"].as_i64()),
        (Some(1), Some(5))
    );
    // The filter drops blocked words and redacts card numbers; plain text echoes.
    client.send_utf8("this is forbidden");
    client.send_utf8("card 4111 1111 1111 1111 ok");
    assert_eq!(reply(&mut events).await.unwrap(), "card [card] ok");
    client.send_utf8("hello");
    assert_eq!(reply(&mut events).await.unwrap(), "hello");

    let view: serde_json::Value = serde_json::from_str(&admin_get(&admin, "/admin").await).unwrap();
    let names: Vec<&str> = view["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["logger", "filter", "rpc"],
        "order from the plugins' configs"
    );
    let plugins = view["plugins"].as_array().unwrap();
    assert!(
        plugins
            .iter()
            .all(|p| p["loaded"]["hash"].as_str().is_some_and(|h| h.len() == 64))
    );
    // One time format: RFC 3339 UTC.
    let rfc3339 = |v: &serde_json::Value| {
        v.as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T')
    };
    assert!(
        plugins.iter().all(|p| rfc3339(&p["loaded"]["loaded_at"])),
        "{view}"
    );
    assert!(
        view["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| rfc3339(&e["registered_at"])),
        "{view}"
    );
    let metrics = admin_get(&admin, "/metrics").await;
    assert!(
        metrics.contains("camp_plugin_loaded{plugin=\"rpc\"} 1")
            && metrics.contains("camp_plugin_waiting_calls{plugin=\"rpc\"} 0"),
        "{metrics}"
    );
    // Extension series are labelled by plugin and version (the content
    // hash's first 12 digits, as in the extension list and the plugins).
    let version = view["extensions"][1]["version"].as_str().unwrap();
    assert_eq!(version.len(), 12);
    let filter = plugins.iter().find(|p| p["name"] == "filter").unwrap();
    assert_eq!(filter["loaded"]["version"], version);
    assert!(
        filter["loaded"]["hash"]
            .as_str()
            .unwrap()
            .starts_with(version)
    );
    assert!(
        metrics.contains(&format!(
            "camp_extension_drops_total{{extension=\"filter\",version=\"{version}\"}} 1"
        )),
        "{metrics}"
    );

    // Hot reload: removing rpc.wasm unloads it while the session stays up;
    // the same request is then echoed like any text.
    std::fs::remove_file(dir.path().join("rpc.wasm")).unwrap();
    let request = r#"{"jsonrpc":"2.0","id":2,"method":"echo","params":["x"]}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        client.send_utf8(request);
        let got = reply(&mut events).await.unwrap();
        if got == request {
            break;
        }
        assert!(Instant::now() < deadline, "rpc was never unloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a broken file in its place is refused while the others keep serving.
    std::fs::write(dir.path().join("rpc.wasm"), b"not a component").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let view: serde_json::Value = serde_json::from_str(&admin_get(&admin, "/admin").await).unwrap();
    let rpc = view["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "rpc")
        .unwrap();
    assert!(rpc["last_error"].as_str().is_some(), "{rpc}");
    client.send_utf8("still forbidden");
    client.send_utf8("still here");
    assert_eq!(reply(&mut events).await.unwrap(), "still here");
    assert!(!client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_hit_their_bounds_and_the_binary_stays_within_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(camp_artifacts::PROBE, dir.path().join("probe.wasm")).unwrap();
    std::fs::write(
        dir.path().join("probe.toml"),
        // A generous time budget: this test is about memory, and a busy
        // machine makes growing memory slow.
        "order = 1\nmemory_limit_bytes = 16777216\ndeadline_ms = 2000\nconfig = '{\"hooks\":[\"on-receive-utf8\"]}'\n",
    )
    .unwrap();
    // A component in text form, as wasmtime accepts it; it traps on every
    // non-empty message (fail-open: the message passes).
    std::fs::write(
        dir.path().join("table-hog.toml"),
        "order = 2\nfailure_policy = \"fail-open\"\n",
    )
    .unwrap();
    std::fs::copy(camp_artifacts::TABLE_HOG, dir.path().join("table-hog.wasm")).unwrap();
    let log_path = dir.path().join("server.log");
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
            "warn",
            "--plugins",
            dir.path().to_str().unwrap(),
        ],
        &log_path,
    )
    .await;
    let (child, url) = (spawned.child, spawned.url);
    let admin = spawned.admin.expect("an admin listener");
    let pid = child.id().unwrap();
    crate::common::wait_ready(&url, "secret").await;
    let (warm, mut warm_events) = Client::new(&url, "secret").sid(1).connect().await.unwrap();
    warm.send_utf8("");
    reply(&mut warm_events).await;
    let before = rss_kib(pid);

    // 20 sessions, each: a 1 GiB session-store flood, 100,000 sends in one
    // call, a memory hog (the probe, fail-closed: dropped) and three table
    // hogs (table-hog, fail-open: echoed). A good message between keeps the
    // probe from backing off for the session.
    let mut tasks = Vec::new();
    for sid in 0..20u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (client, mut events) = Client::new(&url, "secret")
                .sid(100 + sid)
                .connect()
                .await
                .unwrap();
            for attack in ["STOREFLOOD", "SENDFLOOD:100000", "mid", "HOG", "grow"] {
                client.send_utf8(attack);
            }
            client.send_utf8(format!("ok {sid}"));
            for echo in ["mid".to_string(), "grow".into(), format!("ok {sid}")] {
                assert_eq!(reply(&mut events).await.unwrap(), echo);
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.unwrap());
    }
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "server RSS {} MiB -> {} MiB after the floods",
        before / 1024,
        after / 1024
    );
    // Documented bound (plugins/README.md): per instance the memory cap
    // (16 MiB here) plus 1.6 MB of table, at most 16 instances of each of
    // the two plugins, 64 KiB of session store per session. Unbounded, the
    // store flood alone added 515 MiB.
    assert!(grown_mib < 2 * 16 * 18 + 20, "RSS grew by {grown_mib} MiB");

    let metrics = admin_get(&admin, "/metrics").await;
    for (extension, kind, n) in [
        ("probe", "limit", 40),
        ("probe", "memory", 20),
        ("table-hog", "limit", 60),
    ] {
        let (prefix, suffix) = (
            format!("camp_extension_failures_total{{extension=\"{extension}\",version=\""),
            format!("\",kind=\"{kind}\"}} {n}"),
        );
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&prefix) && l.ends_with(&suffix)),
            "{prefix}…{suffix} in:\n{metrics}"
        );
    }
    assert!(metrics.contains("camp_sessions_open 21"), "{metrics}");
    let view: serde_json::Value = serde_json::from_str(&admin_get(&admin, "/admin").await).unwrap();
    let probe = view["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "probe")
        .unwrap()
        .clone();
    assert!(probe.to_string().contains("limit"), "{probe}");
    drop(clients);
    drop(warm);
    let log = std::fs::read_to_string(&log_path).unwrap();
    // Logs to a file (not a terminal) are plain text: no ANSI colour codes.
    assert!(!log.is_empty() && !log.contains('\x1b'), "{log}");
    for needle in [
        "session_store_bytes = 65536",
        "sends_per_call = 16",
        "max_table_elements = 200000",
        "exceeded its memory limit",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not logged:\n{log}"));
        assert!(
            line.contains("session=1") && (line.contains("probe") || line.contains("table-hog")),
            "{line}"
        );
    }
}

#[tokio::test]
async fn sessions_wait_for_the_initial_plugins_with_a_503_and_readyz_says_when() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(camp_artifacts::PROBE, dir.path().join("probe.wasm")).unwrap();
    // A plugin whose load takes most of a second.
    std::fs::write(
        dir.path().join("probe.toml"),
        "config = '{\"register_sleep_ms\":900,\"tag\":\"p\",\"hooks\":[\"on-receive-utf8\"]}'\n",
    )
    .unwrap();
    let (_child, url, admin) = start(dir.path()).await;
    // Up at once: a session is refused with 503 until the plugins are in.
    let refused = Client::new(&url, "secret").connect().await.unwrap_err();
    assert!(refused.to_string().contains("503"), "{refused}");
    let status = |text: &str| text.split_whitespace().nth(1).unwrap_or("").to_string();
    let readyz = async |addr: &str| {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).await.unwrap();
        text
    };
    assert_eq!(status(&readyz(&admin).await), "503");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&readyz(&admin).await) != "200" {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ready: served, through the plugin.
    let (client, mut events) = Client::new(&url, "secret").connect().await.unwrap();
    client.send_utf8("hi");
    assert_eq!(reply(&mut events).await.unwrap(), "hi|p");
}

#[tokio::test]
async fn compiled_plugins_are_cached_by_default_and_a_flag_turns_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let cache_home = tempfile::tempdir().unwrap();
    std::fs::copy(camp_artifacts::PROBE, dir.path().join("probe.wasm")).unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let base = [
        "--bind",
        "127.0.0.1:0",
        "--admin-bind",
        "127.0.0.1:0",
        "--token",
        "secret",
        "--log",
        "warn",
        "--plugins",
        dir_arg,
    ];
    // Where the probe came from on each start: compiled, or the disk cache.
    let cache_of_start = async |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let spawned = crate::common::spawn_announcing_with_cache(
            env!("CARGO_BIN_EXE_camp-server"),
            &args,
            cache_home.path(),
        )
        .await;
        crate::common::wait_ready(&spawned.url, "secret").await;
        let admin = spawned.admin.as_deref().unwrap();
        let view: serde_json::Value =
            serde_json::from_str(&admin_get(admin, "/admin").await).unwrap();
        view["plugins"][0]["loaded"]["timings"]["cache"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(cache_of_start(&[]).await, "compiled");
    // The default folder: $XDG_CACHE_HOME/camp-server/plugins, private.
    let folder = cache_home.path().join("camp-server/plugins");
    assert!(
        std::fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().ends_with(".cwasm")),
        "nothing cached in {}",
        folder.display()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(cache_of_start(&[]).await, "disk");
    assert_eq!(cache_of_start(&["--no-plugin-cache"]).await, "compiled");
}
