//! No guest can hurt the host, another session or a healthy version, on a
//! real server over real sockets: hooks that print, panic, sleep in WASI or
//! trap on a trigger word are handled by the plugin's policy on the
//! offending session only; an attacker cannot switch a plugin off for a
//! victim; a slow hook delays only its own session; every sandbox bound is
//! hit and named; a broken replacement is refused by its trial or rolled
//! back after its probation.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::common::TestServer;
use crate::plugin_support::*;
use camp_server::extension::wasm::{InstanceError, LoadError};
use camp_server::extension::{Extension, Hook, HookError, Message, Pipeline, Verdict};
use camp_server::server::Server;
use camp_server::session::{Session, SessionEvent, SessionEvents};

/// The table-hog component (hand-written text format).
const TABLE_HOG: &str = camp_artifacts::TABLE_HOG;

/// Everything this test binary logs (one global subscriber: hooks run on
/// the runtime's worker threads).
fn logs() -> &'static LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = LogCapture::default();
        tracing::subscriber::set_global_default(capture.subscriber()).expect("one subscriber");
        capture
    })
}

/// Connects a client with session id `sid`.
async fn connect(server: &TestServer, sid: u64) -> (Session, SessionEvents) {
    server.client(sid).await
}

/// The next text message within `wait`, `None` if none came.
async fn next_within(events: &mut SessionEvents, wait: Duration) -> Option<String> {
    match tokio::time::timeout(wait, events.next_message()).await {
        Ok(Some(Message::Utf8(t))) => Some(t),
        Ok(Some(other)) => panic!("unexpected {other:?}"),
        Ok(None) | Err(_) => None,
    }
}

/// The next text message (10 s at most).
async fn next(events: &mut SessionEvents) -> String {
    next_within(events, Duration::from_secs(10))
        .await
        .expect("a message in time")
}

/// A server whose pipeline is one probe with `json` config and `toml`.
async fn probe_server(json: &str, toml: &str) -> (TestServer, Pipeline) {
    let pipeline = Pipeline::new();
    pipeline.upsert(probe("probe", json, toml), 0);
    let server = TestServer::echo(Server::builder().pipeline(pipeline.clone())).await;
    (server, pipeline)
}

/// Failures of the pipeline's only extension, by kind.
fn failures(pipeline: &Pipeline, kind: &str) -> u64 {
    let stats = pipeline.list()[0].stats.clone();
    let i = camp_server::extension::ExtensionStats::FAILURE_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap();
    stats.failures[i].load(Ordering::Relaxed)
}

