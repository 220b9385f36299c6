//! `rpc`: answers JSON-RPC 2.0 requests sent as UTF-8 messages.
//!
//! Methods: `echo` (returns its params), `add` (sums an array of numbers
//! or `{"a":…,"b":…}`), `session.get` (`["key"]` or `{"key":…}` → the
//! session store's value or null) and `session.set` (`["key","value"]` or
//! `{"key":…,"value":…}` → true). A request for one of these methods is
//! answered on the same session with `send-utf8` and consumed (dropped, so
//! the application never sees it); a malformed request for them gets a
//! JSON-RPC error answer. Notifications (no `id`) run without an answer.
//! Anything else (other methods, non-JSON text, batches) passes unchanged.

use camp_plugin::{Action, HookSet, Plugin, Session};
use serde_json::{Map, Value, json};

/// The plugin type exported as the component.
struct Rpc;

/// Methods this plugin owns.
const METHODS: [&str; 4] = ["echo", "add", "session.get", "session.set"];

/// JSON-RPC error code: the request object is not valid.
const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC error code: the method's parameters are not valid.
const INVALID_PARAMS: i64 = -32602;

/// A JSON-RPC error to answer with.
struct RpcError {
    /// The JSON-RPC error code.
    code: i64,
    /// A short description.
    message: String,
}

impl RpcError {
    /// An invalid-params error.
    fn params(message: impl Into<String>) -> RpcError {
        RpcError {
            code: INVALID_PARAMS,
            message: message.into(),
        }
    }
}

/// Reads positional or named parameter `index`/`name` as a string.
fn string_param(params: &Value, index: usize, name: &str) -> Result<String, RpcError> {
    let value = match params {
        Value::Array(items) => items.get(index),
        Value::Object(map) => map.get(name),
        _ => None,
    };
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(RpcError::params(format!(
            "missing string parameter {name:?}"
        ))),
    }
}

/// Runs one of our methods.
fn invoke(session: &Session, method: &str, params: &Value) -> Result<Value, RpcError> {
    match method {
        "echo" => Ok(params.clone()),
        "add" => {
            let numbers: Vec<&Value> = match params {
                Value::Array(items) => items.iter().collect(),
                Value::Object(map) => vec![
                    map.get("a").unwrap_or(&Value::Null),
                    map.get("b").unwrap_or(&Value::Null),
                ],
                _ => return Err(RpcError::params("add takes an array of numbers or {a, b}")),
            };
            let mut int_sum: Option<i64> = Some(0);
            let mut float_sum = 0.0;
            for n in numbers {
                let Value::Number(n) = n else {
                    return Err(RpcError::params("add takes only numbers"));
                };
                int_sum = match (int_sum, n.as_i64()) {
                    (Some(acc), Some(v)) => acc.checked_add(v),
                    _ => None,
                };
                float_sum += n.as_f64().unwrap_or(f64::NAN);
            }
            Ok(int_sum.map_or_else(|| json!(float_sum), |s| json!(s)))
        }
        "session.get" => {
            let key = string_param(params, 0, "key")?;
            Ok(session.get(&key).map_or(Value::Null, Value::String))
        }
        "session.set" => {
            let key = string_param(params, 0, "key")?;
            let value = string_param(params, 1, "value")?;
            session.set(&key, &value);
            Ok(Value::Bool(true))
        }
        _ => unreachable!("invoke is only called for METHODS"),
    }
}

/// Handles a request object that names one of our methods; returns the
/// answer to send, if any.
fn handle(session: &Session, request: &Map<String, Value>, method: &str) -> Option<Value> {
    let id = request.get("id").cloned();
    let id_valid = matches!(
        id,
        None | Some(Value::Null | Value::Number(_) | Value::String(_))
    );
    let result = if request.get("jsonrpc") != Some(&json!("2.0")) || !id_valid {
        Err(RpcError {
            code: INVALID_REQUEST,
            message: "invalid JSON-RPC 2.0 request".into(),
        })
    } else {
        let params = request.get("params").cloned().unwrap_or(Value::Null);
        if !matches!(params, Value::Array(_) | Value::Object(_) | Value::Null) {
            Err(RpcError::params("params must be an array or an object"))
        } else {
            invoke(session, method, &params)
        }
    };
    // A notification (no id) of a valid request gets no answer.
    if id.is_none() && result.is_ok() {
        return None;
    }
    let id = if id_valid {
        id.unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    Some(match result {
        Ok(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}),
        Err(e) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": e.code, "message": e.message},
        }),
    })
}

impl Plugin for Rpc {
    fn name() -> String {
        "rpc".into()
    }

    fn hooks() -> HookSet {
        HookSet::ON_RECEIVE_UTF8
    }

    fn on_receive_utf8(session: &Session, text: String) -> Action {
        // Cheap pre-check: only JSON objects can be ours.
        if !text.trim_start().starts_with('{') {
            return Action::Pass;
        }
        let Ok(Value::Object(request)) = serde_json::from_str::<Value>(&text) else {
            return Action::Pass;
        };
        let Some(method) = request
            .get("method")
            .and_then(Value::as_str)
            .filter(|m| METHODS.contains(m))
            .map(str::to_owned)
        else {
            return Action::Pass;
        };
        if let Some(answer) = handle(session, &request, &method) {
            session.send_utf8(&answer.to_string());
        }
        Action::Drop
    }
}

camp_plugin::plugin!(Rpc);
