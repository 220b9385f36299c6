//! Per-plugin configuration: the optional `NAME.toml` beside `NAME.wasm`.
//!
//! ```toml
//! order = 20                      # pipeline position (ascending, then name)
//! failure_policy = "fail-closed"  # or "fail-open", "close-session"
//! deadline_ms = 50                # time budget per hook call (see below)
//! memory_limit_bytes = 67108864   # linear-memory cap per instance
//! max_table_elements = 200000     # cap on each table of an instance
//! max_instances = 16              # concurrent instances (one per call)
//! session_store_keys = 64         # keys a session's store may hold after a plugin's set
//! session_store_bytes = 65536     # bytes (keys + values) likewise
//! sends_per_call = 16             # session.send-* calls per hook call
//! output_bytes_per_call = 16384   # guest stdout+stderr kept per call
//! config = "…"                    # passed to on-register; a table → JSON
//!
//! [capabilities]                  # WASI access; nothing by default
//! env = ["LANG"]                  # environment variables passed through
//! inherit_stdio = false           # let the plugin print to the server's stdio
//! [[capabilities.preopen]]        # directories the plugin may open
//! host = "data"                   # relative to the plugin folder
//! guest = "/data"
//! read_only = true
//! ```

//!
//! The budget `deadline_ms` counts the time the guest runs (in 1 ms epoch
//! ticks) plus the time it waits inside WASI (sleep, poll); time spent
//! waiting for a worker thread is not counted (`budget` module). Each
//! bound, when a guest hits it, fails the call (the failure policy
//! applies) with an error naming the key; a table or memory growth past
//! its cap is refused to the guest first, which usually traps.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::extension::FailurePolicy;

/// Why a plugin's configuration file was refused. The message names the
/// file and the offending key so an operator can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// The file is not valid TOML, has an unknown key or a value of the
    /// wrong type (the TOML error names the key and position).
    #[error("{file}: {message}")]
    Parse {
        /// The configuration file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key has a value outside its allowed range.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The limits and settings of one plugin, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginConfig {
    /// Pipeline sort key: plugins run by ascending order, then by name.
    pub order: i64,
    /// What the pipeline does when a hook call fails.
    pub failure_policy: FailurePolicy,
    /// Time budget of one hook call in milliseconds: guest running time
    /// plus time waiting in WASI (not time waiting for a thread).
    pub deadline_ms: u64,
    /// Linear-memory cap of one instance in bytes.
    pub memory_limit_bytes: usize,
    /// Elements each table of an instance may hold.
    pub max_table_elements: usize,
    /// How many instances may run at once (one per concurrent call).
    pub max_instances: usize,
    /// Keys a session's store may hold after a `set` by this plugin.
    pub session_store_keys: usize,
    /// Bytes of keys and values a session's store may hold after a `set` by
    /// this plugin.
    pub session_store_bytes: usize,
    /// `session.send-*` calls one hook call may make.
    pub sends_per_call: u32,
    /// Bytes of stdout and stderr kept per call (the rest is counted and
    /// dropped).
    pub output_bytes_per_call: usize,
    /// The value handed to `on-register`.
    pub config: String,
    /// WASI capabilities granted to the plugin.
    pub capabilities: Capabilities,
}

impl Default for PluginConfig {
    fn default() -> PluginConfig {
        PluginConfig {
            order: 0,
            failure_policy: FailurePolicy::FailClosed,
            // The budget is wall-clock time, so it also counts time the
            // thread spends descheduled. At 10 ms a busy two-core machine
            // made healthy hooks overrun and a fail-closed filter drop
            // messages (BENCHMARKS.md); 50 ms still stops a runaway loop
            // quickly without punishing a loaded host.
            deadline_ms: 50,
            memory_limit_bytes: 64 << 20,
            // Rust and C guests use a few hundred elements; 200,000
            // elements are 1.6 MB per table.
            max_table_elements: 200_000,
            max_instances: 16,
            session_store_keys: 64,
            session_store_bytes: 64 << 10,
            sends_per_call: 16,
            output_bytes_per_call: 16 << 10,
            config: String::new(),
            capabilities: Capabilities::default(),
        }
    }
}

