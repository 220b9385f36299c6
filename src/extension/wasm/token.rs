//! Bearer tokens validated by a WebAssembly plugin instead of the built-in
//! list: a component of the `token-validator` world (`wit/auth/camp-auth.wit`)
//! answers, for each upgrade request, whether its token is accepted.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use camp_server::extension::wasm::{HostOptions, PluginHost, TokenPlugin};
//! use camp_server::server::Server;
//!
//! let host = PluginHost::new(HostOptions::default())?;
//! // token-check.wasm, with token-check.toml beside it (deadline_ms,
//! // memory_limit_bytes, config).
//! let tokens = TokenPlugin::load_file(&host, "auth/token-check.wasm".as_ref()).await?;
//! let (server, incoming) = Server::builder()
//!     .validator(move |token| {
//!         let tokens = tokens.clone();
//!         async move { tokens.admits(token).await }
//!     })
//!     .build();
//! # Ok(()) }
//! ```
//!
//! Every validation runs in a fresh instance (nothing survives from one
//! token to the next) under the plugin's `deadline_ms` (counted from
//! instantiation, epoch ticks of 1 ms) and `memory_limit_bytes` and
//! `max_table_elements`; a trap, an overrun or an error refuses the client
//! (401) and is logged without the token. The world imports no host
//! function and the WASI context is empty (no files, environment, sockets;
//! stdio discarded), so the plugin cannot write the token anywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::config::PluginConfig;
use super::host::PluginHost;

mod bindings {
    wasmtime::component::bindgen!({
        world: "token-validator",
        path: "wit/auth/camp-auth.wit",
        exports: { default: async },
    });
}

/// Why a token plugin could not be loaded, or a validation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenPluginError {
    /// The file or its `NAME.toml` could not be read or parsed.
    #[error("{file}: {message}")]
    Read {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The bytes are not a component for this engine, or not of the
    /// `token-validator` world.
    #[error("token plugin {name}: {message}")]
    Load {
        /// The plugin's name (file stem).
        name: String,
        /// The compiler's or linker's message.
        message: String,
    },
    /// `init` refused the configuration.
    #[error("token plugin {name} refused its configuration: {message}")]
    Config {
        /// The plugin's name.
        name: String,
        /// The plugin's message.
        message: String,
    },
    /// A call trapped, overran `deadline_ms` or a memory or table cap.
    #[error("token plugin {name} failed: {message}")]
    Call {
        /// The plugin's name.
        name: String,
        /// The trap.
        message: String,
    },
}

/// The store data of one validation.
struct AuthState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for AuthState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A loaded token-validating plugin. Cheap to clone.
#[derive(Clone)]
pub struct TokenPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    pre: bindings::TokenValidatorPre<AuthState>,
    config: PluginConfig,
    name: String,
}

impl std::fmt::Debug for TokenPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPlugin")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl TokenPlugin {
    /// Loads `NAME.wasm` with the settings of `NAME.toml` beside it (the
    /// host's defaults otherwise): compiles it (on a blocking thread),
    /// checks its world and runs `init` with its `config` once.
    pub async fn load_file(
        host: &PluginHost,
        wasm: &Path,
    ) -> Result<TokenPlugin, TokenPluginError> {
        let name = super::host::plugin_name(wasm);
        let read = |file: &Path, message: String| TokenPluginError::Read {
            file: file.to_path_buf(),
            message,
        };
        let config = PluginConfig::load(&wasm.with_extension("toml"), host.defaults())
            .map_err(|e| read(wasm, e.to_string()))?;
        let bytes = std::fs::read(wasm).map_err(|e| read(wasm, e.to_string()))?;
        let engine = host.engine().clone();
        let load = |message: String| TokenPluginError::Load {
            name: name.clone(),
            message,
        };
        let compiling = engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&compiling, &bytes))
            .await
            .map_err(|e| load(e.to_string()))?
            .map_err(|e| load(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| load(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::TokenValidatorPre::new)
            .map_err(|e| load(format!("not a camp:auth token-validator component: {e:#}")))?;
        let plugin = TokenPlugin {
            inner: Arc::new(Inner {
                engine,
                pre,
                config,
                name,
            }),
        };
        // The configuration is checked once at load.
        plugin.validate(String::new()).await?;
        Ok(plugin)
    }

    /// The plugin's name (file stem).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the plugin accepts `token`, or why it could not say.
    pub async fn validate(&self, token: String) -> Result<bool, TokenPluginError> {
        let inner = &self.inner;
        let config = &inner.config;
        let call = |e: wasmtime::Error| TokenPluginError::Call {
            name: inner.name.clone(),
            message: format!("{e:#}"),
        };
        let state = AuthState {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(config.memory_limit_bytes)
                .table_elements(config.max_table_elements)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(config.deadline_ms);
        store.epoch_deadline_trap();
        let instance = inner
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(call)?;
        instance
            .call_init(&mut store, &config.config)
            .await
            .map_err(call)?
            .map_err(|message| TokenPluginError::Config {
                name: inner.name.clone(),
                message,
            })?;
        instance
            .call_validate(&mut store, &token)
            .await
            .map_err(call)
    }

    /// Whether the plugin accepts `token`; a failure refuses it and is
    /// logged (without the token). For [`ServerBuilder::validator`](crate::server::ServerBuilder::validator).
    pub async fn admits(&self, token: String) -> bool {
        match self.validate(token).await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(plugin = %self.inner.name, "token refused: {e}");
                false
            }
        }
    }
}
