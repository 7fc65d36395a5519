//! Sluice host: runs WebAssembly modules over durable depots and PStates.
//!
//! Code map (see `ARCHITECTURE.md` for the whole picture):
//! - [`api`]: HTTP+JSON (hyper); the only module that knows HTTP.
//! - [`module`]: the module registry, deploy/undeploy, on-disk layout.
//! - [`imports`]: the host imports: what a handler or a query may do.
//! - [`runtime`]: wasmtime engine, linker, WIT bindings, sandbox limits; the only module that
//!   knows wasmtime.
//! - [`depot`]: partitioners and the per-partition depot log.
//! - [`pstate`]: schemas, key encoding, paths, the per-partition PState store.
//! - [`partition`]: the partition state machine: commit protocol, hops, recovery, worker.
//! - [`topology`]: topology declarations and the microbatch coordinator.
//! - [`query`]: query topologies: read-only guest calls over every partition's snapshots.
//! - [`metrics`]: counters and histograms, rendered in the Prometheus text format.
//! - [`client`]: a small blocking HTTP client of the API (the CLI, the load generator, tests).
//! - [`cli`]: the client subcommands of the `sluice` binary (deploy, append, select, ...).
//! - [`testing`]: an in-process host for module authors' `cargo test` tests.
//! - [`value`]: CBOR values and their JSON form.
//! - [`subscription`]: reactive queries: a path's value, then its diffs after each commit.
//! - [`cluster`]: hosts on NATS JetStream: replicated partition logs, ownership by fence,
//!   membership (`sluice serve --cluster`).
//! - [`storage`]: redb files: headers (format, identity), seals (checksums), reopening,
//!   offline checks.
//! - [`journal`]: one append-only log shared by many writers, made durable by group commit
//!   (one fsync for every writer waiting); not yet written through (issue 15).

pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod depot;
pub mod imports;
pub mod journal;
pub mod metrics;
pub mod module;
pub mod partition;
pub mod pstate;
pub mod query;
pub mod runtime;
pub mod storage;
pub mod subscription;
pub mod testing;
pub mod topology;
pub mod value;
