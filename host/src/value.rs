//! Values as they cross every boundary: CBOR bytes between host and guest and on disk,
//! JSON over HTTP.
//!
//! Owns the mapping between the two. CBOR is the richer side; what JSON lacks has a
//! documented object form, recognised only when the object has exactly that one key:
//! - byte strings: `{"$bytes": "<lowercase hex>"}`;
//! - maps whose keys are not all strings: `{"$map": [[key, value], ...]}`.
//!
//! Integers keep their exact value (up to i64/u64); floats that JSON cannot hold (NaN,
//! infinities) become `null`. CBOR tags are dropped (their content is kept).

pub use ciborium::Value;

/// A value could not be decoded or converted.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("invalid CBOR: {0}")]
    Cbor(String),
    #[error("value nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("integer {0} is out of the supported range (i64/u64)")]
    IntegerRange(i128),
    #[error("invalid {0}")]
    Form(String),
}

/// The deepest nesting accepted anywhere a value is decoded.
pub const NESTING_MAX: usize = 64;

/// Decodes CBOR bytes into a value, refusing nesting deeper than [`NESTING_MAX`].
pub fn from_cbor(bytes: &[u8]) -> Result<Value, ValueError> {
    let mut rest = bytes;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, NESTING_MAX + 1)
        .map_err(|e| ValueError::Cbor(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ValueError::Cbor(format!(
            "{} bytes after the value",
            rest.len()
        )));
    }
    Ok(untag(v))
}

