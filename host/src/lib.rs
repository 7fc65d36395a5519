//! Sluice host: runs WebAssembly modules over durable depots and PStates.
//!
//! Code map (see `ARCHITECTURE.md` for the whole picture):
//! - [`api`]: HTTP+JSON (hyper); the only module that knows HTTP.
//! - [`module`]: the module registry, deploy/undeploy, on-disk layout.
//! - [`runtime`]: wasmtime engine, linker, WIT bindings, sandbox limits; the only module that
//!   knows wasmtime.
//! - [`depot`]: partitioners and the per-partition depot log.
//! - [`pstate`]: schemas, key encoding, paths, the per-partition PState store.
//! - [`topology`]: the partition worker that runs stream topologies.
//! - [`partition`]: the stable hash that maps keys to partitions.
//! - [`value`]: CBOR values and their JSON form.

pub mod api;
pub mod config;
pub mod depot;
pub mod module;
pub mod partition;
pub mod pstate;
pub mod runtime;
pub mod topology;
pub mod value;
