//! The WebAssembly plugin host.
//!
//! Plugins are WebAssembly components targeting the `camp:extension/plugin`
//! world (`wit/camp-extension.wit`). The host:
//!
//! - compiles each plugin once with one shared [`wasmtime::Engine`] (cached
//!   by content hash, on disk too if configured) and links it against WASI
//!   p2 (granting nothing unless the plugin's config says so) and the
//!   `camp:extension/host` imports;
//! - runs hooks synchronously on a pool of instances per plugin
//!   ([`WasmPlugin`], an [`Extension`](crate::extension::Extension));
//! - enforces a time budget per call (epoch interruption, 1 ms ticks) and a
//!   linear-memory cap per instance; a trap, timeout or memory overflow
//!   becomes a [`HookError`](crate::extension::HookError), the instance is
//!   replaced and repeated failures back off;
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
mod cache;
mod config;
mod host;
mod plugin;
mod state;
mod watch;

pub use cache::{CacheOutcome, content_hash};
pub use config::{Capabilities, ConfigError, PluginConfig, Preopen};
pub use host::{HostError, HostOptions, LoadError, LoadTimings, PluginHost, plugin_name};
pub use plugin::{InstanceError, PluginMeta, WasmPlugin};
pub use watch::{DirOptions, LoadedVersion, PluginDir, PluginStatus, ScanReport, WatchError};
