//! `token-check`: an example of validating bearer tokens in a WebAssembly
//! plugin (`wit/auth/camp-auth.wit`, world `token-validator`) instead of the
//! server's built-in token list.
//!
//! Configuration (`NAME.toml`):
//!
//! ```toml
//! config = '{"tokens": ["alpha", "beta"], "prefix": "svc-"}'
//! ```
//!
//! A token is accepted if it is one of `tokens` (compared without an early
//! exit, so the time taken does not say how much of a token matched) or, if
//! `prefix` is set, if it starts with `prefix` and the rest is 8 to 64
//! ASCII alphanumerics (a stand-in for a real format check, such as
//! verifying a signed token). The plugin sees the token but imports no log
//! and no I/O: it cannot write it anywhere.

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../../wit/auth/camp-auth.wit",
    world: "token-validator",
});

/// The configuration, set by `init`.
#[derive(Default)]
struct Rules {
    tokens: Vec<Vec<u8>>,
    prefix: Option<String>,
}

thread_local! {
    static RULES: RefCell<Rules> = RefCell::new(Rules::default());
}

/// Equality of two byte strings in time that depends only on their
/// lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct TokenCheck;

impl Guest for TokenCheck {
    fn init(config: String) -> Result<(), String> {
        let value: serde_json::Value = if config.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&config).map_err(|e| format!("config is not JSON: {e}"))?
        };
        let tokens = match value.get("tokens") {
            None => Vec::new(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(|s| s.as_bytes().to_vec())
                        .ok_or_else(|| "tokens must be strings".to_string())
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("tokens must be an array of strings".into()),
        };
        let prefix = match value.get("prefix") {
            None => None,
            Some(serde_json::Value::String(p)) if !p.is_empty() => Some(p.clone()),
            Some(_) => return Err("prefix must be a non-empty string".into()),
        };
        if tokens.is_empty() && prefix.is_none() {
            return Err("nothing would be accepted: set tokens or prefix".into());
        }
        RULES.with(|r| *r.borrow_mut() = Rules { tokens, prefix });
        Ok(())
    }

    fn validate(token: String) -> bool {
        RULES.with(|r| {
            let rules = r.borrow();
            let listed = rules
                .tokens
                .iter()
                .fold(false, |found, t| found | same(t, token.as_bytes()));
            let formed = rules.prefix.as_deref().is_some_and(|p| {
                token.strip_prefix(p).is_some_and(|rest| {
                    (8..=64).contains(&rest.len())
                        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
                })
            });
            listed || formed
        })
    }
}

export!(TokenCheck);
