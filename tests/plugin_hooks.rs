//! Hooks and actions of WebAssembly plugins built by build.rs, at the
//! `Extension`/`Pipeline` level with detached sessions: every hook, every
//! action, ordering and verdict chaining, error hooks, the session API seen
//! from a guest, and the three example plugins (logger, filter, rpc).

use crate::plugin_support::*;
use camp_server::extension::wasm::{InstanceError, LoadError};
use camp_server::extension::{Extension, Hook, HookError, HookSet, Message, Pipeline, Verdict};
use camp_server::session::{Outgoing, Session};
use serde_json::{Value, json};

/// A message of the kind `hook` handles, with payload `text`.
fn message_for(hook: Hook, text: &str) -> Message {
    match hook {
        Hook::BeforeSendUtf8 | Hook::OnReceiveUtf8 => Message::Utf8(text.into()),
        Hook::BeforeSendBinary | Hook::OnReceiveBinary => {
            Message::Binary(text.as_bytes().to_vec().into())
        }
        Hook::BeforeSendError | Hook::OnReceiveError => Message::Error(text.into()),
    }
}

#[test]
fn every_hook_can_pass_replace_and_drop() {
    let (session, _outbox) = Session::detached(1);
    let tagger = probe("tagger", r#"{"tag": "T", "drop_marker": "DROPME"}"#, "");
    let passer = probe("passer", "{}", "");
    assert_eq!(tagger.hooks(), HookSet::ALL);
    for hook in Hook::ALL {
        // replace: the tag is appended, the kind is kept.
        let (result, out) = call(&*tagger, hook, &session, message_for(hook, "hello"));
        assert_eq!(result, Ok(Verdict::Pass), "{hook:?}");
        assert_eq!(out, message_for(hook, "hello|T"), "{hook:?}");
        // drop
        let (result, out) = call(&*tagger, hook, &session, message_for(hook, "DROPME please"));
        assert_eq!(result, Ok(Verdict::Drop), "{hook:?}");
        assert_eq!(out, message_for(hook, "DROPME please"), "{hook:?}");
        // pass unchanged
        let (result, out) = call(&*passer, hook, &session, message_for(hook, "hello"));
        assert_eq!(result, Ok(Verdict::Pass), "{hook:?}");
        assert_eq!(out, message_for(hook, "hello"), "{hook:?}");
    }
}

#[test]
fn only_declared_hooks_are_called() {
    let only_receive = probe(
        "only-receive",
        r#"{"tag": "R", "hooks": ["on-receive-utf8"]}"#,
        "",
    );
    assert_eq!(
        only_receive.hooks(),
        HookSet::NONE.with(Hook::OnReceiveUtf8)
    );
    let pipeline = Pipeline::new();
    pipeline.register(only_receive).unwrap();
    let (session, _outbox) = Session::detached(2);
    let mut inbound = Message::Utf8("in".into());
    let mut outbound = Message::Utf8("out".into());
    assert_eq!(
        block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut inbound)),
        Verdict::Pass
    );
    assert_eq!(
        block_on(pipeline.run(Hook::BeforeSendUtf8, &session, &mut outbound)),
        Verdict::Pass
    );
    assert_eq!(inbound, Message::Utf8("in|R".into()));
    assert_eq!(outbound, Message::Utf8("out".into()));
    let stats = &pipeline.list()[0].stats;
    assert_eq!(stats.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn three_plugins_chain_in_order_and_the_first_drop_stops() {
    let pipeline = Pipeline::new();
    // Registered out of order: the pipeline sorts by `order`.
    pipeline.upsert(probe("c", r#"{"tag": "C"}"#, ""), 3);
    pipeline.upsert(probe("a", r#"{"tag": "A"}"#, ""), 1);
    pipeline.upsert(probe("b", r#"{"tag": "B", "drop_marker": "STOP"}"#, ""), 2);
    let names: Vec<String> = pipeline.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["a", "b", "c"]);

    let (session, _outbox) = Session::detached(3);
    for hook in Hook::ALL {
        let mut msg = message_for(hook, "m");
        assert_eq!(
            block_on(pipeline.run(hook, &session, &mut msg)),
            Verdict::Pass
        );
        assert_eq!(msg, message_for(hook, "m|A|B|C"), "{hook:?}");
    }

    // b drops: a saw the message, c never did.
    let calls = |name: &str| {
        pipeline
            .list()
            .into_iter()
            .find(|i| i.name == name)
            .unwrap()
            .stats
            .calls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = (calls("a"), calls("b"), calls("c"));
    let mut msg = Message::Utf8("STOP".into());
    assert_eq!(
        block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg)),
        Verdict::Drop
    );
    assert_eq!(msg, Message::Utf8("STOP|A".into()), "b saw a's output");
    assert_eq!(
        (calls("a"), calls("b"), calls("c")),
        (before.0 + 1, before.1 + 1, before.2)
    );
}

#[test]
fn error_messages_run_the_error_hooks_in_both_directions() {
    let pipeline = Pipeline::new();
    pipeline
        .register(probe(
            "errors",
            r#"{"tag": "E", "hooks": ["before-send-error", "on-receive-error"]}"#,
            "",
        ))
        .unwrap();
    let (session, _outbox) = Session::detached(4);
    for hook in [Hook::BeforeSendError, Hook::OnReceiveError] {
        let mut msg = Message::Error("bad thing".into());
        assert_eq!(
            block_on(pipeline.run(hook, &session, &mut msg)),
            Verdict::Pass
        );
        assert_eq!(msg, Message::Error("bad thing|E".into()));
    }
    // A UTF-8 message is not an error: untouched.
    let mut msg = Message::Utf8("bad thing".into());
    block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg));
    assert_eq!(msg, Message::Utf8("bad thing".into()));
}

#[test]
fn a_replacement_of_the_wrong_kind_or_size_is_invalid_and_changes_nothing() {
    let plugin = probe("liar", "{}", "");
    let (session, _outbox) = Session::detached(5);
    let (result, out) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("WRONGKIND".into()),
    );
    assert!(
        matches!(result, Err(HookError::Invalid(ref m)) if m.contains("binary")),
        "{result:?}"
    );
    assert_eq!(out, Message::Utf8("WRONGKIND".into()));
    let (result, out) = call(
        &*plugin,
        Hook::BeforeSendError,
        &session,
        Message::Error("OVERSIZE".into()),
    );
    assert!(
        matches!(result, Err(HookError::Invalid(ref m)) if m.contains("limit")),
        "{result:?}"
    );
    assert_eq!(out, Message::Error("OVERSIZE".into()));
    // The instance was fine: it was kept, and the next call works.
    assert_eq!(plugin.discarded_instances(), 0);
    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("ok".into()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
}

#[test]
fn guests_use_the_session_store_send_and_close() {
    let plugin = probe("session-user", "{}", "");
    let (session, mut outbox) = Session::detached(42);

    block_on(plugin.session_opened(&session));
    assert_eq!(session.get("probe.opened").as_deref(), Some("yes"));

    let (result, out) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("SET:colour=blue".into()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
    assert_eq!(out, Message::Utf8("set:colour".into()));
    assert_eq!(session.get("colour").as_deref(), Some("blue"));

    session.set("size", "xl");
    let (_, out) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("GET:size".into()),
    );
    assert_eq!(out, Message::Utf8("got:xl".into()));

    let (_, out) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("WHO".into()),
    );
    assert_eq!(out, Message::Utf8("who:42:-".into()));

    let (_, out) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("NOW".into()),
    );
    let Message::Utf8(now) = out else { panic!() };
    let parts: Vec<&str> = now.split(':').collect();
    let wall: u64 = parts[1].parse().unwrap();
    assert!(
        wall > 1_700_000_000_000,
        "now-ms is Unix milliseconds: {now}"
    );

    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("REPLY".into()),
    );
    assert_eq!(result, Ok(Verdict::Drop));
    assert_eq!(
        outbox.try_recv(),
        Some(Outgoing::Message(Message::Utf8("reply:REPLY".into())))
    );

    let (result, _) = call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("CLOSE".into()),
    );
    assert_eq!(result, Ok(Verdict::Drop));
    assert!(
        matches!(outbox.try_recv(), Some(Outgoing::Close { code: 4000, ref reason }) if reason == "probe closed it")
    );

    block_on(plugin.session_closed(&session));
    assert_eq!(session.get("probe.closed").as_deref(), Some("yes"));
}