/// WASI capabilities a plugin's configuration grants. Without any, the
/// plugin's WASI context is empty: no environment, no files, no sockets,
/// stdio discarded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Names of environment variables copied from the server's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Whether the plugin's stdout/stderr go to the server's.
    #[serde(default)]
    pub inherit_stdio: bool,
    /// Host directories the plugin may open.
    #[serde(default)]
    pub preopen: Vec<Preopen>,
}

/// A host directory made visible to the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preopen {
    /// The directory on the host; relative paths are relative to the plugin
    /// folder.
    pub host: PathBuf,
    /// The path the plugin sees.
    pub guest: String,
    /// Whether the plugin may only read.
    #[serde(default = "yes")]
    pub read_only: bool,
}

/// `true`, as a serde default.
fn yes() -> bool {
    true
}

/// The file as written: every key optional, unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    order: Option<i64>,
    failure_policy: Option<FailurePolicy>,
    deadline_ms: Option<u64>,
    memory_limit_bytes: Option<u64>,
    max_table_elements: Option<u64>,
    max_instances: Option<u64>,
    session_store_keys: Option<u64>,
    session_store_bytes: Option<u64>,
    sends_per_call: Option<u64>,
    output_bytes_per_call: Option<u64>,
    config: Option<toml::Value>,
    #[serde(default)]
    capabilities: Capabilities,
}

/// Largest accepted `deadline_ms` (a minute).
const MAX_DEADLINE_MS: u64 = 60_000;
/// Smallest accepted `memory_limit_bytes` (1 MiB: a component needs some).
const MIN_MEMORY: u64 = 1 << 20;
/// Largest accepted `memory_limit_bytes` (4 GiB, the wasm32 limit).
const MAX_MEMORY: u64 = 4 << 30;
/// Largest accepted `max_instances`.
const MAX_INSTANCES: u64 = 1024;

