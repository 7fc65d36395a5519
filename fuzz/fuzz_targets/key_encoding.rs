//! Keys: decode(encode(k)) == k, encodings of two keys order like the keys, and decoding
//! arbitrary bytes never panics.
#![no_main]
use sluice::pstate::key::{decode, encode};
use sluice::value::from_cbor;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    let (a, b) = data.split_at(data.len() / 2);
    let (Ok(a), Ok(b)) = (from_cbor(a), from_cbor(b)) else {
        return;
    };
    let (Ok(ea), Ok(eb)) = (encode(&a), encode(&b)) else {
        return;
    };
    assert_eq!(
        encode(&decode(&ea).expect("own encoding decodes")).unwrap(),
        ea
    );
    assert_eq!(ea == eb, encode(&decode(&eb).unwrap()).unwrap() == ea);
    // Same-typed integers and strings must order like their values.
    use sluice::value::Value;
    match (&a, &b) {
        (Value::Integer(x), Value::Integer(y)) => {
            if let (Ok(x), Ok(y)) = (i64::try_from(i128::from(*x)), i64::try_from(i128::from(*y))) {
                assert_eq!(x.cmp(&y), ea.cmp(&eb));
            }
        }
        (Value::Text(x), Value::Text(y)) => assert_eq!(x.as_bytes().cmp(y.as_bytes()), ea.cmp(&eb)),
        _ => {}
    }
});
