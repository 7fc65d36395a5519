//! End-to-end tests: the real `sluice` binary on a free loopback port with a temporary data
//! directory, driven over HTTP with real `.wasm` modules (built by `make modules`).

mod bad_input;
mod cli;
mod cluster;
mod conformance;
mod crash;
mod crash_hops;
mod damage;
mod dead_letters;
mod disk_full;
mod global_ticks;
mod harness;
mod hostile;
mod idempotency;
mod microbatch;
mod migration;
mod nats;
mod observability;
mod openapi;
mod pstates;
mod queries;
mod retention;
mod security;
mod skeleton;
mod slow_clients;
mod social;
mod subscriptions;
mod topologies;
mod update;
mod writers;
