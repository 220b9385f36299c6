//! `probe`: one configurable test plugin, well-behaved or hostile.
//!
//! Its configuration (JSON, all keys optional) says what it does:
//!
//! - `hooks`: hook names to declare, the session notifications included
//!   (default: all eight);
//! - `tag`: appended as `|tag` to every text message (UTF-8 and error) and
//!   as bytes to binary messages — shows order and chaining;
//! - `stamp`: if true, appends `|` and the 10-digit version stamp compiled
//!   into the binary (tests patch it to make distinct versions);
//! - `drop_marker`: drop messages containing it;
//! - `refuse`: `on-register` fails with this message;
//! - `register_sleep_ms`: `on-register` sleeps this long first (a slow
//!   load);
//! - `trap_always`: if true, every message hook call (all six hooks) panics
//!   with `probe: trap_always`;
//! - `trap_nonempty`: if true, every message hook call whose payload is not
//!   empty panics with `probe: trap_nonempty` — a version that passes the
//!   host's empty-payload trial but fails on real traffic.
//!
//! Markers in a UTF-8/error message trigger behaviours regardless of the
//! config: `LOOP` (spin forever), `HOG` (allocate until memory runs out),
//! `PANIC` (panic = trap), `WRONGKIND` (replace with a payload of another
//! kind), `OVERSIZE` (replace with 1 MiB + 1 bytes), `REPLY` (answer
//! `reply:<text>` on the session and drop), `CLOSE` (close the session),
//! `SET:k=v` / `GET:k` (session store), `ENV:NAME` (replace with the
//! environment variable or `<unset>`), `READ:path` (replace with the file's
//! contents or `<error>`), `NOW` (replace with the clocks), `LOG` (log),
//! `LOGENABLED` (replace with `host.log-enabled`'s answer per level:
//! `trace=0 debug=0 info=1 warn=1 error=1`),
//! `PRINT` (write `probe stdout: <text>` to stdout and `probe stderr:
//! <text>` to stderr, then go on as if no marker matched), `SLEEP:<ms>`
//! (sleep, a WASI monotonic-clock poll, then go on normally), `BURN:<ms>`
//! (busy-loop until `monotonic_ms()` advanced by `<ms>`, then go on
//! normally), `STOREFLOOD` (write 1000 session-store values of 1 MiB, then
//! replace with `flooded`; the host's store limit should trap it first),
//! `SENDFLOOD:<n>` (`send_utf8("flood")` n times, then drop), `SENDBIG`
//! (send one message of 1 MiB + 1 bytes, then drop), `LOGFLOOD:<n>` (log
//! n lines of 100 bytes through `host.log`, then go on normally). `<ms>` and
//! `<n>` are the decimal digits right after the colon; none or too many
//! count as 0.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use camp_plugin::{
    Action, HookSet, Level, Payload, Plugin, Session, log, log_enabled, monotonic_ms, now_ms,
};
use serde::Deserialize;

/// The plugin type exported as the component.
struct Probe;

/// A version stamp that tests patch in the .wasm file (same length) to
/// build distinct versions of this plugin without recompiling.
static STAMP: [u8; 22] = *b"PROBE-STAMP:0000000000";

/// The configuration.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Hooks to declare.
    hooks: Option<Vec<String>>,
    /// Tag to append.
    tag: Option<String>,
    /// Whether to append the version stamp.
    #[serde(default)]
    stamp: bool,
    /// Marker that makes the probe drop a message.
    drop_marker: Option<String>,
    /// Refuse to register with this message.
    refuse: Option<String>,
    /// Sleep this long in `on-register`.
    #[serde(default)]
    register_sleep_ms: u64,
    /// Panic in every message hook call.
    #[serde(default)]
    trap_always: bool,
    /// Panic in every message hook call with a non-empty payload.
    #[serde(default)]
    trap_nonempty: bool,
}

thread_local! {
    /// The configuration, set by `on-register`.
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

/// The version stamp's digits.
fn stamp() -> String {
    let bytes: &[u8; 22] = black_box(&STAMP);
    String::from_utf8_lossy(&bytes[12..]).into_owned()
}

/// Spins forever (until the host interrupts it).
fn spin() -> ! {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Allocates and touches memory until the allocator fails.
fn hog() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        chunk[black_box(4096)] = 1;
        chunks.push(black_box(chunk));
    }
}