#[test]
fn logger_logs_direction_session_kind_and_size_and_changes_nothing() {
    let capture = LogCapture::default();
    let _guard = tracing::subscriber::set_default(capture.subscriber());
    let logger = load("logger", LOGGER, "config = \"info\"");
    assert_eq!(logger.hooks(), HookSet::ALL);
    let (session, _outbox) = Session::detached(77);
    for hook in Hook::ALL {
        let (result, out) = call(&*logger, hook, &session, message_for(hook, "12345"));
        assert_eq!(result, Ok(Verdict::Pass));
        assert_eq!(out, message_for(hook, "12345"));
    }
    let log = capture.text();
    for line in [
        "in session=77 kind=utf8 size=5",
        "in session=77 kind=binary size=5",
        "in session=77 kind=error size=5",
        "out session=77 kind=utf8 size=5",
        "out session=77 kind=binary size=5",
        "out session=77 kind=error size=5",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert!(
        log.contains("plugin=\"logger\"") || log.contains("plugin=logger"),
        "{log}"
    );
    // An unknown level is refused at registration.
    assert!(matches!(
        try_load("logger", LOGGER, "config = \"loud\""),
        Err(LoadError::Instance {
            error: InstanceError::Refused(_),
            ..
        })
    ));
}

/// The filter configuration used by the filter tests.
const FILTER_TOML: &str = r#"
[config]
blocked = ["Forbidden"]
patterns = ['^DROP\b']
max_size = 32
[[config.redact]]
pattern = '\b\d{3}-\d{2}-\d{4}\b'
replacement = "[ssn]"
"#;

#[test]
fn filter_drops_blocked_words_patterns_and_oversize() {
    let filter = load("filter", FILTER, FILTER_TOML);
    let (session, _outbox) = Session::detached(8);
    for hook in [Hook::OnReceiveUtf8, Hook::BeforeSendUtf8] {
        for text in ["this is FORBIDDEN", "DROP table", &"x".repeat(33)] {
            let (result, _) = call(&*filter, hook, &session, Message::Utf8(text.into()));
            assert_eq!(result, Ok(Verdict::Drop), "{hook:?} {text}");
        }
        let (result, out) = call(&*filter, hook, &session, Message::Utf8("fine DROP".into()));
        assert_eq!(
            (result, out),
            (Ok(Verdict::Pass), Message::Utf8("fine DROP".into()))
        );
    }
    let (result, _) = call(
        &*filter,
        Hook::OnReceiveBinary,
        &session,
        Message::Binary(vec![0; 33].into()),
    );
    assert_eq!(result, Ok(Verdict::Drop));
    let (result, _) = call(
        &*filter,
        Hook::OnReceiveBinary,
        &session,
        Message::Binary(vec![0; 32].into()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
    // Error messages are not filtered (not declared).
    assert!(!filter.hooks().contains(Hook::OnReceiveError));
}

#[test]
fn filter_redacts_instead_of_dropping() {
    let filter = load("filter", FILTER, FILTER_TOML);
    let (session, _outbox) = Session::detached(9);
    let (result, out) = call(
        &*filter,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8("ssn 123-45-6789 ok".into()),
    );
    assert_eq!(result, Ok(Verdict::Pass));
    assert_eq!(out, Message::Utf8("ssn [ssn] ok".into()));
}

#[test]
fn filter_refuses_an_invalid_configuration() {
    let err = try_load("filter", FILTER, "[config]\npatterns = ['(unclosed']\n").unwrap_err();
    assert!(
        matches!(&err, LoadError::Instance { error: InstanceError::Refused(m), .. } if m.contains("unclosed")),
        "{err}"
    );
    let err = try_load("filter", FILTER, "[config]\nblocklist = ['x']\n").unwrap_err();
    assert!(err.to_string().contains("blocklist"), "{err}");
}

/// Sends `request` through the rpc plugin; returns the verdict and the
/// answer it queued on the session, if any.
fn rpc_call(
    pipeline: &Pipeline,
    session: &Session,
    outbox: &mut camp_server::session::Outbox,
    request: &str,
) -> (Verdict, Option<Value>) {
    let mut msg = Message::Utf8(request.into());
    let verdict = block_on(pipeline.run(Hook::OnReceiveUtf8, session, &mut msg));
    let answer = match outbox.try_recv() {
        Some(Outgoing::Message(Message::Utf8(text))) => Some(serde_json::from_str(&text).unwrap()),
        None => None,
        other => panic!("unexpected {other:?}"),
    };
    (verdict, answer)
}

#[test]
fn rpc_answers_its_methods_and_consumes_the_request() {
    let pipeline = Pipeline::new();
    pipeline.register(load("rpc", RPC, "")).unwrap();
    let (session, mut outbox) = Session::detached(10);

    let (v, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":["hi",2]}"#,
    );
    assert_eq!(
        (v, a),
        (
            Verdict::Drop,
            Some(json!({"jsonrpc":"2.0","id":1,"result":["hi",2]}))
        )
    );

    let (_, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","id":"x","method":"add","params":[1,2,39]}"#,
    );
    assert_eq!(a, Some(json!({"jsonrpc":"2.0","id":"x","result":42})));
    let (_, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","id":2,"method":"add","params":{"a":1.5,"b":1}}"#,
    );
    assert_eq!(a, Some(json!({"jsonrpc":"2.0","id":2,"result":2.5})));

    let (_, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","id":3,"method":"session.set","params":["k","v"]}"#,
    );
    assert_eq!(a, Some(json!({"jsonrpc":"2.0","id":3,"result":true})));
    assert_eq!(session.get("k").as_deref(), Some("v"));
    let (_, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","id":4,"method":"session.get","params":{"key":"k"}}"#,
    );
    assert_eq!(a, Some(json!({"jsonrpc":"2.0","id":4,"result":"v"})));
    let (_, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","id":5,"method":"session.get","params":["nope"]}"#,
    );
    assert_eq!(a, Some(json!({"jsonrpc":"2.0","id":5,"result":null})));

    // A notification runs but gets no answer; it is still consumed.
    let (v, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","method":"session.set","params":["n","1"]}"#,
    );
    assert_eq!((v, a), (Verdict::Drop, None));
    assert_eq!(session.get("n").as_deref(), Some("1"));
}

#[test]
fn rpc_answers_malformed_requests_for_its_methods_with_errors() {
    let pipeline = Pipeline::new();
    pipeline.register(load("rpc", RPC, "")).unwrap();
    let (session, mut outbox) = Session::detached(11);
    let (v, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","id":7,"method":"add","params":["one"]}"#,
    );
    assert_eq!(v, Verdict::Drop);
    assert_eq!(a.unwrap()["error"]["code"], json!(-32602));
    let (_, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"id":8,"method":"echo"}"#,
    );
    assert_eq!(a.unwrap()["error"]["code"], json!(-32600));
    let (_, a) = rpc_call(
        &pipeline,
        &session,
        &mut outbox,
        r#"{"jsonrpc":"2.0","id":9,"method":"session.set","params":["only-key"]}"#,
    );
    assert_eq!(a.clone().unwrap()["error"]["code"], json!(-32602));
    assert_eq!(a.unwrap()["id"], json!(9));
}

#[test]
fn rpc_lets_everything_else_pass() {
    let pipeline = Pipeline::new();
    pipeline.register(load("rpc", RPC, "")).unwrap();
    let (session, mut outbox) = Session::detached(12);
    for text in [
        "plain chat",
        r#"{"jsonrpc":"2.0","id":1,"method":"other.method"}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"echo"}]"#,
        "{not json",
    ] {
        let mut msg = Message::Utf8(text.into());
        assert_eq!(
            block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg)),
            Verdict::Pass,
            "{text}"
        );
        assert_eq!(msg, Message::Utf8(text.into()));
        assert_eq!(outbox.try_recv(), None);
    }
}

