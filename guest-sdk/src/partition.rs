//! Which partition owns a key, computed inside the module exactly as the host computes it.
//!
//! Owns [`partition_of_key`], a mirror of the host's `partition::partition_of` over the host's
//! order-preserving key encoding (`host/src/partition.rs`, `host/src/pstate/key.rs`,
//! `docs/key-encoding.md`). A handler that must reach many keys (a post fanned out to 100,000
//! followers) groups them by partition ([`group_by_partition`]) and sends one
//! [`HopTarget::Partition`] hop per group instead of one hop per key. Invariant: for every key value and partition count, the result
//! equals the partition the host routes [`HopTarget::Key`] hops, depot records and PState keys
//! to; both sides pin the same hash and encoding values in their tests, and the social module's
//! end-to-end tests fail with `wrong-partition` if they ever disagree.
//!
//! [`HopTarget::Partition`]: crate::HopTarget::Partition
//! [`HopTarget::Key`]: crate::HopTarget::Key

use std::collections::BTreeMap;

use ciborium::Value;
use serde::Serialize;

use crate::{Error, Result};

/// The partition (of `partitions`) that owns the key `key`: where [`HopTarget::Key`] sends a
/// hop, where a `hash` depot routes a record whose field is `key`, and where PState entries
/// under the top-level key `key` live. `partitions` is [`RecordInfo::partitions`] in a handler
/// or [`QueryCtx::partitions`] in a query. Fails on values that cannot be keys (maps, integers
/// beyond the i64 range), like the host.
///
/// [`HopTarget::Key`]: crate::HopTarget::Key
/// [`RecordInfo::partitions`]: crate::RecordInfo::partitions
/// [`QueryCtx::partitions`]: crate::QueryCtx::partitions
pub fn partition_of_key<K: Serialize + ?Sized>(key: &K, partitions: u32) -> Result<u32> {
    // The host sees the key as CBOR decoded into a value: go through the same bytes.
    let value: Value = crate::decode(&crate::encode(key)?, "the key")?;
    let mut bytes = Vec::with_capacity(16);
    encode_key(&value, &mut bytes)?;
    Ok(partition_of(&bytes, partitions))
}

/// `keys` grouped by the partition (of `partitions`) owning each, partitions in ascending
/// order and keys in the order given: for a fan-out that sends one
/// [`HopTarget::Partition`] hop per group instead of one hop per key.
///
/// ```
/// let groups = sluice_sdk::group_by_partition(["ann", "bob", "cy"], 4)?;
/// assert_eq!(groups.values().map(Vec::len).sum::<usize>(), 3);
/// # Ok::<(), sluice_sdk::Error>(())
/// ```
///
/// [`HopTarget::Partition`]: crate::HopTarget::Partition
pub fn group_by_partition<K: Serialize>(
    keys: impl IntoIterator<Item = K>,
    partitions: u32,
) -> Result<BTreeMap<u32, Vec<K>>> {
    let mut groups: BTreeMap<u32, Vec<K>> = BTreeMap::new();
    for k in keys {
        groups
            .entry(partition_of_key(&k, partitions)?)
            .or_default()
            .push(k);
    }
    Ok(groups)
}

/// The stable 64-bit hash of a key's encoded bytes: FNV-1a 64, then the splitmix64 finalizer.
fn stable_hash(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn partition_of(key_bytes: &[u8], partitions: u32) -> u32 {
    (stable_hash(key_bytes) % u64::from(partitions.max(1))) as u32
}

const NULL: u8 = 0x01;
const FALSE: u8 = 0x02;
const TRUE: u8 = 0x03;
const INT: u8 = 0x10;
const FLOAT: u8 = 0x20;
const TEXT: u8 = 0x30;
const BYTES: u8 = 0x40;
const LIST: u8 = 0x50;

/// The host's order-preserving key encoding (`docs/key-encoding.md`).
fn encode_key(key: &Value, out: &mut Vec<u8>) -> Result<()> {
    match key {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Integer(i) => {
            let i = i64::try_from(i128::from(*i))
                .map_err(|_| Error::new("not-a-key", "key integer out of the i64 range"))?;
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
                encode_key(i, out)?;
            }
            out.push(0);
        }
        Value::Tag(_, inner) => encode_key(inner, out)?,
        Value::Map(_) => return Err(Error::new("not-a-key", "a map cannot be a key")),
        _ => return Err(Error::new("not-a-key", "this value cannot be a key")),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<K: Serialize + ?Sized>(k: &K) -> Vec<u8> {
        let v: Value = crate::decode(&crate::encode(k).unwrap(), "key").unwrap();
        let mut out = Vec::new();
        encode_key(&v, &mut out).unwrap();
        out
    }

    #[test]
    fn hash_matches_the_hosts_pinned_values() {
        // The same values `host/src/partition.rs` pins.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash(b"apple"), 0xba8e_799d_ceb3_bcb1);
        assert_eq!(partition_of(b"apple", 8), 1);
    }

    #[test]
    fn encoding_matches_the_documented_layout() {
        // The examples drawn in `docs/key-encoding.md`.
        assert_eq!(enc("ab"), [0x30, 0x61, 0x62, 0, 0]);
        assert_eq!(enc("a\0"), [0x30, 0x61, 0, 0xff, 0, 0]);
        assert_eq!(
            enc(&-1i64),
            [0x10, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(enc(&0u8), [0x10, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            enc(&(1i64, "a")),
            [0x50, 0x10, 0x80, 0, 0, 0, 0, 0, 0, 1, 0x30, 0x61, 0, 0, 0]
        );
        assert_eq!(enc(&Option::<u8>::None), [0x01]);
        assert_eq!(enc(&true), [0x03]);
        assert!(partition_of_key(&std::collections::BTreeMap::from([(1, 2)]), 8).is_err());
        assert!(partition_of_key(&u64::MAX, 8).is_err());
    }

    /// A fingerprint of where 30,000 keys (strings, integers, composite keys) land on 8 and
    /// 7 partitions; `host/src/partition.rs` pins the same number for its own function.
    #[test]
    fn agrees_with_the_host_on_many_keys() {
        let mut acc: u64 = 0;
        for i in 0..10_000i64 {
            let s = format!("u{i}");
            for p in [8, 7] {
                for q in [
                    partition_of_key(&s, p).unwrap(),
                    partition_of_key(&i, p).unwrap(),
                    partition_of_key(&(i, s.as_str()), p).unwrap(),
                ] {
                    acc = acc.wrapping_mul(31).wrapping_add(u64::from(q));
                }
            }
        }
        assert_eq!(acc, 1_065_759_859_041_447_187, "fingerprint");
    }

    #[test]
    fn groups_keys_by_their_partition() {
        let keys: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        let groups = group_by_partition(keys.iter(), 8).unwrap();
        assert_eq!(groups.values().map(Vec::len).sum::<usize>(), 100);
        let position = |k: &String| keys.iter().position(|x| x == k).unwrap();
        for (p, ks) in &groups {
            assert!(
                ks.windows(2).all(|w| position(w[0]) < position(w[1])),
                "keys keep their order"
            );
            for k in ks {
                assert_eq!(partition_of_key(k, 8).unwrap(), *p);
            }
        }
        assert!(group_by_partition([u64::MAX], 8).is_err());
    }

    #[test]
    fn every_key_lands_in_range() {
        for p in [1, 2, 3, 8, 1024] {
            for i in 0..1000 {
                assert!(partition_of_key(&format!("u{i}"), p).unwrap() < p);
            }
        }
    }
}
