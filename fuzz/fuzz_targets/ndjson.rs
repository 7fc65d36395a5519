//! The NDJSON append parser never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice::api::json::parse_ndjson(data, 1000);
});
