//! CBOR decoding never panics; what decodes re-encodes to an equal value, and converts to JSON.
#![no_main]
use sluice::value::{from_cbor, from_json, to_cbor, to_json};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(v) = from_cbor(data) {
        let again = from_cbor(&to_cbor(&v)).expect("re-encoded CBOR decodes");
        assert_eq!(to_cbor(&again), to_cbor(&v));
        let j = to_json(&v);
        let _ = from_json(&j);
    }
});