/// The number made of the decimal digits at the start of `s`; 0 if there
/// are none or it overflows.
fn leading_number(s: &str) -> u64 {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().unwrap_or(0)
}

/// Busy-loops (never sleeps) until the host's monotonic clock advanced by
/// `ms` milliseconds.
fn burn(ms: u64) {
    let start = monotonic_ms();
    let mut i: u64 = 0;
    while monotonic_ms().saturating_sub(start) < ms {
        for _ in 0..1000 {
            i = black_box(i.wrapping_add(1));
        }
    }
    black_box(i);
}

/// Panics if the configuration says this message hook call must trap.
fn maybe_trap(payload_empty: bool) {
    let (always, nonempty) = CONFIG.with(|c| {
        let c = c.borrow();
        (c.trap_always, c.trap_nonempty)
    });
    if always {
        panic!("probe: trap_always");
    }
    if nonempty && !payload_empty {
        panic!("probe: trap_nonempty");
    }
}

/// The behaviours triggered by markers in text; `None` = go on normally.
fn markers(session: &Session, text: &str, error_kind: bool) -> Option<Action> {
    if text.contains("PRINT") {
        println!("probe stdout: {text}");
        eprintln!("probe stderr: {text}");
    }
    if let Some(rest) = text.strip_prefix("SLEEP:") {
        std::thread::sleep(Duration::from_millis(leading_number(rest)));
    }
    if let Some(rest) = text.strip_prefix("BURN:") {
        burn(leading_number(rest));
    }
    if text.contains("LOOP") {
        spin();
    }
    if text.contains("HOG") {
        hog();
    }
    if text.contains("PANIC") {
        panic!("probe panicked on request");
    }
    if text.contains("WRONGKIND") {
        return Some(Action::Replace(Payload::Binary(b"wrong".to_vec())));
    }
    if text.contains("OVERSIZE") {
        let big = "x".repeat((1 << 20) + 1);
        return Some(Action::Replace(if error_kind {
            Payload::Error(big)
        } else {
            Payload::Utf8(big)
        }));
    }
    if text.contains("REPLY") {
        session.send_utf8(&format!("reply:{text}"));
        return Some(Action::Drop);
    }
    if text.contains("CLOSE") {
        session.close("probe closed it");
        return Some(Action::Drop);
    }
    if text.contains("STOREFLOOD") {
        let value = "v".repeat(1 << 20);
        for i in 0..1000 {
            session.set(&format!("flood{i}"), &value);
        }
        return Some(Action::Replace(if error_kind {
            Payload::Error("flooded".into())
        } else {
            Payload::Utf8("flooded".into())
        }));
    }
    if text.contains("SENDBIG") {
        session.send_utf8(&"x".repeat((1 << 20) + 1));
        return Some(Action::Drop);
    }
    if let Some(rest) = text.strip_prefix("LOGFLOOD:") {
        for _ in 0..leading_number(rest) {
            log(Level::Info, &"l".repeat(100));
        }
    }
    if let Some(rest) = text.strip_prefix("SENDFLOOD:") {
        for _ in 0..leading_number(rest) {
            session.send_utf8("flood");
        }
        return Some(Action::Drop);
    }
    let wrap = |s: String| {
        Some(Action::Replace(if error_kind {
            Payload::Error(s)
        } else {
            Payload::Utf8(s)
        }))
    };
    if let Some(rest) = text.strip_prefix("SET:") {
        let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
        session.set(k, v);
        return wrap(format!("set:{k}"));
    }
    if let Some(k) = text.strip_prefix("GET:") {
        return wrap(format!(
            "got:{}",
            session.get(k).unwrap_or_else(|| "<none>".into())
        ));
    }
    if let Some(name) = text.strip_prefix("ENV:") {
        return wrap(std::env::var(name).unwrap_or_else(|_| "<unset>".into()));
    }
    if let Some(path) = text.strip_prefix("READ:") {
        return wrap(std::fs::read_to_string(path).unwrap_or_else(|e| format!("<error: {e}>")));
    }
    if text == "NOW" {
        return wrap(format!("now:{}:{}", now_ms(), monotonic_ms()));
    }
    if text == "WHO" {
        let addr = session.remote_addr().unwrap_or_else(|| "-".into());
        return wrap(format!("who:{}:{addr}", session.id()));
    }
    if text == "LOG" {
        log(Level::Warn, "probe log line");
    }
    if text == "LOGENABLED" {
        let levels = [
            ("trace", Level::Trace),
            ("debug", Level::Debug),
            ("info", Level::Info),
            ("warn", Level::Warn),
            ("error", Level::Error),
        ];
        let answers: Vec<String> = levels
            .into_iter()
            .map(|(name, level)| format!("{name}={}", u8::from(log_enabled(level))))
            .collect();
        return wrap(answers.join(" "));
    }
    None
}

