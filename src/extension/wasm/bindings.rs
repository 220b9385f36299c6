//! Host bindings generated from the WIT: the current contract
//! (`wit/camp-extension.wit`, `camp:extension@0.2.0`) and every older
//! version the host still loads (`wit/0.1.0/`), per the WIT's
//! compatibility rule. Exports are called with `call_async` (the guest
//! yields to the runtime every epoch tick, see [`budget`](super::budget));
//! the host's own imports never block and stay synchronous.

/// `camp:extension@0.2.0`, the current contract.
pub mod latest {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "wit/camp-extension.wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "camp:extension/host.session": crate::extension::wasm::state::SessionSlot,
        },
    });
}

/// `camp:extension@0.1.0`: plugins built before the session notifications
/// could be declared.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "wit/0.1.0/camp-extension.wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "camp:extension/host.session": crate::extension::wasm::state::SessionSlot,
        },
    });
}