/// Drops CBOR tags, keeping their content — except bignums (tags 2 and 3), which become
/// integers when they fit. Without this a value could change type on a round trip (the
/// decoder reads a definite-length bignum as an integer but keeps an indefinite one tagged);
/// found by the `cbor_value` fuzz target.
fn untag(v: Value) -> Value {
    match v {
        Value::Tag(tag @ (2 | 3), inner) => match *inner {
            Value::Bytes(b) if b.len() <= 16 => {
                let n = b.iter().fold(0u128, |n, d| (n << 8) | u128::from(*d));
                let n = i128::try_from(n)
                    .ok()
                    .map(|n| if tag == 2 { n } else { -1 - n });
                match n.and_then(|n| ciborium::value::Integer::try_from(n).ok()) {
                    Some(i) => Value::Integer(i),
                    None => Value::Bytes(b),
                }
            }
            other => untag(other),
        },
        Value::Tag(_, inner) => untag(*inner),
        Value::Array(items) => Value::Array(items.into_iter().map(untag).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (untag(k), untag(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Encodes a value as CBOR.
pub fn to_cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    ciborium::ser::into_writer(value, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}

/// Converts a value to JSON (see the module docs for the forms used).
pub fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Integer(i) => {
            let i = i128::from(*i);
            if let Ok(v) = i64::try_from(i) {
                J::from(v)
            } else if let Ok(v) = u64::try_from(i) {
                J::from(v)
            } else {
                J::String(i.to_string())
            }
        }
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Text(s) => J::String(s.clone()),
        Value::Bytes(b) => {
            let mut o = serde_json::Map::new();
            o.insert("$bytes".into(), J::String(hex(b)));
            J::Object(o)
        }
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            if entries.iter().all(|(k, _)| matches!(k, Value::Text(_))) {
                let mut o = serde_json::Map::new();
                for (k, v) in entries {
                    if let Value::Text(k) = k {
                        o.insert(k.clone(), to_json(v));
                    }
                }
                J::Object(o)
            } else {
                let pairs = entries
                    .iter()
                    .map(|(k, v)| J::Array(vec![to_json(k), to_json(v)]))
                    .collect();
                let mut o = serde_json::Map::new();
                o.insert("$map".into(), J::Array(pairs));
                J::Object(o)
            }
        }
        Value::Tag(_, inner) => to_json(inner),
        _ => J::Null,
    }
}

/// Converts JSON to a value (see the module docs for the forms recognised).
pub fn from_json(json: &serde_json::Value) -> Result<Value, ValueError> {
    from_json_depth(json, 0)
}

fn from_json_depth(json: &serde_json::Value, depth: usize) -> Result<Value, ValueError> {
    use serde_json::Value as J;
    if depth > NESTING_MAX {
        return Err(ValueError::TooDeep { max: NESTING_MAX });
    }
    Ok(match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Integer(u.into())
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::Text(s.clone()),
        J::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| from_json_depth(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(o) => {
            if o.len() == 1 {
                if let Some(J::String(h)) = o.get("$bytes") {
                    return unhex(h)
                        .map(Value::Bytes)
                        .ok_or_else(|| ValueError::Form("$bytes: expected lowercase hex".into()));
                }
                if let Some(pairs) = o.get("$map") {
                    let J::Array(pairs) = pairs else {
                        return Err(ValueError::Form(
                            "$map: expected [[key, value], ...]".into(),
                        ));
                    };
                    let mut entries = Vec::with_capacity(pairs.len());
                    for p in pairs {
                        match p {
                            J::Array(kv) if kv.len() == 2 => entries.push((
                                from_json_depth(&kv[0], depth + 1)?,
                                from_json_depth(&kv[1], depth + 1)?,
                            )),
                            _ => {
                                return Err(ValueError::Form(
                                    "$map: expected [[key, value], ...]".into(),
                                ))
                            }
                        }
                    }
                    return Ok(Value::Map(entries));
                }
            }
            Value::Map(
                o.iter()
                    .map(|(k, v)| Ok((Value::Text(k.clone()), from_json_depth(v, depth + 1)?)))
                    .collect::<Result<_, ValueError>>()?,
            )
        }
    })
}

/// A short name of the value's type, for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Integer(_) => "int",
        Value::Float(_) => "float",
        Value::Text(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Array(_) => "list",
        Value::Map(_) => "map",
        Value::Tag(_, _) => "tagged value",
        _ => "unknown",
    }
}

/// The value of a text-keyed entry of a map value (`None`: not a map, or no such entry).
pub fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    match value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(s) if s == name))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// The value as an i64, if it is an integer in range.
pub fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(i) => i64::try_from(i128::from(*i)).ok(),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_cbor() {
        let j = json!({"word": "apple", "n": -5, "big": u64::MAX, "f": 1.5, "l": [1, null, true],
                       "b": {"$bytes": "00ff10"}, "m": {"$map": [[1, "one"], [2, "two"]]}});
        let v = from_json(&j).unwrap();
        let back = to_json(&from_cbor(&to_cbor(&v)).unwrap());
        assert_eq!(back, j);
    }

    #[test]
    fn refuses_bad_forms_and_deep_nesting() {
        assert!(from_json(&json!({"$bytes": "xyz"})).is_err());
        assert!(from_json(&json!({"$map": [[1]]})).is_err());
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        assert!(matches!(from_json(&deep), Err(ValueError::TooDeep { .. })));
        assert!(from_cbor(&[0xff, 0x00]).is_err());
    }

    #[test]
    fn tags_are_dropped_and_bignums_stay_integers_across_round_trips() {
        // An indefinite-length negative bignum (fuzz crash input, `fuzz/artifacts/cbor_value`).
        let input = [0xc3, 0x5f, 0x42, 0x42, 0x3d, 0xff, 0xff];
        let v = from_cbor(&input[..6]).unwrap();
        assert_eq!(v, Value::Integer((-1 - 0x423d_i64).into()));
        assert_eq!(from_cbor(&to_cbor(&v)).unwrap(), v);
        assert!(from_cbor(&input).is_err(), "trailing garbage");
        let tagged_text = [0xd8, 0x20, 0x61, 0x61]; // tag 32 (URI) around "a"
        assert_eq!(from_cbor(&tagged_text).unwrap(), Value::Text("a".into()));
    }
}
