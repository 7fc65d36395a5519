//! The host side of the WIT contract, generated from `wit/` (the same files the guest SDK
//! reads). The only place the generated types are named; the rest of `runtime` converts them.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "module",
    imports: { default: trappable },
});

/// The contract version this host implements; components built against another are refused.
pub const CONTRACT_VERSION: &str = "0.2.0";
