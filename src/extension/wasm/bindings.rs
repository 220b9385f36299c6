//! Host bindings generated from `wit/camp-extension.wit`. Exports are
//! called with `call_async` (the guest yields to the runtime every epoch
//! tick, see [`budget`](super::budget)); the host's own imports never
//! block and stay synchronous.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "wit",
    imports: { default: trappable },
    exports: { default: async },
    with: {
        "camp:extension/host.session": super::state::SessionSlot,
    },
});