impl PluginConfig {
    /// Parses a configuration file's text; keys it does not set keep the
    /// values of `defaults`. `file` is used in error messages and to resolve
    /// relative preopen paths.
    pub fn parse(
        text: &str,
        file: &Path,
        defaults: &PluginConfig,
    ) -> Result<PluginConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            message,
        };
        let mut cfg = defaults.clone();
        if let Some(order) = raw.order {
            cfg.order = order;
        }
        if let Some(policy) = raw.failure_policy {
            cfg.failure_policy = policy;
        }
        if let Some(ms) = raw.deadline_ms {
            if ms == 0 || ms > MAX_DEADLINE_MS {
                return Err(invalid(
                    "deadline_ms",
                    format!("must be 1..={MAX_DEADLINE_MS}, got {ms}"),
                ));
            }
            cfg.deadline_ms = ms;
        }
        if let Some(bytes) = raw.memory_limit_bytes {
            if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
                return Err(invalid(
                    "memory_limit_bytes",
                    format!("must be {MIN_MEMORY}..={MAX_MEMORY}, got {bytes}"),
                ));
            }
            cfg.memory_limit_bytes = bytes as usize;
        }
        if let Some(n) = raw.max_instances {
            if n == 0 || n > MAX_INSTANCES {
                return Err(invalid(
                    "max_instances",
                    format!("must be 1..={MAX_INSTANCES}, got {n}"),
                ));
            }
            cfg.max_instances = n as usize;
        }
        let ranged =
            |key: &'static str, value: Option<u64>, range: std::ops::RangeInclusive<u64>| {
                match value {
                    Some(v) if !range.contains(&v) => Err(invalid(
                        key,
                        format!("must be {}..={}, got {v}", range.start(), range.end()),
                    )),
                    other => Ok(other),
                }
            };
        if let Some(n) = ranged(
            "max_table_elements",
            raw.max_table_elements,
            1_000..=10_000_000,
        )? {
            cfg.max_table_elements = n as usize;
        }
        if let Some(n) = ranged("session_store_keys", raw.session_store_keys, 0..=1_000_000)? {
            cfg.session_store_keys = n as usize;
        }
        if let Some(n) = ranged(
            "session_store_bytes",
            raw.session_store_bytes,
            0..=(1 << 30),
        )? {
            cfg.session_store_bytes = n as usize;
        }
        if let Some(n) = ranged("sends_per_call", raw.sends_per_call, 0..=1_000_000)? {
            cfg.sends_per_call = n as u32;
        }
        if let Some(n) = ranged(
            "output_bytes_per_call",
            raw.output_bytes_per_call,
            0..=(16 << 20),
        )? {
            cfg.output_bytes_per_call = n as usize;
        }
        if let Some(value) = raw.config {
            cfg.config = match value {
                toml::Value::String(s) => s,
                other => serde_json::to_string(&other)
                    .map_err(|e| invalid("config", format!("cannot convert to JSON: {e}")))?,
            };
        }
        let base = file.parent().unwrap_or(Path::new("."));
        for name in &raw.capabilities.env {
            if name.is_empty() || name.contains('=') {
                return Err(invalid(
                    "capabilities.env",
                    format!("{name:?} is not a variable name"),
                ));
            }
        }
        cfg.capabilities = raw.capabilities;
        for preopen in &mut cfg.capabilities.preopen {
            if preopen.host.is_relative() {
                preopen.host = base.join(&preopen.host);
            }
            if !preopen.host.is_dir() {
                return Err(invalid(
                    "capabilities.preopen",
                    format!("{} is not a directory", preopen.host.display()),
                ));
            }
        }
        Ok(cfg)
    }

    /// Reads the configuration file `file` if it exists (`defaults`
    /// otherwise).
    pub fn load(file: &Path, defaults: &PluginConfig) -> Result<PluginConfig, ConfigError> {
        match std::fs::read_to_string(file) {
            Ok(text) => PluginConfig::parse(&text, file, defaults),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(defaults.clone()),
            Err(e) => Err(ConfigError::Read {
                file: file.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// The per-call time budget.
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PluginConfig, ConfigError> {
        PluginConfig::parse(
            text,
            Path::new("/plugins/demo.toml"),
            &PluginConfig::default(),
        )
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), PluginConfig::default());
    }

    #[test]
    fn every_key_is_read() {
        let cfg = parse(
            r#"
            order = -5
            failure_policy = "close-session"
            deadline_ms = 3
            memory_limit_bytes = 2097152
            max_instances = 2
            config = "hello"
            [capabilities]
            env = ["HOME"]
            inherit_stdio = true
            "#,
        )
        .unwrap();
        assert_eq!(cfg.order, -5);
        assert_eq!(cfg.failure_policy, FailurePolicy::CloseSession);
        assert_eq!(cfg.deadline_ms, 3);
        assert_eq!(cfg.memory_limit_bytes, 2 << 20);
        assert_eq!(cfg.max_instances, 2);
        assert_eq!(cfg.config, "hello");
        assert_eq!(cfg.capabilities.env, vec!["HOME".to_string()]);
        assert!(cfg.capabilities.inherit_stdio);
    }

    #[test]
    fn config_table_is_passed_as_json() {
        let cfg = parse("[config]\nblocked = [\"a\"]\nmax_size = 3\n").unwrap();
        let json: serde_json::Value = serde_json::from_str(&cfg.config).unwrap();
        assert_eq!(json, serde_json::json!({"blocked": ["a"], "max_size": 3}));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse("ordr = 1").unwrap_err().to_string();
        assert!(err.contains("/plugins/demo.toml"), "{err}");
        assert!(err.contains("ordr"), "{err}");
    }

    #[test]
    fn bad_policy_names_the_value() {
        let err = parse("failure_policy = \"explode\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("explode") && err.contains("demo.toml"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        for (text, key) in [
            ("deadline_ms = 0", "deadline_ms"),
            ("memory_limit_bytes = 10", "memory_limit_bytes"),
            ("max_instances = 0", "max_instances"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { key: k, .. } if k == key),
                "{err}"
            );
            assert!(err.to_string().contains("demo.toml"));
        }
    }

    #[test]
    fn missing_preopen_dir_is_refused() {
        let err = parse("[[capabilities.preopen]]\nhost = \"nope\"\nguest = \"/d\"\n").unwrap_err();
        assert!(err.to_string().contains("capabilities.preopen"), "{err}");
    }
}
