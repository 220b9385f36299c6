//! Hostile plugins are contained: an infinite loop is interrupted within its
//! time budget, a memory hog hits its cap, a panic is a trap, each handled
//! by the plugin's failure policy; the broken instance is replaced, repeated
//! failures back off, WASI capabilities are granted only by configuration,
//! and other sessions' traffic goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::plugin_support::*;
use camp_server::extension::{Hook, HookError, Message, Pipeline, Verdict};
use camp_server::session::{Outgoing, Session};

#[test]
fn an_infinite_loop_is_interrupted_within_its_budget() {
    let plugin = probe("looper", "{}", "deadline_ms = 50");
    let (session, _outbox) = Session::detached(1);
    let started = Instant::now();
    let (result, out) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("LOOP".into()),
    );
    let took = started.elapsed();
    assert_eq!(result, Err(HookError::Timeout(Duration::from_millis(50))));
    assert_eq!(
        out,
        Message::Utf8("LOOP".into()),
        "message unchanged on failure"
    );
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    // The instance was discarded; a fresh one serves the next call.
    assert_eq!(plugin.discarded_instances(), 1);
    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("fine".into()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
}

#[test]
fn a_memory_hog_hits_its_cap() {
    let plugin = probe("hog", "{}", "memory_limit_bytes = 8388608");
    let (session, _outbox) = Session::detached(2);
    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("HOG".into()),
    );
    assert_eq!(result, Err(HookError::MemoryLimit(8 << 20)));
    assert_eq!(plugin.discarded_instances(), 1);
    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("fine".into()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
}

#[test]
fn a_panic_is_a_trap() {
    let plugin = probe("panicker", "{}", "");
    let (session, _outbox) = Session::detached(3);
    let (result, _) = call(
        &*plugin,
        Hook::BeforeSendError,
        &session,
        Message::Error("PANIC".into()),
    );
    // The error says what the guest said, not only "unreachable".
    let Err(HookError::Trap(why)) = &result else {
        panic!("{result:?}")
    };
    assert!(
        why.starts_with("the guest panicked: panicked at ")
            && why.contains(".rs:")
            && why.contains(": probe panicked on request (wasm trap: ")
            && why.contains("unreachable")
            && !why.contains("wasm backtrace")
            && !why.contains("RUST_BACKTRACE"),
        "{why}"
    );
    assert_eq!(plugin.discarded_instances(), 1);
}

#[test]
fn the_failure_policy_decides_the_message() {
    let (session, mut outbox) = Session::detached(4);
    for (policy, verdict, closes) in [
        ("fail-closed", Verdict::Drop, false),
        ("fail-open", Verdict::Pass, false),
        ("close-session", Verdict::Drop, true),
    ] {
        let pipeline = Pipeline::new();
        pipeline
            .register(probe(
                "hostile",
                "{}",
                &format!("failure_policy = \"{policy}\""),
            ))
            .unwrap();
        let mut msg = Message::Utf8("PANIC now".into());
        assert_eq!(
            block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg)),
            verdict,
            "{policy}"
        );
        assert_eq!(
            msg,
            Message::Utf8("PANIC now".into()),
            "{policy}: unchanged"
        );
        let closed = matches!(outbox.try_recv(), Some(Outgoing::Close { code: 4002, .. }));
        assert_eq!(closed, closes, "{policy}");
        let stats = &pipeline.list()[0].stats;
        assert_eq!(stats.failure_count(), 1, "{policy}: counted");
        assert!(
            stats
                .last_error
                .lock()
                .unwrap()
                .as_deref()
                .unwrap()
                .contains("on-receive-utf8")
        );
    }
}

#[test]
fn repeated_failures_back_off_then_recover() {
    let plugin = probe("flaky", "{}", "");
    let (session, _outbox) = Session::detached(5);
    for _ in 0..3 {
        let (result, _) = call(
            &*plugin,
            Hook::OnReceiveUtf8,
            &session,
            Message::Utf8("PANIC".into()),
        );
        assert!(matches!(result, Err(HookError::Trap(_))));
    }
    // Backing off: even a good message is refused without calling the guest.
    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("good".into()),
    );
    assert!(
        matches!(result, Err(HookError::Unavailable(_))),
        "{result:?}"
    );
    assert_eq!(plugin.discarded_instances(), 3);
    // After the back-off (100 ms for the first) it serves again.
    std::thread::sleep(Duration::from_millis(150));
    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("good".into()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
}