/// Waits until the server has exactly `n` sessions open.
async fn sessions_open(server: &TestServer, n: i64) {
    let metrics = server.server.metrics().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.sessions_open.load(Ordering::Relaxed) != n {
        assert!(
            Instant::now() < deadline,
            "camp_sessions_open is {}, expected {n}",
            metrics.sessions_open.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_panicking_sleeping_and_trapping_hooks_meet_their_policy() {
    let log = logs();
    for policy in ["fail-closed", "fail-open", "close-session"] {
        let (server, pipeline) = probe_server(
            r#"{"tag":"p","hooks":["on-receive-utf8"]}"#,
            &format!("failure_policy = \"{policy}\"\ndeadline_ms = 200"),
        )
        .await;
        let (client, mut events) = connect(&server, 10).await;
        // Printing is harmless: the message is processed, the output logged
        // with the plugin and the session.
        client.send_utf8("PRINT hello");
        assert_eq!(next(&mut events).await, "PRINT hello|p", "{policy}");
        for (input, kind) in [
            ("PANIC now", "trap"),
            ("SLEEP:1000", "timeout"),
            ("STOREFLOOD", "limit"),
        ] {
            let (client, mut events) = connect(&server, 20).await;
            let before = failures(&pipeline, kind);
            client.send_utf8(input);
            client.send_utf8("after");
            match policy {
                "fail-closed" => assert_eq!(next(&mut events).await, "after|p", "{policy} {input}"),
                "fail-open" => {
                    assert_eq!(next(&mut events).await, input, "{policy} {input}");
                    assert_eq!(next(&mut events).await, "after|p", "{policy} {input}");
                }
                _ => {
                    // Nothing echoed: the session is closed with 4002.
                    let closed = tokio::time::timeout(Duration::from_secs(5), async {
                        loop {
                            match events.next().await.expect("events until the close") {
                                SessionEvent::Closed(info) => return info,
                                SessionEvent::Message(m) => panic!("{policy} {input}: {m:?}"),
                                _ => {}
                            }
                        }
                    })
                    .await
                    .expect("closed in time");
                    // The server says BYE with the reason (and closes with
                    // 4002); the client reports the BYE.
                    assert_eq!(closed.reason, "extension probe failed", "{policy} {input}");
                }
            }
            assert_eq!(failures(&pipeline, kind), before + 1, "{policy} {input}");
            client.close("done");
            sessions_open(&server, 1).await;
        }
        // The untouched session is still served by the plugin.
        client.send_utf8("still");
        assert_eq!(next(&mut events).await, "still|p", "{policy}");
        client.close("done");
        sessions_open(&server, 0).await;
        server.shutdown().await;
    }
    let text = log.text();
    for needle in [
        "probe stdout: PRINT hello",
        "probe stderr: PRINT hello",
        "probe panicked on request",
        // The SDK's panic hook, through host.log.
        "panic at probe/src/lib.rs",
        "session_store_bytes",
    ] {
        assert!(text.contains(needle), "{needle:?} not logged");
    }
    let line = text
        .lines()
        .find(|l| l.contains("probe stderr: PRINT hello"))
        .unwrap();
    assert!(
        line.contains("session=10") && line.contains("plugin=\"probe\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_failures_later_the_plugin_serves_every_other_session() {
    let (server, pipeline) = probe_server(
        r#"{"tag":"p","hooks":["on-receive-utf8"]}"#,
        "failure_policy = \"fail-closed\"\ndeadline_ms = 100",
    )
    .await;
    let (attacker, mut attacker_events) = connect(&server, 66).await;
    let (victim, mut victim_events) = connect(&server, 7).await;
    for i in 0..100 {
        attacker.send_utf8(match i % 4 {
            0 => "PANIC",
            1 => "PRINT PANIC",
            2 => "SLEEP:300",
            _ => "STOREFLOOD",
        });
    }
    for i in 0..50 {
        victim.send_utf8(format!("v{i}"));
    }
    for i in 0..50 {
        assert_eq!(next(&mut victim_events).await, format!("v{i}|p"));
    }
    // The attacker's own session backed off the plugin; it stays open and
    // is served again once its back-off ends.
    assert!(!attacker.is_closed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        attacker.send_utf8("healthy");
        if let Some(text) = next_within(&mut attacker_events, Duration::from_millis(500)).await {
            assert_eq!(text, "healthy|p");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attacker's back-off never ended"
        );
    }
    let stats = pipeline.list()[0].stats.clone();
    assert!(stats.failure_count() >= 4, "{}", stats.failure_count());
    let metrics = camp_server::admin::render_metrics(&server.server, None);
    assert!(
        metrics.contains(&format!(
            "camp_extension_failures_total{{extension=\"probe\",version=\"{}\",kind=\"trap\"}}",
            &pipeline.list()[0].version
        )),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_cannot_switch_a_plugin_off_for_a_victim() {
    for policy in ["fail-open", "fail-closed"] {
        let (server, _pipeline) = probe_server(
            r#"{"tag":"p","hooks":["on-receive-utf8"]}"#,
            &format!("failure_policy = \"{policy}\""),
        )
        .await;
        let (attacker, _attacker_events) = connect(&server, 66).await;
        let (victim, mut victim_events) = connect(&server, 7).await;
        let trapping = tokio::spawn(async move {
            for _ in 0..75 {
                attacker.send_utf8("PANIC");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        for i in 0..50 {
            victim.send_utf8(format!("v{i}"));
            // Every victim message went through the plugin: not dropped
            // (fail-closed), not bypassed (fail-open).
            assert_eq!(
                next(&mut victim_events).await,
                format!("v{i}|p"),
                "{policy}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        trapping.await.unwrap();
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_delays_only_its_own_session() {
    let (server, _pipeline) = probe_server(
        r#"{"hooks":["on-receive-utf8"]}"#,
        "deadline_ms = 500\nfailure_policy = \"fail-closed\"",
    )
    .await;
    // One session spends 45 ms on each message. Its budget has headroom:
    // the budget counts wall time within a turn, OS preemption included,
    // and a loaded CI machine must not make this test about the budget.
    let (slow, mut slow_events) = connect(&server, 1).await;
    for _ in 0..40 {
        slow.send_utf8("BURN:45");
    }
    let mut victims = Vec::new();
    for sid in 0..20 {
        victims.push(connect(&server, 100 + sid).await);
    }
    let mut tasks = Vec::new();
    for (session, mut events) in victims {
        tasks.push(tokio::spawn(async move {
            let mut rtts = Vec::new();
            for i in 0..20 {
                let sent = Instant::now();
                session.send_utf8(format!("m{i}"));
                assert_eq!(next(&mut events).await, format!("m{i}"));
                rtts.push(sent.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            rtts
        }));
    }
    let mut rtts = Vec::new();
    for task in tasks {
        rtts.extend(task.await.unwrap());
    }
    rtts.sort();
    let p99 = rtts[rtts.len() * 99 / 100];
    eprintln!("p99 echo round trip of 20 sessions beside a 45 ms hook: {p99:?}");
    // Hooks used to run on the workers without yielding: seconds. The
    // figure for the note comes from a release build; this bound only
    // fails if a slow hook holds a worker again.
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
    // The slow session was served in full: its hooks stayed in budget.
    for _ in 0..40 {
        assert_eq!(next(&mut slow_events).await, "BURN:45");
    }
    server.shutdown().await;
}

#[test]
fn every_bound_fails_the_call_and_names_its_key_and_the_session() {
    let (session, mut outbox) = Session::detached(31);
    let probe = probe(
        "bounded",
        "{}",
        "session_store_keys = 8\nsession_store_bytes = 4096\nsends_per_call = 5",
    );
    for (input, key) in [
        ("STOREFLOOD", "session_store_bytes = 4096"),
        ("SENDFLOOD:100000", "sends_per_call = 5"),
    ] {
        let (result, out) = call(
            &*probe,
            Hook::OnReceiveUtf8,
            &session,
            Message::Utf8(input.into()),
        );
        match result {
            Err(HookError::Limit(why)) => assert!(why.contains(key), "{why}"),
            other => panic!("{input}: {other:?}"),
        }
        assert_eq!(out, Message::Utf8(input.into()), "unchanged on failure");
        assert_eq!(outbox.try_recv(), None, "a failed call sends nothing");
    }
    assert!(
        session.get("flood0").is_none(),
        "a value over the bound is not stored"
    );
    // Keys: 8 fit, the ninth does not.
    for i in 0..8 {
        let (result, _) = call(
            &*probe,
            Hook::OnReceiveUtf8,
            &session,
            Message::Utf8(format!("SET:k{i}=v")),
        );
        assert_eq!(result, Ok(Verdict::Pass), "key {i}");
    }
    let (result, _) = call(
        &*probe,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("SET:k8=v".into()),
    );
    assert!(
        matches!(&result, Err(HookError::Limit(why)) if why.contains("session_store_keys = 8") && why.contains("session 31")),
        "{result:?}"
    );

    // A table grown past its cap.
    let hog = host()
        .load(
            "table-hog",
            &std::fs::read(TABLE_HOG).unwrap(),
            config("max_table_elements = 100000"),
        )
        .expect("the table hog passes its trial")
        .0;
    let (result, _) = call(
        &*hog,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("grow".into()),
    );
    assert!(
        matches!(&result, Err(HookError::Limit(why)) if why.contains("max_table_elements = 100000")),
        "{result:?}"
    );
    assert_eq!(hog.discarded_instances(), 1);
}

#[test]
fn output_is_bounded_per_call_and_counted() {
    let probe = probe("chatty", "{}", "output_bytes_per_call = 64");
    let (session, _outbox) = Session::detached(5);
    let long = format!("PRINT {}", "x".repeat(500));
    let (result, _) = call(&*probe, Hook::OnReceiveUtf8, &session, Message::Utf8(long));
    assert_eq!(result, Ok(Verdict::Pass));
    // Both lines were written in full by the guest; 64 bytes were kept.
    assert!(
        probe.output_dropped_bytes() >= 1000 - 64,
        "{}",
        probe.output_dropped_bytes()
    );
}

#[test]
fn a_version_that_traps_on_every_call_is_refused_by_its_trial() {
    let err = try_load("broken", PROBE, "config = '{\"trap_always\":true}'").unwrap_err();
    match err {
        LoadError::Instance {
            error: InstanceError::Trial { call, .. },
            ..
        } => assert!(call.starts_with("before-send") || call.starts_with("on-receive")),
        other => panic!("{other}"),
    }
    // Through a folder: the old version keeps serving, the reason is shown.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("probe.wasm"), bytes(PROBE)).unwrap();
    std::fs::write(dir.join("probe.toml"), "config = '{\"tag\":\"v1\"}'\n").unwrap();
    let pipeline = Pipeline::new();
    let (plugins, report) = host().open_dir(dir, pipeline.clone(), options());
    assert_eq!(report.loaded, ["probe"]);
    std::thread::sleep(Duration::from_millis(100));
    write_by_rename(
        &dir.join("probe.toml"),
        b"config = '{\"trap_always\":true}'\n",
    );
    wait_until("the broken version is refused", || {
        plugins.rescan();
        status(&plugins, "probe").is_some_and(|s| s.load_errors == 1)
    });
    let status = status(&plugins, "probe").unwrap();
    let why = status.last_error.unwrap();
    assert!(why.contains("trial call of"), "{why}");
    let (session, _outbox) = Session::detached(1);
    let mut msg = Message::Utf8("x".into());
    assert_eq!(
        block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg)),
        Verdict::Pass
    );
    assert_eq!(msg, Message::Utf8("x|v1".into()), "the old version serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_on_real_traffic_is_rolled_back_without_losing_a_message() {
    let log = logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("probe.wasm"), bytes(PROBE)).unwrap();
    let toml = |json: &str| format!("config = '{json}'\nfailure_policy = \"fail-open\"\n");
    std::fs::write(
        dir.join("probe.toml"),
        toml(r#"{"tag":"v1","hooks":["on-receive-utf8"]}"#),
    )
    .unwrap();
    let pipeline = Pipeline::new();
    let (plugins, report) = {
        let dir = dir.clone();
        let pipeline = pipeline.clone();
        tokio::task::spawn_blocking(move || host().open_dir(&dir, pipeline, options()))
            .await
            .unwrap()
    };
    assert_eq!(report.loaded, ["probe"]);
    plugins.watch().unwrap();
    let server = TestServer::echo(Server::builder().pipeline(pipeline.clone())).await;
    let mut clients = Vec::new();
    for sid in 0..4 {
        clients.push(connect(&server, 500 + sid).await);
    }
    // A new version that passes its trial (empty payloads) and traps on
    // every real message, replaced during its probation by another such
    // version: the rollback goes back to v1, the last version that passed.
    write_by_rename(
        &dir.join("probe.toml"),
        toml(r#"{"tag":"v2","trap_nonempty":true,"hooks":["on-receive-utf8"]}"#).as_bytes(),
    );
    wait_until("v2 serves", || {
        status(&plugins, "probe").is_some_and(|s| s.loads == 2)
    });
    write_by_rename(
        &dir.join("probe.toml"),
        toml(r#"{"tag":"v3","trap_nonempty":true,"hooks":["on-receive-utf8"]}"#).as_bytes(),
    );
    wait_until("v3 serves", || {
        status(&plugins, "probe").is_some_and(|s| s.loads == 3)
    });
    let plugins = Arc::new(plugins);
    let sent_per_client = 60;
    let mut tasks = Vec::new();
    for (session, mut events) in clients {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..sent_per_client {
                session.send_utf8(format!("m{i}"));
                got.push(next(&mut events).await);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.unwrap());
    }
    // Every message was echoed exactly once, in order: by v1, or unchanged
    // by fail-open while v2 served; after the rollback v1 serves again.
    for got in &all {
        assert_eq!(got.len(), sent_per_client);
        for (i, text) in got.iter().enumerate() {
            assert!(
                *text == format!("m{i}|v1") || *text == format!("m{i}"),
                "{text}"
            );
        }
        assert_eq!(got.last().unwrap(), &format!("m{}|v1", sent_per_client - 1));
    }
    let status = status(&plugins, "probe").unwrap();
    assert_eq!(status.rollbacks, 1, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("rolled back"),
        "{status:?}"
    );
    assert!(log.text().contains("rolled back to"));
    plugins.stop();
    server.shutdown().await;
}

#[test]
fn plugins_are_notified_of_sessions_only_when_they_declare_it() {
    let quiet = probe("quiet", r#"{"hooks":["on-receive-utf8"]}"#, "");
    let (session, _outbox) = Session::detached(41);
    block_on(quiet.session_opened(&session));
    block_on(quiet.session_closed(&session));
    assert_eq!(
        session.get("probe.opened"),
        None,
        "not declared, not called"
    );
    assert_eq!(session.get("probe.closed"), None);
    assert!(!quiet.meta().session_opened && !quiet.meta().session_closed);
    assert_eq!(quiet.meta().wit_version, "0.2.1");

    let listening = probe(
        "listening",
        r#"{"hooks":["on-receive-utf8","session-opened"]}"#,
        "",
    );
    block_on(listening.session_opened(&session));
    block_on(listening.session_closed(&session));
    assert_eq!(session.get("probe.opened").as_deref(), Some("yes"));
    assert_eq!(session.get("probe.closed"), None, "only what it declared");

    // A plugin built against camp:extension@0.1.0 still loads; it cannot
    // declare notifications, so it gets both, as it always did.
    let old = host()
        .load("table-hog", &std::fs::read(TABLE_HOG).unwrap(), config(""))
        .expect("a 0.1.0 plugin loads")
        .0;
    assert_eq!(old.meta().wit_version, "0.1.0");
    assert!(old.meta().session_opened && old.meta().session_closed);
    let (result, _) = call(
        &*old,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8(String::new()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_instances_wait_their_turn_instead_of_failing() {
    let plugin = probe(
        "narrow",
        r#"{"hooks":["on-receive-utf8"]}"#,
        "max_instances = 2\ndeadline_ms = 1000",
    );
    let mut calls = Vec::new();
    for sid in 0..6u64 {
        let plugin = plugin.clone();
        calls.push(tokio::spawn(async move {
            let (session, _outbox) = Session::detached(sid);
            let mut msg = Message::Utf8("SLEEP:100".into());
            plugin.call(Hook::OnReceiveUtf8, &session, &mut msg).await
        }));
    }
    let mut peak = 0;
    while !calls.iter().all(|c| c.is_finished()) {
        peak = peak.max(plugin.live_instances());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(Verdict::Pass));
    }
    assert!(peak <= 2, "{peak} instances alive");
    assert_eq!(plugin.live_instances(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_by_a_plugin_cannot_send_in_turn() {
    // REPLY makes the probe send `reply:<text>` from any text hook, the
    // outgoing ones included: unchecked, every reply would send another.
    let (server, pipeline) = probe_server("{}", "failure_policy = \"fail-open\"").await;
    let (client, mut events) = connect(&server, 3).await;
    client.send_utf8("REPLY once");
    assert_eq!(next(&mut events).await, "reply:REPLY once");
    assert_eq!(
        next_within(&mut events, Duration::from_millis(500)).await,
        None,
        "exactly one reply"
    );
    assert_eq!(failures(&pipeline, "limit"), 1);
    let stats = pipeline.list()[0].stats.clone();
    let why = stats.last_error.lock().unwrap().clone().unwrap();
    assert!(why.contains("cannot send further messages"), "{why}");
    server.shutdown().await;
}

#[test]
fn sends_over_the_payload_limit_and_log_floods_are_bounded() {
    let probe = probe("loud", "{}", "output_bytes_per_call = 1000");
    let (session, mut outbox) = Session::detached(9);
    let (result, _) = call(
        &*probe,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("SENDBIG".into()),
    );
    assert!(
        matches!(&result, Err(HookError::Limit(why)) if why.contains("payload limit")),
        "{result:?}"
    );
    assert_eq!(outbox.try_recv(), None);
    // 100 lines of 100 bytes through host.log: 10 fit in the 1,000 bytes.
    let flood = || {
        call(
            &*probe,
            Hook::OnReceiveUtf8,
            &session,
            Message::Utf8("LOGFLOOD:100".into()),
        )
        .0
    };
    let capture = LogCapture::default();
    let result = tracing::subscriber::with_default(capture.subscriber(), flood);
    assert_eq!(result, Ok(Verdict::Pass));
    assert_eq!(probe.output_dropped_bytes(), 90 * 100);
    assert_eq!(capture.text().matches(&"l".repeat(100)).count(), 10);
    // With the level off (a log filter at warn) the host does nothing with
    // the lines: none is counted against the budget.
    let warn_only = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::sink)
        .finish();
    let result = tracing::subscriber::with_default(warn_only, flood);
    assert_eq!(result, Ok(Verdict::Pass));
    assert_eq!(probe.output_dropped_bytes(), 90 * 100);
}

#[test]
fn a_slow_load_does_not_hold_up_the_admin_view() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("probe.wasm"), bytes(PROBE)).unwrap();
    let pipeline = Pipeline::new();
    let (plugins, _) = host().open_dir(dir, pipeline, options());
    let plugins = Arc::new(plugins);
    std::thread::sleep(Duration::from_millis(100));
    write_by_rename(
        &dir.join("probe.toml"),
        b"config = '{\"register_sleep_ms\":900}'\n",
    );
    let loading = {
        let plugins = plugins.clone();
        std::thread::spawn(move || {
            wait_until("the slow version loads", || {
                plugins.rescan();
                status(&plugins, "probe").is_some_and(|s| s.loads == 2)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let listed = plugins.status();
    assert_eq!(listed.len(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "status waited {:?} for a load",
        started.elapsed()
    );
    loading.join().unwrap();
}
