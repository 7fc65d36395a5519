//! The host side of the WIT contract, generated from `wit/` (the same files the guest SDK
//! reads). The only place the generated types are named; the rest of `runtime` converts them.
//!
//! Two worlds: `module` (what every component exports) and `module-ext` (which adds the
//! optional `extensions` interface). The second reuses the first's types and host
//! interface, so a component of either world runs on the same linker.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "module",
    imports: { default: trappable },
});

/// The `extensions` interface, found in a component when it exports it.
pub mod ext {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "module-ext",
        imports: { default: trappable },
        with: {
            "sluice:module/types": super::sluice::module::types,
            "sluice:module/host": super::sluice::module::host,
        },
    });

    pub use exports::sluice::module::extensions::{
        ExtensionsDef, Guest as Extensions, GuestIndices as ExtensionsIndices, RetentionDef,
        TickDef,
    };
}

/// The contract version this host implements; components built against another are refused.
pub const CONTRACT_VERSION: &str = "0.2.0";
