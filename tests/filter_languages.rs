//! The filter hot-replaced by its own ports, Rust → Python → JavaScript →
//! C, on a real server while 20 clients send: every message is echoed
//! exactly once and in order (0 lost, 0 duplicated), every one was
//! filtered (redacted) by whichever version was live, the blocked ones are
//! dropped by every version, and the per-session drop counter, kept in the
//! session store, carries on across the languages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::TestServer;
use crate::filter_suite::SUITE_TOML;
use crate::plugin_support::*;
use camp_server::extension::wasm::content_hash;
use camp_server::extension::{Message, Pipeline};
use camp_server::server::Server;

/// Clients sending at once.
const CLIENTS: u64 = 20;

/// Every this many messages, one the filter must drop.
const BLOCK_EVERY: u64 = 25;

/// The message number `n` of client `c`, and what the echo must be (None:
/// dropped by the filter).
fn message(c: u64, n: u64) -> (String, Option<String>) {
    if n.is_multiple_of(BLOCK_EVERY) {
        (format!("c{c}-{n} forbidden"), None)
    } else {
        (
            format!("c{c}-{n} 1234-5678"),
            Some(format!("c{c}-{n} [card]")),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_replaced_rust_python_javascript_c_while_twenty_sessions_send() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let wasm = dir.join("filter.wasm");
    let toml = format!("{SUITE_TOML}\ndeadline_ms = 5000\nmax_instances = 8\n");
    std::fs::write(dir.join("filter.toml"), toml).unwrap();
    let builds = [
        ("rust", FILTER),
        ("python", camp_artifacts::FILTER_PYTHON),
        ("javascript", camp_artifacts::FILTER_JS),
        ("c", camp_artifacts::FILTER_C),
    ];
    std::fs::write(&wasm, bytes(builds[0].1)).unwrap();
    let pipeline = Pipeline::new();
    let (plugins, report) = host().open_dir(&dir, pipeline.clone(), options());
    assert_eq!(report.loaded, ["filter"]);
    plugins.watch().unwrap();
    let server = TestServer::echo(Server::builder().pipeline(pipeline.clone())).await;

    let stop = Arc::new(AtomicBool::new(false));
    // Echoes received by each client (for the swapper to see traffic flow).
    let received: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, mut events) = server.client(2000 + c).await;
        let stop = stop.clone();
        let count = received[c as usize].clone();
        tasks.push(tokio::spawn(async move {
            let receiver = tokio::spawn(async move {
                let mut next = 1u64;
                while let Some(msg) = events.next_message().await {
                    let Message::Utf8(text) = msg else {
                        panic!("kind changed")
                    };
                    if text == "end" {
                        // The last numbers sent were blocked ones.
                        while message(c, next).1.is_none() {
                            next += 1;
                        }
                        return next - 1;
                    }
                    // The next number that the filter lets through, always:
                    // nothing lost, duplicated or reordered.
                    while message(c, next).1.is_none() {
                        next += 1;
                    }
                    assert_eq!(
                        Some(&text),
                        message(c, next).1.as_ref(),
                        "client {c}: lost, duplicated, reordered or unfiltered"
                    );
                    count.fetch_add(1, Ordering::Relaxed);
                    next += 1;
                }
                panic!("client {c}: session ended early");
            });
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                client.send_utf8(message(c, sent).0);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // An end marker, sent after every numbered message (a multiple
            // of BLOCK_EVERY first, so the last number is a blocked one).
            while !sent.is_multiple_of(BLOCK_EVERY) {
                sent += 1;
                client.send_utf8(message(c, sent).0);
            }
            client.send_utf8("end");
            let last = tokio::time::timeout(Duration::from_secs(60), receiver)
                .await
                .expect("all echoes in time")
                .expect("receiver");
            assert_eq!(last, sent, "client {c}: every message accounted for");
            (client, sent)
        }));
    }

    let plugins = Arc::new(plugins);
    let swapper_plugins = plugins.clone();
    let counts = received.clone();
    tokio::task::spawn_blocking(move || {
        // Each client has received `more` echoes since `from`.
        let wait_flow = |what: &str, more: u64| {
            let from: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            wait_until(what, || {
                counts
                    .iter()
                    .zip(&from)
                    .all(|(c, f)| c.load(Ordering::Relaxed) >= f + more)
            });
        };
        wait_flow("traffic through the rust build", 30);
        for (lang, path) in &builds[1..] {
            let data = bytes(path);
            write_by_rename(&wasm, &data);
            let hash = content_hash(&data);
            let live = || {
                status(&swapper_plugins, "filter")
                    .and_then(|s| s.loaded)
                    .is_some_and(|l| l.hash == hash)
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !live() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the {lang} build is not live: {:?}",
                    status(&swapper_plugins, "filter")
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            wait_flow(&format!("traffic through the {lang} build"), 30);
        }
    })
    .await
    .expect("swapper");

    stop.store(true, Ordering::Relaxed);
    for (c, task) in tasks.into_iter().enumerate() {
        let (client, sent) = task.await.expect("client task");
        // The drop counter lives in the session's store: it counts every
        // blocked message, whichever language dropped it.
        let session = server.server.session(2000 + c as u64).expect("session");
        assert_eq!(
            session.get("filter.dropped"),
            Some((sent / BLOCK_EVERY).to_string()),
            "client {c}: drops counted across the four builds"
        );
        client.close("done");
    }
    plugins.stop();
    server.shutdown().await;
}
