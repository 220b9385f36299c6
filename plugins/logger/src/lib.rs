//! `logger`: writes one log line per message through the host's log:
//! direction, session id, kind and size. It never changes a message.
//!
//! Configuration (`logger.toml`, optional): `config = "debug"` (or any
//! level name) sets the level of the per-message lines; default `info`.

use std::cell::Cell;

use camp_plugin::{Action, HookSet, Level, Plugin, Session, log};

/// The plugin type exported as the component.
struct Logger;

thread_local! {
    /// The level of the per-message lines, set by `on-register`.
    static LEVEL: Cell<Level> = const { Cell::new(Level::Info) };
}

/// Logs one message and lets it pass.
fn record(direction: &str, session: &Session, kind: &str, size: usize) -> Action {
    log(
        LEVEL.with(Cell::get),
        &format!(
            "{direction} session={} kind={kind} size={size}",
            session.id()
        ),
    );
    Action::Pass
}

impl Plugin for Logger {
    fn name() -> String {
        "logger".into()
    }

    fn hooks() -> HookSet {
        HookSet::all()
    }

    fn on_register(config: String) -> Result<(), String> {
        let level = match config.trim() {
            "" | "info" => Level::Info,
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "warn" => Level::Warn,
            "error" => Level::Error,
            other => return Err(format!("unknown log level {other:?}")),
        };
        LEVEL.with(|l| l.set(level));
        Ok(())
    }

    fn session_opened(session: &Session) {
        let addr = session.remote_addr().unwrap_or_else(|| "-".into());
        log(
            LEVEL.with(Cell::get),
            &format!("open session={} addr={addr}", session.id()),
        );
    }

    fn session_closed(session: &Session) {
        log(
            LEVEL.with(Cell::get),
            &format!("close session={}", session.id()),
        );
    }

    fn before_send_utf8(session: &Session, text: String) -> Action {
        record("out", session, "utf8", text.len())
    }

    fn before_send_binary(session: &Session, data: Vec<u8>) -> Action {
        record("out", session, "binary", data.len())
    }

    fn before_send_error(session: &Session, text: String) -> Action {
        record("out", session, "error", text.len())
    }

    fn on_receive_utf8(session: &Session, text: String) -> Action {
        record("in", session, "utf8", text.len())
    }

    fn on_receive_binary(session: &Session, data: Vec<u8>) -> Action {
        record("in", session, "binary", data.len())
    }

    fn on_receive_error(session: &Session, text: String) -> Action {
        record("in", session, "error", text.len())
    }
}

camp_plugin::plugin!(Logger);
