//! The server's configuration: an optional TOML file, overridden by
//! command-line flags, resolved into [`Settings`] with defaults.
//!
//! ```
//! use camp_server::config::Config;
//!
//! let file = Config::parse("keep_alive_ms = 5000\ntokens = [\"a\"]\n[backpressure]\nprofile = \"optimize_memory\"\n").unwrap();
//! let flags = Config { keep_alive_ms: Some(1000), ..Config::default() };
//! let settings = file.overridden_by(flags).resolve().unwrap();
//! assert_eq!(settings.keep_alive.as_millis(), 1000);
//! assert_eq!(settings.tokens, ["a"]);
//! assert_eq!(settings.backpressure.max_queue_count, 128);
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::extension::wasm::PluginConfig;
use crate::server::UpgradeLimits;
use crate::session::transaction::TxLimits;
use crate::session::{Backpressure, DropPolicy};

/// Why a configuration was refused. Each names the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type);
    /// the message shows the line and the key.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent with another.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key, dotted (`backpressure.profile`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The `plugin_cache` key: a folder, or `true`/`false` for the default
/// folder or none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PluginCache {
    /// `true`: the default folder; `false`: no disk cache.
    Enabled(bool),
    /// This folder.
    Dir(PathBuf),
}

/// The compiled-plugin cache folder used unless configured:
/// `$XDG_CACHE_HOME/camp-server/plugins`, else
/// `$HOME/.cache/camp-server/plugins` (the XDG Base Directory
/// Specification's user cache); `None` (memory only) when neither
/// variable is set to an absolute path.
pub fn default_plugin_cache() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .map(|cache| cache.join("camp-server").join("plugins"))
}

/// A partial configuration: what the file or the flags say. Unset keys fall
/// back to the next source, then to the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port of the CAMP listener (default 127.0.0.1:8080).
    pub bind: Option<SocketAddr>,
    /// Accepted bearer tokens.
    pub tokens: Option<Vec<String>>,
    /// A file with one accepted token per line.
    pub token_file: Option<PathBuf>,
    /// A WebAssembly plugin of the `token-validator` world
    /// (`wit/auth/camp-auth.wit`, settings from the `.toml` beside it): a token
    /// it accepts is admitted too; with it, `tokens` may be empty.
    pub token_plugin: Option<PathBuf>,
    /// Heartbeat interval in milliseconds (default 15000).
    pub keep_alive_ms: Option<u64>,
    /// Refuse what the reference server tolerates from its clients
    /// (default false: accept and count it, see `Tolerated`).
    pub strict: Option<bool>,
    /// Log filter in `RUST_LOG` syntax (default `info`).
    pub log: Option<String>,
    /// The plugin folder (watched for hot reload).
    pub plugins: Option<PathBuf>,
    /// Where compiled plugins are cached across restarts: a folder, or
    /// `false` for memory only (every start compiles again). Default:
    /// [`default_plugin_cache`] (`$XDG_CACHE_HOME/camp-server/plugins`).
    /// Must be private to the server: it holds native code.
    pub plugin_cache: Option<PluginCache>,
    /// How often the plugin folder is scanned when it cannot be watched
    /// (inotify limit reached and the like): default 1000 ms.
    pub plugin_poll_ms: Option<u64>,
    /// `[plugin_defaults]`: settings for plugins whose `NAME.toml` does not
    /// set them (same keys as `NAME.toml`: `failure_policy`, `deadline_ms`,
    /// `memory_limit_bytes`, `max_instances`, …).
    pub plugin_defaults: Option<toml::Table>,
    /// TLS certificate and key.
    pub tls: Option<TlsConfig>,
    /// Outgoing queue limits.
    pub backpressure: Option<BackpressureConfig>,
    /// The admin listener (metrics, health, admin view).
    pub admin: Option<AdminConfig>,
    /// `[limits]`: limits against hostile clients (see SECURITY.md).
    pub limits: Option<LimitsConfig>,
}

