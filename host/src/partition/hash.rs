//! Which partition a key belongs to.
//!
//! Owns the one stable hash every router uses: depots partitioned by `hash` and PStates
//! (partitioned by their top-level key) call [`partition_of`] on the key's order-preserving
//! encoding ([`crate::pstate::key`]), so a topology handling key K runs where K's PState entries
//! live. Invariant: the function is fixed forever (FNV-1a 64 over the bytes, then the splitmix64
//! finalizer so the low bits are well mixed, then modulo the partition count); changing it would
//! move keys between partitions of existing data.

/// The stable 64-bit hash of a key's encoded bytes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // splitmix64 finalizer
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The partition (of `partitions`) that owns the key whose encoding is `key_bytes`.
pub fn partition_of(key_bytes: &[u8], partitions: u32) -> u32 {
    (stable_hash(key_bytes) % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fixed_forever() {
        // These values pin the function: if they change, existing data is routed wrongly.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash(b"apple"), 0xba8e_799d_ceb3_bcb1);
        assert_eq!(partition_of(b"apple", 8), 1);
    }

    /// Where 30,000 keys (strings, integers, composite keys) land on 8 and 7 partitions, folded
    /// into one number. The guest SDK's `partition_of_key` (which modules use to group hops by
    /// partition) pins the same fingerprint in `guest-sdk/src/partition.rs`.
    #[test]
    fn fingerprint_shared_with_the_guest_sdk() {
        use crate::pstate::partition_of_key;
        use crate::value::Value;
        let mut acc: u64 = 0;
        for i in 0..10_000i64 {
            let s = Value::Text(format!("u{i}"));
            let n = Value::Integer(i.into());
            let pair = Value::Array(vec![n.clone(), s.clone()]);
            for p in [8, 7] {
                for k in [&s, &n, &pair] {
                    let q = partition_of_key(k, p).unwrap();
                    acc = acc.wrapping_mul(31).wrapping_add(u64::from(q));
                }
            }
        }
        assert_eq!(acc, 1_065_759_859_041_447_187);
    }

    #[test]
    fn spreads_keys_evenly() {
        let mut counts = [0u32; 8];
        for i in 0..8000u32 {
            counts[partition_of(format!("key-{i}").as_bytes(), 8) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
