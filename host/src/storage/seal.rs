//! Seals: a CRC-32 (IEEE, hardware-accelerated by `crc32fast`) stored in the first 4 bytes
//! (little-endian) of every depot record and PState entry value, computed over the table name,
//! the key and the payload. A bit flipped in the value, or in the key (the entry then sits
//! under a key its seal does not cover), or an entry moved to another table, fails the check.
//!
//! Invariant: [`unseal`] returns a payload only if its seal matches; callers turn a mismatch
//! into a damage error naming the file, table and key ([`super::DbFile::damaged`]).

/// Bytes a seal adds to every value.
pub const SEAL_BYTES: usize = 4;

fn crc(table: &str, key: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(table.len() as u32).to_le_bytes());
    h.update(table.as_bytes());
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(payload);
    h.finalize()
}

/// The stored form of `payload` under `key` in `table`.
pub fn seal(table: &str, key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEAL_BYTES + payload.len());
    out.extend_from_slice(&crc(table, key, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Why a stored value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the value is {0} bytes, shorter than its seal")]
    Short(usize),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Mismatch { stored: u32, computed: u32 },
}

/// The payload of a stored value, if its seal matches.
pub fn unseal<'a>(table: &str, key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], SealError> {
    if stored.len() < SEAL_BYTES {
        return Err(SealError::Short(stored.len()));
    }
    let (head, payload) = stored.split_at(SEAL_BYTES);
    let stored_crc = u32::from_le_bytes(head.try_into().expect("4 bytes"));
    let computed = crc(table, key, payload);
    if stored_crc != computed {
        return Err(SealError::Mismatch {
            stored: stored_crc,
            computed,
        });
    }
    Ok(payload)
}

/// A key as it appears in a damage report: hex, cut at 64 bytes.
pub fn show_key(key: &[u8]) -> String {
    let hex: String = key.iter().take(64).map(|b| format!("{b:02x}")).collect();
    if key.len() > 64 {
        format!("0x{hex}… ({} bytes)", key.len())
    } else {
        format!("0x{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flip_anywhere_is_caught() {
        let sealed = seal("pstate/counts", b"apple", b"\x18\x14");
        assert_eq!(
            unseal("pstate/counts", b"apple", &sealed).unwrap(),
            b"\x18\x14"
        );
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    unseal("pstate/counts", b"apple", &bad).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
        assert!(
            unseal("pstate/counts", b"applf", &sealed).is_err(),
            "other key"
        );
        assert!(
            unseal("pstate/other", b"apple", &sealed).is_err(),
            "other table"
        );
        assert_eq!(unseal("t", b"k", b"ab"), Err(SealError::Short(2)));
        assert_eq!(show_key(&[0xab; 2]), "0xabab");
        assert!(show_key(&[0; 100]).ends_with("(100 bytes)"));
    }
}