/// `[limits]`: every limit against hostile clients; unset keys keep their
/// defaults (see `UpgradeLimits` and `TxLimits`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Time for the TLS handshake and the upgrade request (default 10000).
    pub upgrade_timeout_ms: Option<u64>,
    /// Connections held at once (default 16384).
    pub max_connections: Option<usize>,
    /// Connections held at once from one IP address (default 1024).
    pub max_connections_per_ip: Option<usize>,
    /// Largest upgrade request head in bytes (default 16384).
    pub max_request_head_bytes: Option<usize>,
    /// Most query parameters in the upgrade URL (default 64).
    pub max_query_params: Option<usize>,
    /// Streams a session sends at once (default 64).
    pub max_outgoing_transactions: Option<usize>,
    /// Streams a peer sends a session at once (default 1024).
    pub max_incoming_transactions: Option<usize>,
    /// A transaction waiting on the peer this long is cancelled (default
    /// 60000).
    pub transaction_idle_timeout_ms: Option<u64>,
    /// Spooled temporary files (outgoing PULL streams from unseekable
    /// sources) open at once, server-wide (default 256).
    pub max_spool_files: Option<usize>,
    /// Bytes in spooled temporary files, server-wide (default 1 GiB).
    pub max_spooled_bytes: Option<u64>,
    /// Received stream bytes a session buffers before it stops reading
    /// its socket (default 8 MiB).
    pub max_receive_buffer_bytes: Option<usize>,
}

impl LimitsConfig {
    fn or(self, file: LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            upgrade_timeout_ms: self.upgrade_timeout_ms.or(file.upgrade_timeout_ms),
            max_connections: self.max_connections.or(file.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(file.max_connections_per_ip),
            max_request_head_bytes: self.max_request_head_bytes.or(file.max_request_head_bytes),
            max_query_params: self.max_query_params.or(file.max_query_params),
            max_outgoing_transactions: self
                .max_outgoing_transactions
                .or(file.max_outgoing_transactions),
            max_incoming_transactions: self
                .max_incoming_transactions
                .or(file.max_incoming_transactions),
            transaction_idle_timeout_ms: self
                .transaction_idle_timeout_ms
                .or(file.transaction_idle_timeout_ms),
            max_spool_files: self.max_spool_files.or(file.max_spool_files),
            max_spooled_bytes: self.max_spooled_bytes.or(file.max_spooled_bytes),
            max_receive_buffer_bytes: self
                .max_receive_buffer_bytes
                .or(file.max_receive_buffer_bytes),
        }
    }

    /// The limits, defaults for unset keys, checked.
    fn resolve(self) -> Result<(UpgradeLimits, TxLimits), ConfigError> {
        let up = UpgradeLimits::default();
        let upgrade = UpgradeLimits {
            request_timeout: self
                .upgrade_timeout_ms
                .map_or(up.request_timeout, Duration::from_millis),
            max_connections: self.max_connections.unwrap_or(up.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(up.max_connections_per_ip),
            max_request_head_bytes: self
                .max_request_head_bytes
                .unwrap_or(up.max_request_head_bytes),
            max_query_params: self.max_query_params.unwrap_or(up.max_query_params),
        };
        upgrade
            .validate()
            .map_err(|reason| invalid("limits", reason))?;
        let tx = TxLimits::default();
        let mut tx = TxLimits::new(
            self.max_outgoing_transactions.unwrap_or(tx.max_outgoing),
            self.max_incoming_transactions.unwrap_or(tx.max_incoming),
            self.transaction_idle_timeout_ms
                .map_or(tx.idle_timeout, Duration::from_millis),
            self.max_spool_files.unwrap_or(tx.spool.max_files()),
            self.max_spooled_bytes.unwrap_or(tx.spool.max_bytes()),
        );
        if let Some(bytes) = self.max_receive_buffer_bytes {
            tx.max_receive_buffer = bytes;
        }
        tx.validate().map_err(|reason| invalid("limits", reason))?;
        Ok((upgrade, tx))
    }
}

/// `[tls]`: PEM files for `wss://`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
}