/// A text hook (UTF-8 or error).
fn text_hook(session: &Session, mut text: String, error_kind: bool) -> Action {
    maybe_trap(text.is_empty());
    if let Some(action) = markers(session, &text, error_kind) {
        return action;
    }
    CONFIG.with(|c| {
        let c = c.borrow();
        if c.drop_marker.as_deref().is_some_and(|m| text.contains(m)) {
            return Action::Drop;
        }
        if c.tag.is_none() && !c.stamp {
            return Action::Pass;
        }
        if let Some(tag) = &c.tag {
            text.push('|');
            text.push_str(tag);
        }
        if c.stamp {
            text.push('|');
            text.push_str(&stamp());
        }
        Action::Replace(if error_kind {
            Payload::Error(text)
        } else {
            Payload::Utf8(text)
        })
    })
}

/// A binary hook.
fn binary_hook(mut data: Vec<u8>) -> Action {
    maybe_trap(data.is_empty());
    CONFIG.with(|c| {
        let c = c.borrow();
        if let Some(m) = &c.drop_marker
            && data.windows(m.len().max(1)).any(|w| w == m.as_bytes())
        {
            return Action::Drop;
        }
        match &c.tag {
            Some(tag) => {
                data.push(b'|');
                data.extend_from_slice(tag.as_bytes());
                Action::Replace(Payload::Binary(data))
            }
            None => Action::Pass,
        }
    })
}

impl Plugin for Probe {
    fn name() -> String {
        "probe".into()
    }

    fn hooks() -> HookSet {
        CONFIG.with(|c| match &c.borrow().hooks {
            None => HookSet::all(),
            Some(names) => names.iter().fold(HookSet::empty(), |set, n| {
                set | match n.as_str() {
                    "before-send-utf8" => HookSet::BEFORE_SEND_UTF8,
                    "before-send-binary" => HookSet::BEFORE_SEND_BINARY,
                    "before-send-error" => HookSet::BEFORE_SEND_ERROR,
                    "on-receive-utf8" => HookSet::ON_RECEIVE_UTF8,
                    "on-receive-binary" => HookSet::ON_RECEIVE_BINARY,
                    "on-receive-error" => HookSet::ON_RECEIVE_ERROR,
                    "session-opened" => HookSet::SESSION_OPENED,
                    "session-closed" => HookSet::SESSION_CLOSED,
                    _ => HookSet::empty(),
                }
            }),
        })
    }

    fn on_register(config: String) -> Result<(), String> {
        let parsed: Config = if config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(&config).map_err(|e| format!("invalid probe config: {e}"))?
        };
        if let Some(reason) = &parsed.refuse {
            return Err(reason.clone());
        }
        if parsed.register_sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(parsed.register_sleep_ms));
        }
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        Ok(())
    }

    fn session_opened(session: &Session) {
        session.set("probe.opened", "yes");
    }

    fn session_closed(session: &Session) {
        session.set("probe.closed", "yes");
    }

    fn before_send_utf8(session: &Session, text: String) -> Action {
        text_hook(session, text, false)
    }

    fn before_send_binary(_session: &Session, data: Vec<u8>) -> Action {
        binary_hook(data)
    }

    fn before_send_error(session: &Session, text: String) -> Action {
        text_hook(session, text, true)
    }

    fn on_receive_utf8(session: &Session, text: String) -> Action {
        text_hook(session, text, false)
    }

    fn on_receive_binary(_session: &Session, data: Vec<u8>) -> Action {
        binary_hook(data)
    }

    fn on_receive_error(session: &Session, text: String) -> Action {
        text_hook(session, text, true)
    }
}

camp_plugin::plugin!(Probe);
