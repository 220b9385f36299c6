//! `built-against-0-2-0`: a plugin generated from the frozen
//! `wit/0.2.0/camp-extension.wit`, so it imports
//! `camp:extension/host@0.2.0` (without `log-enabled`). It proves that a
//! plugin built before 0.2.1 keeps loading and running on the current host
//! (the WIT's compatibility rule): its host imports resolve to the 0.2.1
//! definitions by semver.
//!
//! It declares `on-receive-utf8` and `session-opened` (a 0.2.0 flag).
//! `on-receive-utf8` uses every 0.2.0 host function: it logs the text at
//! info, counts the message in the session store under `v020.seen`, and
//! replaces a non-empty text with `TEXT|0.2.0 sid=ID seen=N clocks=ok`
//! (`clocks=ok` when both clocks answered); an empty one passes.
//! `session-opened` stores `v020.opened = yes`.

wit_bindgen::generate!({
    world: "plugin",
    path: "../../../wit/0.2.0",
});

// `Session`, `HookSet` and `Action` come from the world (its `use`s).
use camp::extension::host::{log, monotonic_ms, now_ms};
use camp::extension::types::{Level, Payload};

/// The exported type.
struct Old;

impl Guest for Old {
    fn name() -> String {
        "built-against-0-2-0".into()
    }

    fn hooks() -> HookSet {
        HookSet::ON_RECEIVE_UTF8 | HookSet::SESSION_OPENED
    }

    fn on_register(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_unregister() {}

    fn session_opened(session: &Session) {
        session.set("v020.opened", "yes");
    }

    fn session_closed(_session: &Session) {}

    fn before_send_utf8(_session: &Session, _text: String) -> Action {
        Action::Pass
    }

    fn before_send_binary(_session: &Session, _data: Vec<u8>) -> Action {
        Action::Pass
    }

    fn before_send_error(_session: &Session, _text: String) -> Action {
        Action::Pass
    }

    fn on_receive_utf8(session: &Session, text: String) -> Action {
        if text.is_empty() {
            return Action::Pass;
        }
        log(Level::Info, &format!("0.2.0 guest got {text:?}"));
        let seen = session
            .get("v020.seen")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        session.set("v020.seen", &seen.to_string());
        let clocks = if now_ms() > 0 && monotonic_ms() < u64::MAX {
            "ok"
        } else {
            "broken"
        };
        Action::Replace(Payload::Utf8(format!(
            "{text}|0.2.0 sid={} seen={seen} clocks={clocks}",
            session.id()
        )))
    }

    fn on_receive_binary(_session: &Session, _data: Vec<u8>) -> Action {
        Action::Pass
    }

    fn on_receive_error(_session: &Session, _text: String) -> Action {
        Action::Pass
    }
}

export!(Old);
