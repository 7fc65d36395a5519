//! What the typed API refuses at compile time: each `ui/*.rs` must fail to compile with the
//! diagnostics in its `.stderr` (regenerate with `TRYBUILD=overwrite` after a deliberate
//! change, and read the diff: the messages are part of the API).

#[test]
fn typed_api_misuse_does_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
