//! WebAssembly plugins on a real server over real sockets: a client's
//! JSON-RPC request answered by the rpc plugin, the filter dropping and
//! redacting, a looping plugin not stalling other sessions, and a plugin
//! replaced 20 times and removed while clients send: every message is
//! delivered exactly once, in order, processed by exactly one version.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::TestServer;
use crate::plugin_support::*;
use camp_server::extension::{Message, Pipeline};
use camp_server::server::Server;
use camp_server::session::{Session, SessionEvents};
use serde_json::{Value, json};

/// Connects a client with session id `sid`.
async fn connect(server: &TestServer, sid: u64) -> (Session, SessionEvents) {
    server.client(sid).await
}

/// The next message, within 10 s.
async fn next(events: &mut SessionEvents) -> Message {
    tokio::time::timeout(Duration::from_secs(10), events.next_message())
        .await
        .expect("a message in time")
        .expect("session open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_answers_and_filter_drops_and_redacts_over_a_socket() {
    let pipeline = Pipeline::new();
    pipeline.upsert(load("filter", FILTER, "[config]\nblocked = [\"forbidden\"]\n[[config.redact]]\npattern = '\\d{4}-\\d{4}'\nreplacement = \"[num]\"\n"), 1);
    pipeline.upsert(load("rpc", RPC, ""), 2);
    let server = TestServer::echo(Server::builder().pipeline(pipeline)).await;
    let (client, mut events) = connect(&server, 1).await;

    // The rpc plugin answers on the session and consumes the request: the
    // echo application never sees it, so the only reply is the answer.
    client.send_utf8(r#"{"jsonrpc":"2.0","id":1,"method":"add","params":[40,2]}"#);
    let Message::Utf8(answer) = next(&mut events).await else {
        panic!("not text")
    };
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer, json!({"jsonrpc":"2.0","id":1,"result":42}));

    client.send_utf8(r#"{"jsonrpc":"2.0","id":2,"method":"session.set","params":["who","me"]}"#);
    next(&mut events).await;
    let server_side = server.server.session(1).expect("session 1 on the server");
    assert_eq!(server_side.get("who").as_deref(), Some("me"));

    // Dropped by the filter: never echoed. Redacted: echoed rewritten.
    client.send_utf8("this is forbidden");
    client.send_utf8("call 1234-5678 now");
    client.send_utf8("plain");
    assert_eq!(
        next(&mut events).await,
        Message::Utf8("call [num] now".into())
    );
    assert_eq!(next(&mut events).await, Message::Utf8("plain".into()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_does_not_stall_other_sessions() {
    let pipeline = Pipeline::new();
    pipeline.upsert(
        probe(
            "looper",
            "{}",
            "deadline_ms = 20\nfailure_policy = \"fail-open\"",
        ),
        1,
    );
    let server = TestServer::echo(Server::builder().pipeline(pipeline.clone())).await;
    let (attacker, _attacker_events) = connect(&server, 66).await;
    let (victim, mut victim_events) = connect(&server, 7).await;
    for _ in 0..30 {
        attacker.send_utf8("LOOP");
    }
    // The attacker's loops are being interrupted …
    let stats = pipeline.list()[0].stats.clone();
    for _ in 0..500 {
        if stats.failure_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stats.failure_count() > 0, "the loops were interrupted");
    // … while the victim's traffic flows through the same plugin.
    for i in 0..50 {
        victim.send_utf8(format!("v{i}"));
    }
    for i in 0..50 {
        assert_eq!(
            next(&mut victim_events).await,
            Message::Utf8(format!("v{i}"))
        );
    }
    server.shutdown().await;
}

/// What one client saw: the version that stamped each echoed message.
#[derive(Default)]
struct Seen {
    /// In arrival order.
    versions: Vec<Option<u64>>,
    /// The latest.
    latest: Option<Option<u64>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_twenty_times_loses_duplicates_and_reorders_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let wasm = dir.join("probe.wasm");
    std::fs::write(dir.join("probe.toml"), STAMPING).unwrap();
    std::fs::write(&wasm, stamped_probe(0)).unwrap();
    let pipeline = Pipeline::new();
    let (plugins, report) = host().open_dir(&dir, pipeline.clone(), options());
    assert_eq!(report.loaded, ["probe"]);
    plugins.watch().unwrap();
    let server = TestServer::echo(Server::builder().pipeline(pipeline.clone())).await;

    const CLIENTS: u64 = 3;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut seen_all = Vec::new();
    for c in 0..CLIENTS {
        let (client, mut events) = connect(&server, 1000 + c).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        seen_all.push(seen.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let receiver = {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut expected = 1u64;
                    while let Some(msg) = events.next_message().await {
                        let Message::Utf8(text) = msg else {
                            panic!("kind changed")
                        };
                        if text == "end" {
                            return expected - 1;
                        }
                        // Exactly once and in order: the next number, always.
                        let (body, stamp) = match text.split_once('|') {
                            Some((b, s)) => (b, Some(s)),
                            None => (text.as_str(), None),
                        };
                        assert_eq!(
                            body,
                            format!("c{c}-{expected}"),
                            "lost, duplicated or reordered"
                        );
                        let version = stamp.map(|s| {
                            assert_eq!(s.len(), 10, "exactly one stamp in {text}");
                            s.parse::<u64>().unwrap()
                        });
                        let mut seen = seen.lock().unwrap();
                        seen.versions.push(version);
                        seen.latest = Some(version);
                        expected += 1;
                    }
                    panic!("session ended early");
                })
            };
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                client.send_utf8(format!("c{c}-{sent}"));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Marks the end; sent after every numbered message.
            client.send_utf8("end");
            let received = tokio::time::timeout(Duration::from_secs(20), receiver)
                .await
                .expect("all echoes in time")
                .expect("receiver");
            assert_eq!(received, sent, "client {c}: every message delivered");
            client.close("done");
        }));
    }

    let swap_dir = dir.clone();
    let seen_for_swaps = seen_all.clone();
    let plugins = Arc::new(plugins);
    let swapper_plugins = plugins.clone();
    let swapper_pipeline = pipeline.clone();
    tokio::task::spawn_blocking(move || {
        let wait_all_saw = |version: Option<u64>| {
            wait_until(&format!("every client to see {version:?}"), || {
                seen_for_swaps
                    .iter()
                    .all(|s| s.lock().unwrap().latest == Some(version))
            })
        };
        wait_all_saw(Some(0));
        for version in 1..=20u64 {
            install_stamped_probe(&swap_dir, &swapper_plugins, version);
            wait_all_saw(Some(version));
        }
        std::fs::remove_file(&wasm).unwrap();
        wait_until("removal", || swapper_pipeline.is_empty());
        wait_all_saw(None);
    })
    .await
    .expect("swapper");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    for (c, seen) in seen_all.iter().enumerate() {
        let versions = &seen.lock().unwrap().versions;
        for pair in versions.windows(2) {
            match pair {
                [Some(a), Some(b)] => assert!(a <= b, "client {c}: version went back"),
                [None, Some(_)] => panic!("client {c}: a version after removal"),
                _ => {}
            }
        }
        for v in 0..=20u64 {
            assert!(
                versions.contains(&Some(v)),
                "client {c} never saw version {v}"
            );
        }
    }
    server.shutdown().await;
}
