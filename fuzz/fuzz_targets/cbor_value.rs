//! CBOR decoding never panics; what decodes re-encodes to bytes that decode to the same value
//! (so a stored value never changes type), and converts to JSON and back without panicking.
#![no_main]
use sluice::value::{from_cbor, from_json, to_cbor, to_json};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(v) = from_cbor(data) {
        let again = from_cbor(&to_cbor(&v)).expect("re-encoded CBOR decodes");
        assert_eq!(
            to_cbor(&again),
            to_cbor(&v),
            "a decoded value survives a round trip unchanged"
        );
        let j = to_json(&v);
        let _ = from_json(&j);
    }
});
