//! The host side of the `batch` test guest (world `camp-bench:batch/batch`,
//! `tests/guests/batch/batch.wit`): one instance in a store set up like the
//! plugin host's, for the test of the guest (`every_guest::batch`) and the
//! batching benchmark (`benches/batch.rs`, which includes this file).
//!
//! The engine is the plugin host's own ([`PluginHost::engine`]: epoch
//! interruption on, component-model concurrency off, its epoch ticker
//! running). The store is the host's minus what is private to it
//! (`src/extension/wasm/plugin.rs`, `Instance::run`), replicated here:
//!
//! - the linker: WASI p2 linked async, with an empty WASI context (the
//!   host grants nothing by default), and the world's `host` interface;
//! - the store: a memory and table limiter with the host's default caps,
//!   an epoch deadline callback, and `set_epoch_deadline(1)` before every
//!   call, as the host does;
//! - the `borrow<session>` is a handle that carries nothing
//!   (`Resource::new_borrow(0)`), like the host's `SessionSlot`.
//!
//! Left out: the host's per-call bookkeeping around the wasmtime call (the
//! instance pool's checkout and checkin, the budget meter's clock read,
//! the session clone, flushing guest output, the back-off check). The
//! benchmark measures that part on its own, through the real host with the
//! `passthrough` plugin.
//!
//! [`PluginHost::engine`]: camp_server::extension::wasm::PluginHost::engine

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Async bindings, as the host's (`exports: { default: async }`).
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "batch",
        path: "tests/guests/batch/batch.wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "camp-bench:batch/host.session": super::SessionSlot,
        },
    });
}

pub use bindings::camp_bench::batch::types::Action;

/// The host side of the `session` resource: like the plugin host's, a
/// borrow of "the session of this call" that carries nothing.
pub struct SessionSlot;

/// The `borrow<session>` handed to the `*-session` hooks.
pub fn session_handle() -> Resource<SessionSlot> {
    Resource::new_borrow(0)
}

/// What the store holds: the WASI context and resource table, and the
/// limiter.
pub struct State {
    /// Resources handed to the guest (WASI handles).
    table: ResourceTable,
    /// An empty WASI context.
    wasi: WasiCtx,
    /// Memory and table caps.
    limits: StoreLimits,
    /// The session id `session.id` answers.
    session_id: u64,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::camp_bench::batch::types::Host for State {}

impl bindings::camp_bench::batch::host::Host for State {}

impl bindings::camp_bench::batch::host::HostSession for State {
    fn id(&mut self, _session: Resource<SessionSlot>) -> wasmtime::Result<u64> {
        Ok(self.session_id)
    }

    fn drop(&mut self, _session: Resource<SessionSlot>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// A new store for `engine` holding a fresh [`State`], set up as the
/// plugin host sets up an instance's store.
pub fn store(engine: &Engine, session_id: u64) -> Store<State> {
    let defaults = camp_server::extension::wasm::PluginConfig::default();
    let state = State {
        table: ResourceTable::new(),
        wasi: WasiCtx::builder().build(),
        limits: StoreLimitsBuilder::new()
            .memory_size(defaults.memory_limit_bytes)
            .table_elements(defaults.max_table_elements)
            .build(),
        session_id,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    // The host's callback yields only after a full tick (1 ms) of running
    // and interrupts only past the call's budget: for calls of a few
    // microseconds it goes on, as here.
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Continue(1)));
    store.set_epoch_deadline(1);
    store
}

/// A linker with what the guest may import: WASI p2 (async, as the host
/// links it) and the world's `host` interface.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::Batch::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// One instance of the guest in its own store.
pub struct BatchGuest {
    /// The instance's store.
    pub store: Store<State>,
    /// Its typed exports.
    pub guest: bindings::Batch,
}

impl BatchGuest {
    /// Compiles `wasm` for `engine` and instantiates it (async, as the host
    /// does).
    pub async fn new(engine: &Engine, wasm: &[u8], session_id: u64) -> wasmtime::Result<Self> {
        let component = Component::new(engine, wasm)?;
        let pre = bindings::BatchPre::new(linker(engine)?.instantiate_pre(&component)?)?;
        let mut store = store(engine, session_id);
        let guest = pre.instantiate_async(&mut store).await?;
        Ok(BatchGuest { store, guest })
    }

    /// The pass-through hook, one message.
    pub async fn single(&mut self, id: u64, text: &str) -> wasmtime::Result<Action> {
        self.store.set_epoch_deadline(1);
        self.guest
            .call_on_receive_utf8(&mut self.store, id, text)
            .await
    }

    /// The pass-through hook, a batch.
    pub async fn batch(&mut self, id: u64, texts: &[String]) -> wasmtime::Result<Vec<Action>> {
        self.store.set_epoch_deadline(1);
        self.guest
            .call_on_receive_utf8_batch(&mut self.store, id, texts)
            .await
    }

    /// The pass-through hook given a `borrow<session>`, one message.
    pub async fn session_single(&mut self, text: &str) -> wasmtime::Result<Action> {
        self.store.set_epoch_deadline(1);
        self.guest
            .call_on_receive_utf8_session(&mut self.store, session_handle(), text)
            .await
    }

    /// The pass-through hook given a `borrow<session>`, a batch.
    pub async fn session_batch(&mut self, texts: &[String]) -> wasmtime::Result<Vec<Action>> {
        self.store.set_epoch_deadline(1);
        self.guest
            .call_on_receive_utf8_session_batch(&mut self.store, session_handle(), texts)
            .await
    }

    /// The hook that reads every byte, one message.
    pub async fn scan(&mut self, id: u64, text: &str) -> wasmtime::Result<Action> {
        self.store.set_epoch_deadline(1);
        self.guest.call_scan_utf8(&mut self.store, id, text).await
    }

    /// The hook that reads every byte, a batch.
    pub async fn scan_batch(&mut self, id: u64, texts: &[String]) -> wasmtime::Result<Vec<Action>> {
        self.store.set_epoch_deadline(1);
        self.guest
            .call_scan_utf8_batch(&mut self.store, id, texts)
            .await
    }
}
