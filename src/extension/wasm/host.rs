//! [`PluginHost`]: the one wasmtime engine and linker shared by all plugins,
//! the epoch ticker that enforces time budgets, and loading a plugin from
//! bytes or a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{latest, v0_1};
use super::budget::TICK;
use super::cache::{ArtifactCache, CacheOutcome, content_hash};
use super::config::{ConfigError, PluginConfig};
use super::plugin::{InstanceError, PluginPre, WasmPlugin};
use super::state::InstanceState;

/// Why the plugin host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The wasmtime engine or linker could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The compiled-artifact cache directory could not be created.
    #[error("cannot use cache directory {dir}: {source}")]
    Cache {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker: {0}")]
    Ticker(std::io::Error),
}

/// Why one plugin could not be loaded. The previous version (if any)
/// keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The `.wasm` file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// The plugin's `NAME.toml` is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bytes are not a valid component (or not for this engine).
    #[error("{name}: not a valid WebAssembly component: {message}")]
    Compile {
        /// The plugin name.
        name: String,
        /// Wasmtime's message.
        message: String,
    },
    /// The component does not target the `camp:extension/plugin` world
    /// (missing exports, imports the host does not offer).
    #[error("{name}: does not fit the camp:extension/plugin world: {message}")]
    World {
        /// The plugin name.
        name: String,
        /// Wasmtime's message.
        message: String,
    },
    /// Instantiation, `name`, `hooks`, `on-register` or the trial (one call
    /// of each declared hook) failed or refused.
    #[error("{name}: {error}")]
    Instance {
        /// The plugin name.
        name: String,
        /// What failed.
        error: InstanceError,
    },
}

/// Settings of the plugin host.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Where compiled artifacts are cached across restarts (`None`: memory
    /// only). Must be private to the server: its files are native code.
    pub cache_dir: Option<PathBuf>,
    /// Settings for plugins whose `NAME.toml` does not set them.
    pub defaults: PluginConfig,
}

/// Timings of one load, for logs and the admin view (there in
/// milliseconds: `compile_ms`, `instantiate_ms`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LoadTimings {
    /// Where the compiled component came from.
    pub cache: CacheOutcome,
    /// Compiling (or fetching) the component.
    #[serde(rename = "compile_ms", serialize_with = "millis")]
    pub compile: Duration,
    /// Linking, instantiating the first instance and `on-register`.
    #[serde(rename = "instantiate_ms", serialize_with = "millis")]
    pub instantiate: Duration,
}

