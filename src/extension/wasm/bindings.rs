//! Host bindings generated from the WIT: the current contract
//! (`wit/camp-extension.wit`, `camp:extension@0.2.1`) and every older
//! minor version the host still loads (`wit/0.1.0/`), per the WIT's
//! compatibility rule. Older patch versions of the current minor
//! (`wit/0.2.0/`) need no binding: wasmtime's component `Linker` resolves
//! an import of `camp:extension/host@0.2.0` to the `@0.2.1` definitions
//! by semver, and 0.2.1 only added host functions.
//!
//! Exports are called with `call_async` (the guest yields to the runtime
//! every epoch tick, see [`budget`](super::budget)); the host's own
//! imports never block and stay synchronous.

/// The version of the current contract, `wit/camp-extension.wit`.
pub const CURRENT_WIT_VERSION: &str = "0.2.1";

/// `camp:extension@0.2.1`, the current contract (it also serves plugins
/// built against 0.2.0).
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
