//! The JSON path parser never panics, whatever the body.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice::api::json::parse_select(data, 64);
    if let Ok(j) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = sluice::api::json::parse_path(&j, 64);
    }
});
