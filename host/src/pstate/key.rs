//! The order-preserving key encoding: how a key value becomes the bytes redb sorts by.
//!
//! Invariant: for keys `a` and `b` of the same type, `encode(a) < encode(b)` (bytewise) exactly
//! when `a < b` in the key's natural order, and `decode(encode(k)) == k`. Layout, one tag byte
//! then the body (the full diagram is in `docs/key-encoding.md`):
//!
//! ```text
//! null    0x01
//! false   0x02            true 0x03
//! int     0x10 | i64 big-endian with the sign bit flipped (8 bytes)
//! float   0x20 | f64 bits, sign bit flipped if positive, all bits flipped if negative (8 bytes)
//! string  0x30 | UTF-8 bytes, 0x00 escaped as 0x00 0xff | 0x00 0x00
//! bytes   0x40 | bytes,       0x00 escaped as 0x00 0xff | 0x00 0x00
//! list    0x50 | each element's encoding ... | 0x00      (composite keys, compared by component)
//! ```
//! Types order by tag (null < bool < int < float < string < bytes < list). Maps are not keys.

use super::super::value::{as_i64, type_name, Value};

const NULL: u8 = 0x01;
const FALSE: u8 = 0x02;
const TRUE: u8 = 0x03;
const INT: u8 = 0x10;
const FLOAT: u8 = 0x20;
const TEXT: u8 = 0x30;
const BYTES: u8 = 0x40;
const LIST: u8 = 0x50;

/// A value that cannot be a key, or bytes that are not an encoded key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyError {
    #[error("a {0} cannot be a key")]
    NotAKey(&'static str),
    #[error("key integer out of the i64 range")]
    IntegerRange,
    #[error("corrupt key bytes")]
    Corrupt,
}

/// Encodes a key value into its order-preserving bytes.
pub fn encode(key: &Value) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(16);
    encode_into(key, &mut out)?;
    Ok(out)
}

fn encode_into(key: &Value, out: &mut Vec<u8>) -> Result<(), KeyError> {
    match key {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Integer(_) => {
            let i = as_i64(key).ok_or(KeyError::IntegerRange)?;
            out.push(INT);
            out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Float(f) => {
            let bits = f.to_bits();
            let ordered = if bits >> 63 == 0 {
                bits ^ (1 << 63)
            } else {
                !bits
            };
            out.push(FLOAT);
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::Text(s) => {
            out.push(TEXT);
            escape_into(s.as_bytes(), out);
        }
        Value::Bytes(b) => {
            out.push(BYTES);
            escape_into(b, out);
        }
        Value::Array(items) => {
            out.push(LIST);
            for i in items {
                encode_into(i, out)?;
            }
            out.push(0);
        }
        Value::Tag(_, inner) => encode_into(inner, out)?,
        other => return Err(KeyError::NotAKey(type_name(other))),
    }
    Ok(())
}

fn escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The length of the first encoded key in `bytes` (keys are self-delimiting).
pub fn first_len(bytes: &[u8]) -> Option<usize> {
    decode_one(bytes)
        .ok()
        .map(|(_, rest)| bytes.len() - rest.len())
}

/// Decodes bytes produced by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Value, KeyError> {
    let (v, rest) = decode_one(bytes)?;
    if !rest.is_empty() {
        return Err(KeyError::Corrupt);
    }
    Ok(v)
}

fn decode_one(bytes: &[u8]) -> Result<(Value, &[u8]), KeyError> {
    let (&tag, rest) = bytes.split_first().ok_or(KeyError::Corrupt)?;
    let fixed8 = |rest: &[u8]| -> Result<(u64, usize), KeyError> {
        let b: [u8; 8] = rest.get(..8).ok_or(KeyError::Corrupt)?.try_into().unwrap();
        Ok((u64::from_be_bytes(b), 8))
    };
    match tag {
        NULL => Ok((Value::Null, rest)),
        FALSE => Ok((Value::Bool(false), rest)),
        TRUE => Ok((Value::Bool(true), rest)),
        INT => {
            let (u, n) = fixed8(rest)?;
            Ok((Value::Integer(((u ^ (1 << 63)) as i64).into()), &rest[n..]))
        }
        FLOAT => {
            let (u, n) = fixed8(rest)?;
            let bits = if u >> 63 == 1 { u ^ (1 << 63) } else { !u };
            Ok((Value::Float(f64::from_bits(bits)), &rest[n..]))
        }
        TEXT | BYTES => {
            let (raw, rest) = unescape(rest)?;
            if tag == TEXT {
                let s = String::from_utf8(raw).map_err(|_| KeyError::Corrupt)?;
                Ok((Value::Text(s), rest))
            } else {
                Ok((Value::Bytes(raw), rest))
            }
        }
        LIST => {
            let mut items = Vec::new();
            let mut rest = rest;
            loop {
                match rest.first() {
                    Some(0) => return Ok((Value::Array(items), &rest[1..])),
                    Some(_) => {
                        let (v, r) = decode_one(rest)?;
                        items.push(v);
                        rest = r;
                    }
                    None => return Err(KeyError::Corrupt),
                }
            }
        }
        _ => Err(KeyError::Corrupt),
    }
}

fn unescape(bytes: &[u8]) -> Result<(Vec<u8>, &[u8]), KeyError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0 {
            match bytes.get(i + 1) {
                Some(0) => return Ok((out, &bytes[i + 2..])),
                Some(0xff) => {
                    out.push(0);
                    i += 2;
                }
                _ => return Err(KeyError::Corrupt),
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Err(KeyError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(i: i64) -> Value {
        Value::Integer(i.into())
    }

    #[test]
    fn integers_sort_numerically_including_negatives() {
        let xs = [i64::MIN, -1_000_000, -2, -1, 0, 1, 2, 255, 256, i64::MAX];
        let enc: Vec<_> = xs.iter().map(|&i| encode(&int(i)).unwrap()).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        for (i, e) in xs.iter().zip(&enc) {
            assert_eq!(decode(e).unwrap(), int(*i));
        }
    }

    #[test]
    fn strings_sort_bytewise_and_prefixes_first() {
        let xs = ["", "\0", "\0\0", "a", "a\0", "a\0b", "ab", "b", "é"];
        let enc: Vec<_> = xs
            .iter()
            .map(|s| encode(&Value::Text((*s).into())).unwrap())
            .collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]), "{enc:?}");
        for (s, e) in xs.iter().zip(&enc) {
            assert_eq!(decode(e).unwrap(), Value::Text((*s).into()));
        }
    }

    #[test]
    fn floats_and_composites_sort() {
        let fs = [f64::NEG_INFINITY, -2.5, -0.0, 0.0, 1e-9, 3.0, f64::INFINITY];
        let enc: Vec<_> = fs
            .iter()
            .map(|&f| encode(&Value::Float(f)).unwrap())
            .collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        let k = |a: &str, b: i64| Value::Array(vec![Value::Text(a.into()), int(b)]);
        let ks = [k("a", -1), k("a", 5), k("ab", -9), k("b", 0)];
        let enc: Vec<_> = ks.iter().map(|v| encode(v).unwrap()).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(decode(&enc[1]).unwrap(), ks[1]);
        assert_eq!(encode(&Value::Map(vec![])), Err(KeyError::NotAKey("map")));
        assert_eq!(decode(&[TEXT, b'a']), Err(KeyError::Corrupt));
    }
}