/// `[backpressure]`: a named profile, then individual overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackpressureConfig {
    /// `default`, `optimize_latency` or `optimize_memory`.
    pub profile: Option<String>,
    /// See [`Backpressure::high_water_mark`].
    pub high_water_mark: Option<usize>,
    /// See [`Backpressure::low_water_mark`].
    pub low_water_mark: Option<usize>,
    /// See [`Backpressure::max_queued_bytes`].
    pub max_queued_bytes: Option<usize>,
    /// See [`Backpressure::max_queue_count`].
    pub max_queue_count: Option<usize>,
    /// See [`Backpressure::drop_policy`].
    pub drop_policy: Option<DropPolicy>,
}

/// `[admin]`: where metrics and the admin view are served.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port (loopback by default: 127.0.0.1:9090).
    pub bind: Option<SocketAddr>,
    /// Set to false to turn the admin listener off.
    pub enabled: Option<bool>,
}

/// A complete, checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// CAMP listener address.
    pub bind: SocketAddr,
    /// Accepted tokens (empty only with a token plugin).
    pub tokens: Vec<String>,
    /// The token-validating plugin, if any.
    pub token_plugin: Option<PathBuf>,
    /// Heartbeat interval.
    pub keep_alive: Duration,
    /// Strict protocol checks.
    pub strict: bool,
    /// Log filter.
    pub log: String,
    /// Plugin folder, if any.
    pub plugins: Option<PathBuf>,
    /// Cache folder for compiled plugins (`None`: memory only).
    pub plugin_cache: Option<PathBuf>,
    /// Scan interval of a plugin folder that cannot be watched.
    pub plugin_poll: Duration,
    /// Settings of plugins that their own file does not set.
    pub plugin_defaults: PluginConfig,
    /// TLS certificate and key files, if TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Queue limits.
    pub backpressure: Backpressure,
    /// Admin listener address, if on.
    pub admin: Option<SocketAddr>,
    /// Limits before a connection is a session.
    pub upgrade_limits: UpgradeLimits,
    /// Transaction limits of every session.
    pub tx_limits: TxLimits,
}

impl Config {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// This configuration with every key that `flags` sets replaced.
    pub fn overridden_by(self, flags: Config) -> Config {
        let tls = match (self.tls, flags.tls) {
            (Some(f), Some(o)) => Some(TlsConfig {
                cert: o.cert.or(f.cert),
                key: o.key.or(f.key),
            }),
            (f, o) => o.or(f),
        };
        let admin = match (self.admin, flags.admin) {
            (Some(f), Some(o)) => Some(AdminConfig {
                bind: o.bind.or(f.bind),
                enabled: o.enabled.or(f.enabled),
            }),
            (f, o) => o.or(f),
        };
        let backpressure = match (self.backpressure, flags.backpressure) {
            (Some(f), Some(o)) => Some(BackpressureConfig {
                profile: o.profile.or(f.profile),
                high_water_mark: o.high_water_mark.or(f.high_water_mark),
                low_water_mark: o.low_water_mark.or(f.low_water_mark),
                max_queued_bytes: o.max_queued_bytes.or(f.max_queued_bytes),
                max_queue_count: o.max_queue_count.or(f.max_queue_count),
                drop_policy: o.drop_policy.or(f.drop_policy),
            }),
            (f, o) => o.or(f),
        };
        let limits = match (self.limits, flags.limits) {
            (Some(f), Some(o)) => Some(o.or(f)),
            (f, o) => o.or(f),
        };
        Config {
            limits,
            bind: flags.bind.or(self.bind),
            tokens: flags.tokens.filter(|t| !t.is_empty()).or(self.tokens),
            token_file: flags.token_file.or(self.token_file),
            token_plugin: flags.token_plugin.or(self.token_plugin),
            keep_alive_ms: flags.keep_alive_ms.or(self.keep_alive_ms),
            strict: flags.strict.or(self.strict),
            log: flags.log.or(self.log),
            plugins: flags.plugins.or(self.plugins),
            plugin_cache: flags.plugin_cache.or(self.plugin_cache),
            plugin_poll_ms: flags.plugin_poll_ms.or(self.plugin_poll_ms),
            plugin_defaults: match (self.plugin_defaults, flags.plugin_defaults) {
                (Some(mut f), Some(o)) => {
                    f.extend(o);
                    Some(f)
                }
                (f, o) => o.or(f),
            },
            tls,
            backpressure,
            admin,
        }
    }