#[test]
fn wasi_capabilities_are_denied_unless_granted() {
    // SAFETY: no other thread of this test binary reads or writes this variable.
    unsafe { std::env::set_var("CAMP_TEST_SECRET", "hunter2") };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("note.txt"), "from the host").unwrap();
    let (session, _outbox) = Session::detached(6);
    let ask = |plugin: &camp_server::extension::wasm::WasmPlugin, text: &str| {
        let (result, out) = call(
            plugin,
            Hook::OnReceiveUtf8,
            &session,
            Message::Utf8(text.into()),
        );
        assert_eq!(result, Ok(Verdict::Pass));
        match out {
            Message::Utf8(t) => t,
            other => panic!("{other:?}"),
        }
    };

    let denied = probe("denied", "{}", "");
    assert_eq!(ask(&denied, "ENV:CAMP_TEST_SECRET"), "<unset>");
    assert!(ask(&denied, "READ:/etc/hostname").starts_with("<error"));
    assert!(ask(&denied, "READ:/data/note.txt").starts_with("<error"));

    let granted = probe(
        "granted",
        "{}",
        &format!(
            "[capabilities]\nenv = [\"CAMP_TEST_SECRET\"]\n[[capabilities.preopen]]\nhost = \"{}\"\nguest = \"/data\"\n",
            dir.path().display()
        ),
    );
    assert_eq!(ask(&granted, "ENV:CAMP_TEST_SECRET"), "hunter2");
    assert_eq!(ask(&granted, "READ:/data/note.txt"), "from the host");
    // Only what was granted: not the rest of the file system.
    assert!(ask(&granted, "READ:/etc/hostname").starts_with("<error"));
}

#[test]
fn other_sessions_keep_flowing_while_a_plugin_misbehaves() {
    let pipeline = Pipeline::new();
    // The hostile plugin fails open, so its failures (and its back-off)
    // never stop other sessions' messages; the tagger shows they still run
    // through the whole pipeline.
    pipeline.upsert(
        probe(
            "hostile",
            "{}",
            "failure_policy = \"fail-open\"\ndeadline_ms = 20\nmax_instances = 4",
        ),
        1,
    );
    pipeline.upsert(probe("tagger", r#"{"tag": "ok"}"#, ""), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let attacks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attacker = {
        let pipeline = pipeline.clone();
        let stop = stop.clone();
        let attacks = attacks.clone();
        std::thread::spawn(move || {
            let (session, _outbox) = Session::detached(666);
            while !stop.load(Ordering::Relaxed) {
                for bad in ["LOOP", "HOG", "PANIC"] {
                    let mut msg = Message::Utf8(bad.into());
                    block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg));
                    attacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // At least 300 messages, and until the attacker got through a few
    // rounds of its own.
    let (session, _outbox) = Session::detached(7);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while i < 300 || attacks.load(Ordering::Relaxed) < 6 {
        assert!(Instant::now() < deadline, "the attacker made no progress");
        let mut msg = Message::Utf8(format!("msg {i}"));
        assert_eq!(
            block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg)),
            Verdict::Pass
        );
        assert_eq!(msg, Message::Utf8(format!("msg {i}|ok")));
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    attacker
        .join()
        .expect("the attacker thread itself never panics");
    let hostile = pipeline
        .list()
        .into_iter()
        .find(|i| i.name == "hostile")
        .unwrap();
    assert!(hostile.stats.failure_count() > 0);
}

#[test]
fn max_instances_caps_concurrent_calls_and_waiters_get_the_next_free_one() {
    let plugin = probe("single", "{}", "deadline_ms = 300\nmax_instances = 1");
    let busy = {
        let plugin = plugin.clone();
        std::thread::spawn(move || {
            let (session, _outbox) = Session::detached(1);
            call(
                &*plugin,
                Hook::OnReceiveUtf8,
                &session,
                Message::Utf8("LOOP".into()),
            )
            .0
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(plugin.live_instances(), 1);
    // The only instance is looping: this call waits for it to be freed
    // (discarded after its timeout), then runs on a fresh instance.
    let (session, _outbox) = Session::detached(2);
    let started = Instant::now();
    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("next".into()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
    assert!(started.elapsed() >= Duration::from_millis(150), "it waited");
    assert_eq!(
        busy.join().unwrap(),
        Err(HookError::Timeout(Duration::from_millis(300)))
    );
    assert_eq!(plugin.live_instances(), 1, "never more than one instance");
}

#[test]
fn calls_waiting_for_the_only_instance_get_it_first_come_first_served() {
    let plugin = probe("fifo", "{}", "deadline_ms = 300\nmax_instances = 1");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawn_call = |sid: u64, text: &'static str| {
        let (plugin, order) = (plugin.clone(), order.clone());
        std::thread::spawn(move || {
            let (session, _outbox) = Session::detached(sid);
            let (result, _) = call(
                &*plugin,
                Hook::OnReceiveUtf8,
                &session,
                Message::Utf8(text.into()),
            );
            order.lock().unwrap().push(sid);
            result
        })
    };
    // The only instance is busy for 250 ms; then two calls queue for it,
    // one after the other.
    let queued = |n: usize| {
        wait_until("the call waits for the instance", || {
            plugin.waiting_calls() == n
        });
        // Counted just before it takes its place in the queue.
        std::thread::sleep(Duration::from_millis(10));
    };
    let busy = spawn_call(1, "SLEEP:250");
    wait_until("the first call runs", || plugin.live_instances() == 1);
    std::thread::sleep(Duration::from_millis(20));
    let first = spawn_call(2, "SLEEP:100");
    queued(1);
    let second = spawn_call(3, "SLEEP:50");
    queued(2);
    for call in [busy, first, second] {
        assert_eq!(call.join().unwrap(), Ok(Verdict::Pass));
    }
    // The second waiter never overtakes the first, though its call is
    // the shorter one: served in turn, they end 100 ms, then 50 ms after
    // the busy one (served the other way round, the first would end last).
    assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
    assert_eq!(plugin.live_instances(), 1);
}
