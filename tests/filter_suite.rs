//! One behavioural suite for the filter plugin, run against its four
//! builds: Rust (`plugins/filter`), Python (`plugins/filter-python`),
//! JavaScript (`plugins/filter-js`) and C (`plugins/filter-c`), each built
//! from source by `camp-artifacts`. Four result lines:
//! `filter_suite::rust`, `::python`, `::javascript`, `::c`.

use camp_server::extension::wasm::{InstanceError, LoadError};
use camp_server::extension::{Extension, Hook, HookSet, Message, Verdict};
use camp_server::session::Session;

use crate::plugin_support::*;

/// The rules every build is tried with: only regular expressions that the
/// four dialects (Rust `regex`, Python `re`, JavaScript, POSIX ERE with
/// `\d`) read alike.
pub const SUITE_TOML: &str = r#"
config = '{"blocked": ["forbidden", "Secret"], "patterns": ["^DROP ", "x{3}$"], "max_size": 64, "redact": [{"pattern": "\\d{4}-\\d{4}", "replacement": "[card]"}, {"pattern": "pass(word)?=[a-z]+"}]}'
"#;

/// Runs `text` through `hook` and returns what came out.
fn text(plugin: &dyn Extension, session: &Session, hook: Hook, text: &str) -> Option<String> {
    match call(plugin, hook, session, Message::Utf8(text.into())) {
        (Ok(Verdict::Pass), Message::Utf8(out)) => Some(out),
        (Ok(Verdict::Drop), _) => None,
        other => panic!("{text:?} through {hook:?}: {other:?}"),
    }
}

/// Runs `len` bytes through `hook`: passed or dropped.
fn binary(plugin: &dyn Extension, session: &Session, hook: Hook, len: usize) -> bool {
    let data = bytes::Bytes::from(vec![7u8; len]);
    match call(plugin, hook, session, Message::Binary(data.clone())) {
        (Ok(Verdict::Pass), Message::Binary(out)) => {
            assert_eq!(out, data, "binary messages are never rewritten");
            true
        }
        (Ok(Verdict::Drop), _) => false,
        other => panic!("{len} bytes through {hook:?}: {other:?}"),
    }
}

/// The messages `session` had dropped, from its store.
fn dropped(session: &Session) -> Option<String> {
    session.get("filter.dropped")
}

/// The suite: the same assertions for every build.
pub fn suite(path: &str) {
    let plugin = load("filter", path, SUITE_TOML);
    let p: &dyn Extension = &*plugin;
    assert_eq!(
        plugin.hooks(),
        HookSet::NONE
            .with(Hook::BeforeSendUtf8)
            .with(Hook::BeforeSendBinary)
            .with(Hook::OnReceiveUtf8)
            .with(Hook::OnReceiveBinary),
        "the declared hooks"
    );
    assert_eq!(plugin.meta().guest_name, "filter");

    let (s1, _o1) = Session::detached(1);
    let (s2, _o2) = Session::detached(2);
    let rx = Hook::OnReceiveUtf8;
    let tx = Hook::BeforeSendUtf8;

    // Pass untouched, in both directions, non-ASCII included.
    assert_eq!(text(p, &s1, rx, "hello"), Some("hello".into()));
    assert_eq!(
        text(p, &s1, tx, "héllo wörld ✓"),
        Some("héllo wörld ✓".into())
    );
    assert_eq!(text(p, &s1, rx, ""), Some(String::new()));
    assert_eq!(dropped(&s1), None, "nothing dropped yet");

    // Blocked words, case-insensitively, both ways; each drop counts.
    assert_eq!(text(p, &s1, rx, "this is FORBIDDEN"), None);
    assert_eq!(dropped(&s1).as_deref(), Some("1"));
    assert_eq!(text(p, &s1, tx, "a secret plan"), None);
    assert_eq!(dropped(&s1).as_deref(), Some("2"));

    // Patterns (anchored), both ways.
    assert_eq!(text(p, &s1, rx, "DROP me"), None);
    assert_eq!(text(p, &s1, rx, "DROPme"), Some("DROPme".into()));
    assert_eq!(text(p, &s1, rx, "say DROP me"), Some("say DROP me".into()));
    assert_eq!(text(p, &s1, tx, "ends in xxx"), None);
    assert_eq!(
        text(p, &s1, tx, "xxx at the start"),
        Some("xxx at the start".into())
    );
    assert_eq!(dropped(&s1).as_deref(), Some("4"));

    // Redaction: every match, several rules, optional group.
    assert_eq!(
        text(p, &s1, rx, "card 1234-5678 and 9999-0000."),
        Some("card [card] and [card].".into())
    );
    assert_eq!(
        text(p, &s1, tx, "login pass=abc then password=xyz"),
        Some("login [redacted] then [redacted]".into())
    );
    assert_eq!(text(p, &s1, rx, "123-5678"), Some("123-5678".into()));

    // Size: UTF-8 counted in bytes, binary in both directions.
    assert_eq!(text(p, &s1, rx, &"a".repeat(64)), Some("a".repeat(64)));
    assert_eq!(text(p, &s1, rx, &"a".repeat(65)), None);
    assert_eq!(
        text(p, &s1, rx, &"é".repeat(33)),
        None,
        "66 bytes, 33 chars"
    );
    assert!(binary(p, &s1, Hook::OnReceiveBinary, 64));
    assert!(!binary(p, &s1, Hook::OnReceiveBinary, 65));
    assert!(!binary(p, &s1, Hook::BeforeSendBinary, 1000));
    assert!(binary(p, &s1, Hook::BeforeSendBinary, 0));
    assert_eq!(dropped(&s1).as_deref(), Some("8"));

    // The counter is per session, kept in the session's own store.
    assert_eq!(dropped(&s2), None);
    assert_eq!(text(p, &s2, rx, "forbidden"), None);
    assert_eq!(dropped(&s2).as_deref(), Some("1"));
    assert_eq!(dropped(&s1).as_deref(), Some("8"));
    // ... and continues from what is there (e.g. another build's count).
    s2.set("filter.dropped", "41");
    assert_eq!(text(p, &s2, tx, "forbidden"), None);
    assert_eq!(dropped(&s2).as_deref(), Some("42"));

    // Configuration: none at all passes everything; a bad one refuses the
    // load with a message naming the problem.
    let open = load("filter", path, "");
    assert_eq!(text(&*open, &s1, rx, "forbidden"), Some("forbidden".into()));
    for (toml, needle) in [
        ("config = '{\"bogus\": 1}'", "bogus"),
        ("config = '{\"patterns\": [\"(\"]}'", "invalid pattern"),
        ("config = 'not json'", "invalid filter config"),
    ] {
        match try_load("filter", path, toml) {
            Err(LoadError::Instance {
                error: InstanceError::Refused(message),
                ..
            }) => assert!(message.contains(needle), "{toml}: {message}"),
            Err(other) => panic!("{toml}: refused the wrong way: {other}"),
            Ok(_) => panic!("{toml}: accepted"),
        }
    }
}

#[test]
fn rust() {
    suite(FILTER);
}

#[test]
fn python() {
    suite(camp_artifacts::FILTER_PYTHON);
}

#[test]
fn javascript() {
    suite(camp_artifacts::FILTER_JS);
}

#[test]
fn c() {
    suite(camp_artifacts::FILTER_C);
}