    /// Applies defaults and checks every value.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let mut tokens: Vec<String> = self.tokens.unwrap_or_default();
        if let Some(file) = &self.token_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                invalid("token_file", format!("cannot read {}: {e}", file.display()))
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.is_empty() && self.token_plugin.is_none() {
            return Err(invalid(
                "tokens",
                "no token configured: pass --token, CAMP_TOKENS, --token-file, --token-plugin or `tokens` in the config file",
            ));
        }
        if let Some(p) = &self.token_plugin
            && !p.is_file()
        {
            return Err(invalid(
                "token_plugin",
                format!("{} is not a file", p.display()),
            ));
        }
        if tokens.iter().any(|t| t.chars().any(char::is_whitespace)) {
            return Err(invalid("tokens", "a token must not contain whitespace"));
        }
        let keep_alive_ms = self.keep_alive_ms.unwrap_or(15_000);
        if !(100..=3_600_000).contains(&keep_alive_ms) {
            return Err(invalid(
                "keep_alive_ms",
                format!("{keep_alive_ms} is outside 100..=3600000"),
            ));
        }
        let plugin_poll_ms = self
            .plugin_poll_ms
            .unwrap_or(crate::extension::wasm::DEFAULT_POLL_INTERVAL.as_millis() as u64);
        if !(10..=3_600_000).contains(&plugin_poll_ms) {
            return Err(invalid(
                "plugin_poll_ms",
                format!("{plugin_poll_ms} is outside 10..=3600000"),
            ));
        }
        let tls = match self.tls {
            None => None,
            Some(TlsConfig {
                cert: Some(c),
                key: Some(k),
            }) => Some((c, k)),
            Some(TlsConfig { cert: None, .. }) => {
                return Err(invalid("tls.cert", "a key was given without a certificate"));
            }
            Some(TlsConfig { key: None, .. }) => {
                return Err(invalid("tls.key", "a certificate was given without a key"));
            }
        };
        let backpressure = match self.backpressure {
            None => Backpressure::default(),
            Some(b) => {
                let profile = b.profile.as_deref().unwrap_or("default");
                let mut bp = Backpressure::profile(profile).ok_or_else(|| {
                    invalid(
                        "backpressure.profile",
                        format!("unknown profile {profile:?} (default, optimize_latency, optimize_memory)"),
                    )
                })?;
                bp.high_water_mark = b.high_water_mark.unwrap_or(bp.high_water_mark);
                bp.low_water_mark = b.low_water_mark.unwrap_or(bp.low_water_mark);
                bp.max_queued_bytes = b.max_queued_bytes.unwrap_or(bp.max_queued_bytes);
                bp.max_queue_count = b.max_queue_count.unwrap_or(bp.max_queue_count);
                bp.drop_policy = b.drop_policy.unwrap_or(bp.drop_policy);
                bp.validate()
                    .map_err(|reason| invalid("backpressure", reason))?;
                bp
            }
        };
        let admin = match self.admin {
            Some(AdminConfig {
                enabled: Some(false),
                ..
            }) => None,
            Some(AdminConfig { bind: Some(b), .. }) => Some(b),
            _ => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        };
        if let Some(p) = &self.plugins
            && !p.is_dir()
        {
            return Err(invalid(
                "plugins",
                format!("{} is not a folder", p.display()),
            ));
        }
        let plugin_defaults = match self.plugin_defaults {
            None => PluginConfig::default(),
            Some(table) => PluginConfig::parse(
                &table.to_string(),
                Path::new("[plugin_defaults]"),
                &PluginConfig::default(),
            )
            .map_err(|e| invalid("plugin_defaults", e.to_string()))?,
        };
        let (upgrade_limits, tx_limits) = self.limits.unwrap_or_default().resolve()?;
        Ok(Settings {
            token_plugin: self.token_plugin,
            upgrade_limits,
            tx_limits,
            bind: self
                .bind
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            tokens,
            keep_alive: Duration::from_millis(keep_alive_ms),
            strict: self.strict.unwrap_or(false),
            log: self.log.unwrap_or_else(|| "info".into()),
            plugins: self.plugins,
            plugin_cache: match self.plugin_cache {
                None | Some(PluginCache::Enabled(true)) => default_plugin_cache(),
                Some(PluginCache::Enabled(false)) => None,
                Some(PluginCache::Dir(dir)) => Some(dir),
            },
            plugin_poll: Duration::from_millis(plugin_poll_ms),
            plugin_defaults,
            tls,
            backpressure,
            admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text).and_then(Config::resolve) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_the_reference_servers() {
        let s = Config::parse("tokens = [\"t\"]")
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.keep_alive, Duration::from_secs(15));
        assert_eq!(s.backpressure, Backpressure::default());
        assert_eq!(s.admin.unwrap().to_string(), "127.0.0.1:9090");
        assert!(s.tls.is_none() && s.plugins.is_none());
        assert_eq!(s.upgrade_limits, UpgradeLimits::default());
    }

