//! The WebAssembly plugin host.
//!
//! Plugins are WebAssembly components targeting the `camp:extension/plugin`
//! world (`wit/camp-extension.wit`). The host:
//!
//! - compiles each plugin once with one shared [`wasmtime::Engine`] (cached
//!   by content hash, on disk too if configured) and links it against WASI
//!   p2 (granting nothing unless the plugin's config says so) and the
//!   `camp:extension/host` imports;
//! - runs hooks as async calls on a pool of instances per plugin
//!   ([`WasmPlugin`], an [`Extension`](crate::extension::Extension)), on
//!   the session's own task: a guest yields every 1 ms tick, so a slow hook
//!   delays only its own session, and nothing a guest does (print, sleep,
//!   panic) can block or panic a runtime thread;
//! - enforces a time budget per call (what it counts: `budget` module), a
//!   linear-memory cap and a table cap per instance, and bounds on what a
//!   plugin may do to a session (session-store keys and bytes, sends per
//!   call); a trap, timeout or limit becomes a
//!   [`HookError`](crate::extension::HookError), the instance is replaced,
//!   and repeated failures of one session back off for that session only;
//! - turns guest stdout/stderr into log lines tagged with plugin and
//!   session (bounded per call and per line);
//! - tries a version before it goes live (instantiate, `on-register`, one
//!   call of each declared hook) and rolls a replacement back when it fails
//!   on several sessions right after the swap;
//! - keeps a folder of plugins in sync with a pipeline ([`PluginDir`]):
//!   load at start, hot reload on change, unload on removal.
//!
//! ```no_run
//! use camp_server::extension::Pipeline;
//! use camp_server::extension::wasm::{DirOptions, HostOptions, PluginHost};
//!
//! let pipeline = Pipeline::new();
//! let host = PluginHost::new(HostOptions::default()).unwrap();
//! let (plugins, report) = host.open_dir("target/plugins", pipeline.clone(), DirOptions::default());
//! println!("loaded {:?}, failed {:?}", report.loaded, report.failed);
//! plugins.watch().unwrap();
//! // … serve sessions with `pipeline` …
//! plugins.stop();
//! host.shutdown();
//! ```

mod bindings;
mod budget;
mod cache;
mod config;
mod host;
mod output;
mod plugin;
mod state;
mod token;
mod watch;

pub use cache::{CacheOutcome, content_hash};
pub use config::{Capabilities, ConfigError, PluginConfig, Preopen};
pub use host::{HostError, HostOptions, LoadError, LoadTimings, PluginHost, plugin_name};
pub use plugin::{
    InstanceError, PluginMeta, Probation, ROLLBACK_SESSIONS, TRIAL_SESSION, WasmPlugin,
};
pub use token::{TokenPlugin, TokenPluginError};
pub use watch::{
    DEFAULT_POLL_INTERVAL, DirOptions, EventHandler, LoadedVersion, PluginDir, PluginStatus,
    ScanReport, WatchError, WatchMode,
};
