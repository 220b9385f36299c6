//! `logger`: writes one log line per message through the host's log:
//! direction, session id, kind and size. It never changes a message.
//!
//! Configuration (`logger.toml`, optional): `config = "debug"` (or any
//! level name) sets the level of the per-message lines; default `info`.
//!
//! When the server's log filter would drop lines of that level
//! (`log_enabled`), the logger declares no hook at all: the host never
//! calls it, nor copies a message into it. `hooks()` runs after
//! `on-register`, so the level is known then; the hooks still check
//! before formatting, in case a host's filter changes while it is loaded.

use std::cell::Cell;

use camp_plugin::{Action, HookSet, Level, Plugin, Session, log, log_enabled};

/// The plugin type exported as the component.
struct Logger;

thread_local! {
    /// The level of the per-message lines, set by `on-register`.
    static LEVEL: Cell<Level> = const { Cell::new(Level::Info) };
}

/// The level of the lines, if the server would write them now.
fn level() -> Option<Level> {
    let level = LEVEL.with(Cell::get);
    log_enabled(level).then_some(level)
}

/// Logs one message and lets it pass.
fn record(direction: &str, session: &Session, kind: &str, size: usize) -> Action {
    if let Some(level) = level() {
        log(
            level,
            &format!(
                "{direction} session={} kind={kind} size={size}",
                session.id()
            ),
        );
    }
    Action::Pass
}

impl Plugin for Logger {
    fn name() -> String {
        "logger".into()
    }

    fn hooks() -> HookSet {
        // Nothing to write, nothing to be called for.
        if level().is_some() {
            HookSet::all()
        } else {
            HookSet::empty()
        }
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
        if let Some(level) = level() {
            let addr = session.remote_addr().unwrap_or_else(|| "-".into());
            log(level, &format!("open session={} addr={addr}", session.id()));
        }
    }

    fn session_closed(session: &Session) {
        if let Some(level) = level() {
            log(level, &format!("close session={}", session.id()));
        }
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
