//! End-to-end tests: the real `sluice` binary on a free loopback port with a temporary data
//! directory, driven over HTTP with real `.wasm` modules (built by `make modules`).

mod bad_input;
mod crash;
mod harness;
mod hostile;
mod microbatch;
mod pstates;
mod security;
mod skeleton;
mod topologies;