/// A duration as fractional milliseconds.
fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// State shared by the host's clones.
struct Shared {
    /// The engine every plugin is compiled for.
    engine: Engine,
    /// The linker with WASI p2 and the `camp:extension/host` imports.
    linker: Linker<InstanceState>,
    /// Compiled artifacts.
    cache: ArtifactCache,
    /// Defaults for plugin settings.
    defaults: PluginConfig,
    /// Tells the ticker to stop.
    stop: Arc<AtomicBool>,
    /// The ticker thread.
    ticker: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The WebAssembly plugin host: one engine, one linker, one epoch ticker,
/// one artifact cache, shared by every plugin. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    /// Shared state.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Sets up the engine (epoch interruption on, component-model
    /// concurrency off: calls are async, with fibers), links WASI p2 (granting nothing by default) and the host
    /// interface, and starts the epoch ticker thread.
    pub fn new(options: HostOptions) -> Result<PluginHost, HostError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        // The async WASI linker: a guest's blocking WASI call (a sleep, a
        // write to stdout) suspends its call instead of blocking a thread.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        // Every WIT version the host accepts (see the WIT's compatibility
        // rule): each registers its own `camp:extension/*@version`.
        latest::Plugin::add_to_linker::<InstanceState, HasSelf<InstanceState>>(&mut linker, |s| s)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        v0_1::Plugin::add_to_linker::<InstanceState, HasSelf<InstanceState>>(&mut linker, |s| s)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let cache = ArtifactCache::new(&engine, options.cache_dir.clone()).map_err(|source| {
            HostError::Cache {
                dir: options.cache_dir.clone().unwrap_or_default(),
                source,
            }
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("camp-epoch".into())
                .spawn(move || {
                    // Catch up with the wall clock rather than counting
                    // sleeps: on a busy machine a 1 ms sleep overshoots, and
                    // budgets would stretch with it.
                    let origin = Instant::now();
                    let mut ticks: u128 = 0;
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(TICK);
                        let due = origin.elapsed().as_nanos() / TICK.as_nanos();
                        while ticks < due {
                            engine.increment_epoch();
                            ticks += 1;
                        }
                    }
                })
                .map_err(HostError::Ticker)?
        };
        Ok(PluginHost {
            shared: Arc::new(Shared {
                engine,
                linker,
                cache,
                defaults: options.defaults,
                stop,
                ticker: std::sync::Mutex::new(Some(ticker)),
            }),
        })
    }

    /// The engine (e.g. to precompile components elsewhere).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The settings a plugin without a `NAME.toml` gets.
    pub fn defaults(&self) -> &PluginConfig {
        &self.shared.defaults
    }

    /// Loads a plugin from component bytes: compile (or fetch from the
    /// cache), link, instantiate, `name`, `hooks`, `on-register`. Blocking
    /// and possibly slow: call it off the async runtime.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        config: PluginConfig,
    ) -> Result<(Arc<WasmPlugin>, LoadTimings), LoadError> {
        let started = Instant::now();
        if bytes.starts_with(CORE_MODULE_HEADER) {
            let message = match wasmtime::Module::validate(&self.shared.engine, bytes) {
                Ok(()) => "this is a core WebAssembly module, not a component: build for \
                           wasm32-wasip2 (Rust), or wrap a wasm32-wasip1 module with \
                           `wasm-tools component new --adapt` and the WASI preview1 reactor \
                           adapter (crate wasi-preview1-component-adapter-provider)"
                    .to_string(),
                Err(e) => format!(
                    "the file starts like a core WebAssembly module but is not a valid one \
                     ({e}); was it copied incompletely?"
                ),
            };
            return Err(LoadError::Compile {
                name: name.to_string(),
                message,
            });
        }
        // Binary WebAssembly starts with its magic bytes; the text format
        // (accepted too) with a parenthesis or a comment.
        let text = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'(' | b';'));
        if !bytes.starts_with(WASM_MAGIC) && !text {
            return Err(LoadError::Compile {
                name: name.to_string(),
                message: "not a WebAssembly file: it starts neither with the WebAssembly \
                          magic bytes (\\0asm) nor with the text format; is it another file \
                          named .wasm, or was it copied incompletely?"
                    .into(),
            });
        }
        let hash = content_hash(bytes);
        let (component, cache) = self
            .shared
            .cache
            .get(&self.shared.engine, &hash, bytes)
            .map_err(|e| LoadError::Compile {
                name: name.to_string(),
                message: format!("{e:#}"),
            })?;
        let compiled = Instant::now();
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .and_then(|pre| match latest::PluginPre::new(pre.clone()) {
                Ok(latest) => Ok(PluginPre::Latest(latest)),
                Err(latest_error) => v0_1::PluginPre::new(pre)
                    .map(PluginPre::V0_1)
                    .map_err(|_| latest_error),
            })
            .map_err(|e| LoadError::World {
                name: name.to_string(),
                message: explain_world_error(&self.shared.engine, &component, &format!("{e:#}")),
            })?;
        let plugin = WasmPlugin::new(
            self.shared.clone(),
            self.shared.engine.clone(),
            pre,
            name.to_string(),
            hash,
            config,
        )
        .map_err(|error| match error {
            InstanceError::Instantiate(message) => LoadError::World {
                name: name.to_string(),
                message,
            },
            error => LoadError::Instance {
                name: name.to_string(),
                error,
            },
        })?;
        let timings = LoadTimings {
            cache,
            compile: compiled - started,
            instantiate: compiled.elapsed(),
        };
        Ok((Arc::new(plugin), timings))
    }

    /// Loads `NAME.wasm` with the settings of `NAME.toml` beside it (if
    /// any); the plugin's name is the file stem.
    pub fn load_file(&self, wasm: &Path) -> Result<(Arc<WasmPlugin>, LoadTimings), LoadError> {
        let name = plugin_name(wasm);
        let config = PluginConfig::load(&wasm.with_extension("toml"), &self.shared.defaults)?;
        let bytes = std::fs::read(wasm).map_err(|e| LoadError::Read {
            file: wasm.to_path_buf(),
            message: e.to_string(),
        })?;
        self.load(&name, &bytes, config)
    }

    /// Stops the epoch ticker. Plugins loaded afterwards, or calls made
    /// afterwards, are no longer interrupted on time; call it at shutdown,
    /// after the sessions are gone.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let handle = self
            .shared
            .ticker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// The first bytes of a core WebAssembly module (magic and version 1); a
