//! The example modules' own tests, written with `sluice::testing` the way a module author
//! writes theirs: `cargo test` on the host target, against the module's built `.wasm`.
//! (They live beside each module, and are compiled by the host workspace as the
//! `modules` test target, because the modules' own workspace builds for wasm32-wasip2.)

#[path = "bank/tests/module.rs"]
mod bank;
#[path = "conformance_tests.rs"]
mod conformance;
#[path = "wordcount/tests/module.rs"]
mod wordcount;