#[test]
fn components_that_do_not_fit_the_world_are_refused() {
    let err = try_load("wrong", WRONG_EXPORTS, "").unwrap_err();
    assert!(matches!(err, LoadError::World { .. }), "{err}");
    // Every missing export is named, not only the first.
    assert!(
        err.to_string().contains(
            "missing exports of the camp:extension/plugin world: name, hooks, on-register"
        ),
        "{err}"
    );
    assert!(err.to_string().contains("on-receive-error"), "{err}");
    // And the world the file targets instead, from its exports.
    assert!(
        err.to_string()
            .contains("the file targets a world of its own, exporting: run"),
        "{err}"
    );
    assert!(err.to_string().contains("wit/camp-extension.wit"), "{err}");
    // A WASI command (a main function) is named as one.
    let command = br#"(component
        (core module $m (func (export "run") (result i32) i32.const 0))
        (core instance $i (instantiate $m))
        (func $run (result (result)) (canon lift (core func $i "run")))
        (instance $e (export "run" (func $run)))
        (export "wasi:cli/run@0.2.0" (instance $e)))"#;
    let err = host()
        .load("command", command, config(""))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::World { message, .. } if message.contains("the file targets wasi:cli/command") && message.contains("missing exports of the camp:extension/plugin world: name, hooks")),
        "{err}"
    );
    let err = host()
        .load("garbage", b"\0asm not really", config(""))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
    // A core module's header followed by junk is not taken for a module.
    let err = host()
        .load("torn", b"\0asm\x01\0\0\0 torn off", config(""))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Compile { message, .. } if message.contains("starts like a core WebAssembly module but is not a valid one")),
        "{err}"
    );
    // Not WebAssembly at all (binary or text): said so, not a parser's
    // complaint about UTF-8.
    for junk in [&b"\x89PNG\r\n\x1a\n"[..], b"hello world", &[0xff; 64]] {
        let err = host()
            .load("junk", junk, config(""))
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(&err, LoadError::Compile { message, .. } if message.contains("not a WebAssembly file")),
            "{err}"
        );
    }
    // A token validator (the other world the server runs) is named as one,
    // with the flag that loads it.
    let validator = br#"(component
        (core module $m (func (export "f") (result i32) i32.const 0))
        (core instance $i (instantiate $m))
        (func $init (result u32) (canon lift (core func $i "f")))
        (func $validate (result u32) (canon lift (core func $i "f")))
        (export "init" (func $init))
        (export "validate" (func $validate)))"#;
    let err = host()
        .load("token", validator, config(""))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::World { message, .. } if message.contains("camp:auth/token-validator") && message.contains("--token-plugin")),
        "{err}"
    );
    // A core module is not a component: the error says how to make one.
    let err = host()
        .load("core", b"\0asm\x01\0\0\0", config(""))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Compile { message, .. } if message.contains("core WebAssembly module, not a component") && message.contains("wasm-tools component new")),
        "{err}"
    );
    // componentize-js's default wasi:http import is named, with the fix.
    let http = br#"(component
        (import "wasi:http/types@0.2.3" (instance (export "fields" (type (sub resource))))))"#;
    let err = host().load("js", http, config("")).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, LoadError::World { message, .. } if message.contains("imports the host does not offer: wasi:http/types@0.2.3") && message.contains("--disable http fetch-event")),
        "{err}"
    );
    // Any other import the host does not offer is named with what the
    // host does offer and how to lose it.
    let nn = br#"(component
        (import "wasi:nn/graph@0.2.0-rc-2024-10-28" (instance (export "graph" (type (sub resource)))))
        (import "acme:kv/store" (instance)))"#;
    let err = host().load("nn", nn, config("")).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, LoadError::World { message, .. }
            if message.contains("imports the host does not offer: wasi:nn/graph@0.2.0-rc-2024-10-28, acme:kv/store")
            && message.contains("granted per plugin by [capabilities] in NAME.toml")
            && message.contains("remove the library or build option that brings the import in")),
        "{err}"
    );
    // on-register refusing is reported as such.
    let err = try_load("refuser", PROBE, "config = '{\"refuse\": \"no thanks\"}'").unwrap_err();
    assert!(err.to_string().contains("no thanks"), "{err}");
}
