//! `filter`: drops or rewrites messages by rules from its configuration.
//!
//! Configuration (`filter.toml`), a `[config]` table (the host hands it to
//! the plugin as JSON):
//!
//! ```toml
//! [config]
//! blocked = ["forbidden", "secret"]      # case-insensitive substrings: drop
//! patterns = ['^DROP\b', '\d{16}']       # regular expressions: drop
//! max_size = 65536                       # bytes; larger UTF-8/binary: drop
//! [[config.redact]]                      # rewrite instead of dropping
//! pattern = '\b\d{3}-\d{2}-\d{4}\b'
//! replacement = "[redacted]"
//! ```
//!
//! Text rules apply to UTF-8 messages in both directions; `max_size` also
//! applies to binary messages. Error messages are not filtered. Each drop
//! counts in the session's store under `filter.dropped` (the store lives in
//! the host, so the count survives reloads and replacement by the same
//! plugin in another language: `plugins/filter-python`, `filter-js`,
//! `filter-c`).

use std::cell::RefCell;

use camp_plugin::{Action, HookSet, Level, Payload, Plugin, Session, log, log_enabled};
use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// The plugin type exported as the component.
struct Filter;

/// The configuration as written by the operator.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Substrings (case-insensitive) that make a message be dropped.
    #[serde(default)]
    blocked: Vec<String>,
    /// Regular expressions that make a message be dropped.
    #[serde(default)]
    patterns: Vec<String>,
    /// Largest payload in bytes that passes.
    max_size: Option<usize>,
    /// Rewrites applied to messages that pass the other rules.
    #[serde(default)]
    redact: Vec<RedactRule>,
}

/// One redaction rule: every match of `pattern` becomes `replacement`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactRule {
    /// A regular expression.
    pattern: String,
    /// Its replacement (`$1` etc. refer to capture groups).
    #[serde(default = "default_replacement")]
    replacement: String,
}

/// What a redaction writes when the rule does not say.
fn default_replacement() -> String {
    "[redacted]".into()
}

/// The compiled rules.
struct Rules {
    /// Lower-cased blocked substrings.
    blocked: Vec<String>,
    /// Compiled drop patterns.
    patterns: Vec<Regex>,
    /// Size limit.
    max_size: Option<usize>,
    /// Compiled redactions.
    redact: Vec<(Regex, String)>,
}

thread_local! {
    /// The rules, set by `on-register`.
    static RULES: RefCell<Option<Rules>> = const { RefCell::new(None) };
}

/// Compiles a regular expression, naming it in the error.
fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid pattern {pattern:?}: {e}"))
}

impl Rules {
    /// Parses and compiles the configuration.
    fn parse(config: &str) -> Result<Rules, String> {
        let config: Config = if config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(config).map_err(|e| format!("invalid filter config: {e}"))?
        };
        Ok(Rules {
            blocked: config.blocked.iter().map(|w| w.to_lowercase()).collect(),
            patterns: config
                .patterns
                .iter()
                .map(|p| compile(p))
                .collect::<Result<_, _>>()?,
            max_size: config.max_size,
            redact: config
                .redact
                .into_iter()
                .map(|r| Ok((compile(&r.pattern)?, r.replacement)))
                .collect::<Result<_, String>>()?,
        })
    }

    /// The action for a text message.
    fn text(&self, session: &Session, text: String) -> Action {
        if self.max_size.is_some_and(|max| text.len() > max) {
            return dropped(session, "too large");
        }
        let lower = text.to_lowercase();
        if self.blocked.iter().any(|w| lower.contains(w.as_str())) {
            return dropped(session, "blocked word");
        }
        if self.patterns.iter().any(|p| p.is_match(&text)) {
            return dropped(session, "blocked pattern");
        }
        let mut out = std::borrow::Cow::Borrowed(text.as_str());
        for (pattern, replacement) in &self.redact {
            if let std::borrow::Cow::Owned(s) = pattern.replace_all(&out, replacement.as_str()) {
                out = std::borrow::Cow::Owned(s);
            }
        }
        match out {
            std::borrow::Cow::Borrowed(_) => Action::Pass,
            std::borrow::Cow::Owned(s) => Action::Replace(Payload::Utf8(s)),
        }
    }

    /// The action for a binary message.
    fn binary(&self, session: &Session, data: &[u8]) -> Action {
        if self.max_size.is_some_and(|max| data.len() > max) {
            return dropped(session, "too large");
        }
        Action::Pass
    }
}

/// The session-store key counting the messages dropped in a session.
const DROPPED: &str = "filter.dropped";

/// Counts and logs a drop and returns the action.
fn dropped(session: &Session, why: &str) -> Action {
    let count = session
        .get(DROPPED)
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    session.set(DROPPED, &(count + 1).to_string());
    // Formatted only if the server writes debug lines.
    if log_enabled(Level::Debug) {
        log(
            Level::Debug,
            &format!("dropped a message of session {}: {why}", session.id()),
        );
    }
    Action::Drop
}

/// Runs `f` with the rules (passing everything before `on-register`).
fn with_rules(f: impl FnOnce(&Rules) -> Action) -> Action {
    RULES.with(|r| r.borrow().as_ref().map_or(Action::Pass, f))
}

impl Plugin for Filter {
    fn name() -> String {
        "filter".into()
    }

    fn hooks() -> HookSet {
        HookSet::BEFORE_SEND_UTF8
            | HookSet::BEFORE_SEND_BINARY
            | HookSet::ON_RECEIVE_UTF8
            | HookSet::ON_RECEIVE_BINARY
    }

    fn on_register(config: String) -> Result<(), String> {
        let rules = Rules::parse(&config)?;
        RULES.with(|r| *r.borrow_mut() = Some(rules));
        Ok(())
    }

    fn before_send_utf8(session: &Session, text: String) -> Action {
        with_rules(|r| r.text(session, text))
    }

    fn before_send_binary(session: &Session, data: Vec<u8>) -> Action {
        with_rules(|r| r.binary(session, &data))
    }

    fn on_receive_utf8(session: &Session, text: String) -> Action {
        with_rules(|r| r.text(session, text))
    }

    fn on_receive_binary(session: &Session, data: Vec<u8>) -> Action {
        with_rules(|r| r.binary(session, &data))
    }
}

camp_plugin::plugin!(Filter);
