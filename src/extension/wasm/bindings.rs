//! Host bindings generated from `wit/camp-extension.wit` (synchronous
//! calls: the fastest path in wasmtime 48 when component-model async is
//! not used).

wasmtime::component::bindgen!({
    world: "plugin",
    path: "wit",
    imports: { default: trappable },
    with: {
        "camp:extension/host.session": super::state::SessionSlot,
    },
});