/// component has the same magic with another version and layer.
const CORE_MODULE_HEADER: &[u8] = b"\0asm\x01\0\0\0";

/// The first bytes of every binary WebAssembly file.
const WASM_MAGIC: &[u8] = b"\0asm";

/// The exports of the `camp:extension/plugin` world.
const WORLD_EXPORTS: [&str; 12] = [
    "name",
    "hooks",
    "on-register",
    "on-unregister",
    "session-opened",
    "session-closed",
    "before-send-utf8",
    "before-send-binary",
    "before-send-error",
    "on-receive-utf8",
    "on-receive-binary",
    "on-receive-error",
];

/// The import families the host links: `camp:extension/*` and WASI p2
/// (what a plugin's `NAME.toml` does not grant fails at run time, not at
/// load).
const OFFERED_IMPORTS: [&str; 7] = [
    "camp:extension/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:io/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// Wasmtime's reason a component does not fit the world, with what an
/// author needs to fix it: every import the host does not offer, with what
/// removes it; every missing export (wasmtime names only the first) and
/// the world the file's exports say it targets.
fn explain_world_error(
    engine: &Engine,
    component: &wasmtime::component::Component,
    error: &str,
) -> String {
    let ty = component.component_type();
    let mut message = error.to_string();
    let unexpected: Vec<&str> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !OFFERED_IMPORTS.iter().any(|p| name.starts_with(p)))
        .collect();
    if !unexpected.is_empty() {
        message.push_str(&format!(
            "; imports the host does not offer: {}; a plugin may import only \
             camp:extension/host and WASI p2 (cli, clocks, io, random, filesystem, sockets: \
             granted per plugin by [capabilities] in NAME.toml)",
            unexpected.join(", ")
        ));
        if unexpected.iter().any(|name| name.starts_with("wasi:http/")) {
            message.push_str(
                "; wasi:http is added by componentize-js unless the plugin is built with \
                 `--disable http fetch-event` (camp-plugin build passes it)",
            );
        } else {
            message.push_str(
                "; remove the library or build option that brings the import in, or \
                 build with the plugin SDK (camp-plugin new)",
            );
        }
    }
    let missing: Vec<&str> = WORLD_EXPORTS
        .into_iter()
        .filter(|name| component.get_export_index(None, name).is_none())
        .collect();
    if !missing.is_empty() {
        let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
        let world = if exports.iter().any(|e| e.starts_with("wasi:cli/run")) {
            "wasi:cli/command (a program with a main function)"
        } else if exports.contains(&"validate") && exports.contains(&"init") {
            "camp:auth/token-validator (wit/auth/camp-auth.wit), which is loaded with \
             --token-plugin FILE (token_plugin in the configuration), not from the plugin \
             folder"
        } else if exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler"))
        {
            "wasi:http/proxy (an HTTP handler)"
        } else if exports.len() > missing.len() || missing.len() == WORLD_EXPORTS.len() {
            "a world of its own"
        } else {
            "a partial camp:extension/plugin"
        };
        message.push_str(&format!(
            "; missing exports of the camp:extension/plugin world: {}; the file targets {world}, \
             exporting: {}; build it against wit/camp-extension.wit, world plugin (the plugin \
             SDKs and camp-plugin new do)",
            missing.join(", "),
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        ));
    }
    message
}

/// The pipeline name of a plugin file: its stem.
pub fn plugin_name(wasm: &Path) -> String {
    wasm.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
