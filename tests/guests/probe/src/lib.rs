//! `probe`: one configurable test plugin, well-behaved or hostile.
//!
//! Its configuration (JSON, all keys optional) says what it does:
//!
//! - `hooks`: hook names to declare (default: all six);
//! - `tag`: appended as `|tag` to every text message (UTF-8 and error) and
//!   as bytes to binary messages — shows order and chaining;
//! - `stamp`: if true, appends `|` and the 10-digit version stamp compiled
//!   into the binary (tests patch it to make distinct versions);
//! - `drop_marker`: drop messages containing it;
//! - `refuse`: `on-register` fails with this message.
//!
//! Markers in a UTF-8/error message trigger behaviours regardless of the
//! config: `LOOP` (spin forever), `HOG` (allocate until memory runs out),
//! `PANIC` (panic = trap), `WRONGKIND` (replace with a payload of another
//! kind), `OVERSIZE` (replace with 1 MiB + 1 bytes), `REPLY` (answer
//! `reply:<text>` on the session and drop), `CLOSE` (close the session),
//! `SET:k=v` / `GET:k` (session store), `ENV:NAME` (replace with the
//! environment variable or `<unset>`), `READ:path` (replace with the file's
//! contents or `<error>`), `NOW` (replace with the clocks), `LOG` (log).

use std::cell::RefCell;
use std::hint::black_box;

use camp_plugin::{Action, HookSet, Level, Payload, Plugin, Session, log, monotonic_ms, now_ms};
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

/// The behaviours triggered by markers in text; `None` = go on normally.
fn markers(session: &Session, text: &str, error_kind: bool) -> Option<Action> {
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
    None
}

/// A text hook (UTF-8 or error).
fn text_hook(session: &Session, mut text: String, error_kind: bool) -> Action {
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