    #[test]
    fn every_key_parses() {
        let text = r#"
            bind = "0.0.0.0:9000"
            tokens = ["a", "b"]
            keep_alive_ms = 2000
            log = "debug"
            plugin_cache = "cache"
            plugin_poll_ms = 250
            [tls]
            cert = "c.pem"
            key = "k.pem"
            [backpressure]
            profile = "optimize_latency"
            max_queue_count = 10
            drop_policy = "drop-newest"
            [admin]
            bind = "127.0.0.1:9999"
            [plugin_defaults]
            deadline_ms = 7
            failure_policy = "fail-open"
            [limits]
            upgrade_timeout_ms = 500
            max_connections = 10
            max_connections_per_ip = 3
            max_request_head_bytes = 4096
            max_query_params = 8
            max_outgoing_transactions = 5
            max_incoming_transactions = 6
            transaction_idle_timeout_ms = 700
            max_spool_files = 7
            max_receive_buffer_bytes = 4096
            max_spooled_bytes = 8192
        "#;
        let s = Config::parse(text).unwrap().resolve().unwrap();
        assert_eq!(s.bind.port(), 9000);
        assert_eq!(s.tokens, ["a", "b"]);
        assert_eq!(s.keep_alive, Duration::from_secs(2));
        assert_eq!(s.log, "debug");
        assert_eq!(s.tls.unwrap().0, PathBuf::from("c.pem"));
        assert_eq!(s.backpressure.max_queue_count, 10);
        assert_eq!(
            s.backpressure.max_queued_bytes,
            2 * 1024 * 1024,
            "from the profile"
        );
        assert_eq!(s.backpressure.drop_policy, DropPolicy::DropNewest);
        assert_eq!(s.admin.unwrap().port(), 9999);
        assert_eq!(s.plugin_cache, Some(PathBuf::from("cache")));
        // Off with `false`; the default folder when unset or `true`.
        for (text, expected) in [
            ("plugin_cache = false", None),
            ("plugin_cache = true", default_plugin_cache()),
            ("", default_plugin_cache()),
        ] {
            let s = Config::parse(&format!("tokens = [\"a\"]\n{text}"))
                .unwrap()
                .resolve()
                .unwrap();
            assert_eq!(s.plugin_cache, expected, "{text}");
        }
        assert_eq!(s.plugin_poll, Duration::from_millis(250));
        let up = s.upgrade_limits;
        assert_eq!(
            (
                up.request_timeout,
                up.max_connections,
                up.max_connections_per_ip,
                up.max_request_head_bytes,
                up.max_query_params
            ),
            (Duration::from_millis(500), 10, 3, 4096, 8)
        );
        let tx = &s.tx_limits;
        assert_eq!(
            (
                tx.max_outgoing,
                tx.max_incoming,
                tx.idle_timeout,
                tx.spool.max_files(),
                tx.spool.max_bytes(),
                tx.max_receive_buffer
            ),
            (5, 6, Duration::from_millis(700), 7, 8192, 4096)
        );
        assert_eq!(s.plugin_defaults.deadline_ms, 7);
        assert_eq!(
            s.plugin_defaults.failure_policy,
            crate::extension::FailurePolicy::FailOpen
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = Config::parse(
            "bind = \"127.0.0.1:1\"\ntokens = [\"file\"]\n[admin]\nbind = \"127.0.0.1:2\"",
        )
        .unwrap();
        let flags = Config {
            tokens: Some(vec!["flag".into()]),
            admin: Some(AdminConfig {
                enabled: Some(false),
                bind: None,
            }),
            ..Config::default()
        };
        let s = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(
            (s.bind.port(), s.tokens[0].as_str(), s.admin),
            (1, "flag", None)
        );
    }

    #[test]
    fn invalid_values_name_the_key_and_reason() {
        assert!(err("tokens = []").contains("`tokens`"));
        assert!(err("tokens = [\"a b\"]").contains("whitespace"));
        let e = err("tokens = [\"a\"]\nkeep_alive_ms = 0");
        assert!(
            e.contains("`keep_alive_ms`") && e.contains("outside"),
            "{e}"
        );
        let e = err("tokens = [\"a\"]\nbnid = \"x\"");
        assert!(e.contains("unknown field `bnid`"), "{e}");
        let e = err("tokens = [\"a\"]\nbind = \"nowhere\"");
        assert!(e.contains("bind") && e.contains("line 2"), "{e}");
        let e = err("tokens = [\"a\"]\n[backpressure]\nprofile = \"fast\"");
        assert!(
            e.contains("`backpressure.profile`") && e.contains("fast"),
            "{e}"
        );
        let e = err("tokens = [\"a\"]\n[backpressure]\nlow_water_mark = 99999999999");
        assert!(e.contains("low_water_mark must not exceed"), "{e}");
        let e = err("tokens = [\"a\"]\n[backpressure]\ndrop_policy = \"drop-all\"");
        assert!(e.contains("drop-all"), "{e}");
        let e = err("tokens = [\"a\"]\n[tls]\ncert = \"c.pem\"");
        assert!(e.contains("`tls.key`"), "{e}");
        let e = err("tokens = [\"a\"]\nplugins = \"/definitely/not/here\"");
        assert!(e.contains("`plugins`") && e.contains("not a folder"), "{e}");
        let e = err("tokens = [\"a\"]\n[plugin_defaults]\ndeadline_ms = 0");
        assert!(
            e.contains("`plugin_defaults`") && e.contains("deadline_ms"),
            "{e}"
        );
        let e = err("tokens = [\"a\"]\n[plugin_defaults]\nspeed = 1");
        assert!(
            e.contains("`plugin_defaults`") && e.contains("speed"),
            "{e}"
        );
        let e = err("tokens = [\"a\"]\n[limits]\nmax_connections = 0");
        assert!(
            e.contains("`limits`") && e.contains("max_connections"),
            "{e}"
        );
        let e = err("tokens = [\"a\"]\n[limits]\nmax_spool_files = 0");
        assert!(
            e.contains("`limits`") && e.contains("max_spool_files"),
            "{e}"
        );
        let e = err("tokens = [\"a\"]\n[limits]\nmax_conections = 1");
        assert!(e.contains("max_conections"), "{e}");
        let e = err("tokens = [\"a\"]\nplugin_poll_ms = 1");
        assert!(e.contains("`plugin_poll_ms`"), "{e}");
        let e = err("token_plugin = \"/definitely/not/here.wasm\"");
        assert!(e.contains("`token_plugin`"), "{e}");
        let e = err("token_file = \"/definitely/not/here\"");
        assert!(e.contains("`token_file`"), "{e}");
    }
}
