//! The depot log: one redb file per (module, partition) holding that partition's records of
//! every depot of the module.
//!
//! Table `depot/<name>` maps a dense offset (0, 1, 2, …) to the record as CBOR, sealed
//! ([`crate::storage::seal`]; the key sealed is the offset, big-endian). Invariants:
//! offsets of a depot partition are dense and never reused; only the partition's worker appends;
//! an append is acknowledged only after the commit holding it returned with fsync
//! (`Durability::Immediate`).
//!
//! Retention: table `depot-bounds` maps a depot to `(start, end)` once it was trimmed: records
//! below `start` are gone, and `end` keeps the next offset even when every record is trimmed
//! (so offsets are never reused). Table `depot-times` maps `(depot, offset)` to the time (ms
//! since the epoch) of the append commit that stored that offset first, for age bounds.
//! [`DepotLog::trim`] removes records in one durable transaction, at most
//! [`TRIM_RECORDS_MAX`] at a time; it never goes past the offset its caller must keep.
//!
//! Idempotency keys: table `idempotency` maps `depot ‖ 0 ‖ key` to the offset its record got,
//! the record's fingerprint and the time (ms since the epoch) it was stored, sealed; it is
//! written in the same transaction as the record, so a key is present exactly when its record
//! is. Table `idempotency-expiry` orders keys by time; every keyed append removes a few entries
//! older than the window, and a lookup ignores an expired entry not yet removed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Durability, ReadableTable, TableDefinition};

use crate::storage::seal::{seal, show_key, unseal};
use crate::storage::{DbFile, FileError, FileKind};

fn table_name(depot: &str) -> String {
    format!("depot/{depot}")
}

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const BOUNDS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("depot-bounds");
const TIMES: TableDefinition<(&str, u64), u64> = TableDefinition::new("depot-times");
/// The most records one [`DepotLog::trim`] removes (one transaction; the rest go later).
pub const TRIM_RECORDS_MAX: u64 = 10_000;
const KEYS_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("idempotency-expiry");
/// Expired keys one append removes at most (the rest go with later appends).
const EXPIRED_PER_APPEND_MAX: usize = 64;

/// The default idempotency window: how long a key is remembered.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 24 * 3600 * 1000;

fn key_entry(depot: &str, key: &str) -> String {
    format!("{depot}\0{key}")
}

/// The time stored in a sealed key entry (seal, then offset, fingerprint, time).
fn entry_time(stored: &[u8]) -> Option<u64> {
    let at = crate::storage::seal::SEAL_BYTES + 16;
    stored
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A record's idempotency key, written with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRecord<'a> {
    /// Index of the record in the appended batch.
    pub index: usize,
    pub key: &'a str,
    pub fingerprint: u64,
}

/// What a stored idempotency key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFound {
    pub offset: u64,
    pub fingerprint: u64,
}

/// One partition's depot log.
pub struct DepotLog {
    db: DbFile,
    /// How long idempotency keys are remembered.
    window_ms: AtomicU64,
}

impl DepotLog {
    /// Opens or creates a log outside a module's layout (tests, tools).
    pub fn open(path: &Path) -> Result<Self, FileError> {
        Ok(Self::from_file(DbFile::open(path, FileKind::DepotLog)?))
    }

    /// A log over an opened file (see [`crate::storage`]).
    pub fn from_file(db: DbFile) -> Self {
        Self {
            db,
            window_ms: AtomicU64::new(IDEMPOTENCY_WINDOW_MS_DEFAULT),
        }
    }

    /// Sets how long idempotency keys are remembered.
    pub fn set_idempotency_window_ms(&self, ms: u64) {
        self.window_ms.store(ms, Ordering::Relaxed);
    }

    /// The record stored under idempotency key `key` of `depot` within the window, if any.
    pub fn find_key(&self, depot: &str, key: &str) -> Result<Option<KeyFound>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(KEYS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let entry = key_entry(depot, key);
        let Some(v) = table.get(entry.as_str())? else {
            return Ok(None);
        };
        let payload = unseal("idempotency", entry.as_bytes(), v.value()).map_err(|e| {
            self.db
                .damaged("idempotency", &show_key(entry.as_bytes()), e)
        })?;
        let word = |i: usize| {
            payload
                .get(i * 8..i * 8 + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let (Some(offset), Some(fingerprint), Some(time)) = (word(0), word(1), word(2)) else {
            return Err(self
                .db
                .damaged("idempotency", &show_key(entry.as_bytes()), "short entry"));
        };
        if now_ms().saturating_sub(time) > self.window_ms.load(Ordering::Relaxed) {
            return Ok(None);
        }
        Ok(Some(KeyFound {
            offset,
            fingerprint,
        }))
    }

    /// Writes the keys of appended records (their offsets known) and removes a few expired
    /// ones, inside the append's transaction.
    fn write_keys(
        &self,
        txn: &redb::WriteTransaction,
        records: &[(&str, &[u8])],
        offsets: &[u64],
        keys: &[KeyedRecord<'_>],
    ) -> Result<(), redb::Error> {
        let now = now_ms();
        let mut table = txn.open_table(KEYS)?;
        let mut by_time = txn.open_table(KEYS_BY_TIME)?;
        let horizon = now.saturating_sub(self.window_ms.load(Ordering::Relaxed));
        // At least as many expired keys go as new ones come, so the table stays bounded by
        // the keys of one window.
        let expired: Vec<(u64, String)> = by_time
            .range((0u64, "")..(horizon, ""))?
            .take(EXPIRED_PER_APPEND_MAX.max(2 * keys.len()))
            .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
            .collect::<Result<_, _>>()?;
        for (t, entry) in expired {
            by_time.remove((t, entry.as_str()))?;
            // Only if the key was not stored again since (then it has a newer time).
            let stored_at = table
                .get(entry.as_str())?
                .and_then(|v| entry_time(v.value()));
            if stored_at == Some(t) {
                table.remove(entry.as_str())?;
            }
        }
        for k in keys {
            let entry = key_entry(records[k.index].0, k.key);
            // A key stored again after it expired: its old expiry row goes.
            let old = table
                .get(entry.as_str())?
                .and_then(|v| entry_time(v.value()));
            if let Some(t) = old {
                by_time.remove((t, entry.as_str()))?;
            }
            let mut payload = Vec::with_capacity(24);
            payload.extend_from_slice(&offsets[k.index].to_le_bytes());
            payload.extend_from_slice(&k.fingerprint.to_le_bytes());
            payload.extend_from_slice(&now.to_le_bytes());
            let sealed = seal("idempotency", entry.as_bytes(), &payload);
            table.insert(entry.as_str(), sealed.as_slice())?;
            by_time.insert((now, entry.as_str()), ())?;
        }
        Ok(())
    }

    pub fn file(&self) -> &DbFile {
        &self.db
    }

    /// Closes and reopens the file (redb needs it after an I/O error).
    pub fn reopen(&self) -> Result<(), redb::Error> {
        self.db.reopen()
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// The offset the next record of `depot` will get (the number of records ever appended).
    pub fn end_offset(&self, depot: &str) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        let (_, trimmed_end) = bounds(&txn, depot)?;
        let name = table_name(depot);
        let table = match txn.open_table(TableDefinition::<u64, &[u8]>::new(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(trimmed_end),
            Err(e) => return Err(e.into()),
        };
        let end = table.last()?.map_or(0, |(k, _)| k.value() + 1);
        Ok(end.max(trimmed_end))
    }

    /// The first offset of `depot` still stored: records below it were trimmed by retention.
    pub fn start_offset(&self, depot: &str) -> Result<u64, redb::Error> {
        Ok(bounds(&self.db.begin_read()?, depot)?.0)
    }

    /// The first stored offset of `depot` appended at or after `time_ms` (the end if none).
    pub fn first_offset_since(&self, depot: &str, time_ms: u64) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(TIMES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return self.end_offset(depot),
            Err(e) => return Err(e.into()),
        };
        let (start, _) = bounds(&txn, depot)?;
        for item in table.range((depot, 0u64)..=(depot, u64::MAX))? {
            let (k, t) = item?;
            if t.value() >= time_ms {
                return Ok(k.value().1.max(start));
            }
        }
        self.end_offset(depot)
    }

    /// Removes the records of `depot` below `below` (at most [`TRIM_RECORDS_MAX`] of them, and
    /// none at or past the end) in one durable transaction; returns the new start.
    pub fn trim(&self, depot: &str, below: u64) -> Result<u64, redb::Error> {
        let end = self.end_offset(depot)?;
        let start = self.start_offset(depot)?;
        let new_start = below.min(end).min(start.saturating_add(TRIM_RECORDS_MAX));
        if new_start <= start {
            return Ok(start);
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let name = table_name(depot);
            let mut records = txn.open_table(TableDefinition::<u64, &[u8]>::new(&name))?;
            for o in start..new_start {
                records.remove(o)?;
            }
            let mut times = txn.open_table(TIMES)?;
            // Keep the entry covering `new_start` (its batch may have begun below it).
            let stale: Vec<u64> = times
                .range((depot, 0u64)..(depot, new_start))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for o in stale.iter().rev().skip(1) {
                times.remove((depot, *o))?;
            }
            txn.open_table(BOUNDS)?.insert(depot, (new_start, end))?;
        }
        txn.commit()?;
        Ok(new_start)
    }

    /// Appends records durably in one transaction (one fsync); returns their offsets.
    /// `next` caches each depot's end offset and is advanced only if the commit succeeds.
    pub fn append(
        &self,
        records: &[(&str, &[u8])],
        keys: &[KeyedRecord<'_>],
        next: &mut HashMap<String, u64>,
    ) -> Result<Vec<u64>, redb::Error> {
        self.append_at(records, keys, next, now_ms())
    }

    /// [`append`](Self::append), recording `time_ms` as the records' append time (what age
    /// retention compares with the host's clock).
    pub fn append_at(
        &self,
        records: &[(&str, &[u8])],
        keys: &[KeyedRecord<'_>],
        next: &mut HashMap<String, u64>,
        time_ms: u64,
    ) -> Result<Vec<u64>, redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut offsets = Vec::with_capacity(records.len());
        let mut advanced: HashMap<&str, u64> = HashMap::new();
        {
            let mut tables: HashMap<&str, redb::Table<u64, &[u8]>> = HashMap::new();
            for (depot, bytes) in records {
                if !tables.contains_key(depot) {
                    let name = table_name(depot);
                    let t = txn.open_table(TableDefinition::<u64, &[u8]>::new(&name))?;
                    tables.insert(depot, t);
                }
                let start = match next.get(*depot) {
                    Some(n) => *n,
                    None => self.end_offset(depot)?,
                };
                let offset = advanced.get(depot).copied().unwrap_or(start);
                let sealed = seal(&table_name(depot), &offset.to_be_bytes(), bytes);
                tables
                    .get_mut(depot)
                    .expect("inserted above")
                    .insert(offset, sealed.as_slice())?;
                advanced.insert(depot, offset + 1);
                offsets.push(offset);
            }
        }
        if !keys.is_empty() {
            self.write_keys(&txn, records, &offsets, keys)?;
        }
        {
            // When this commit's first record of each depot was stored (age retention).
            let now = time_ms;
            let mut times = txn.open_table(TIMES)?;
            let mut seen: Vec<&str> = Vec::new();
            for ((depot, _), offset) in records.iter().zip(&offsets) {
                if !seen.contains(depot) {
                    seen.push(depot);
                    times.insert((*depot, *offset), now)?;
                }
            }
        }
        txn.commit()?;
        for (depot, n) in advanced {
            next.insert(depot.to_string(), n);
        }
        Ok(offsets)
    }

    /// Up to `limit` records of `depot` from offset `from`, in order; a damaged record is an
    /// error naming it.
    pub fn read(
        &self,
        depot: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, redb::Error> {
        let txn = self.db.begin_read()?;
        let name = table_name(depot);
        let table = match txn.open_table(TableDefinition::<u64, &[u8]>::new(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in table.range(from..)?.take(limit) {
            let (k, v) = item?;
            let offset = k.value();
            let payload = unseal(&name, &offset.to_be_bytes(), v.value()).map_err(|e| {
                self.db.damaged(
                    &name,
                    &format!("offset {offset} ({})", show_key(&offset.to_be_bytes())),
                    e,
                )
            })?;
            out.push((offset, payload.to_vec()));
        }
        Ok(out)
    }
}

/// A depot's `(start, end)` as last trimmed (`(0, 0)`: never trimmed).
pub(crate) fn bounds(txn: &redb::ReadTransaction, depot: &str) -> Result<(u64, u64), redb::Error> {
    let table = match txn.open_table(BOUNDS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(depot)?.map_or((0, 0), |v| v.value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_offsets_and_never_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = DepotLog::open(&dir.path().join("depot.redb")).unwrap();
        let mut next = HashMap::new();
        let recs: Vec<(&str, &[u8])> = (0..10).map(|_| ("d", &b"r"[..])).collect();
        log.append(&recs, &[], &mut next).unwrap();
        assert_eq!(log.trim("d", 4).unwrap(), 4);
        assert_eq!(
            (log.start_offset("d").unwrap(), log.end_offset("d").unwrap()),
            (4, 10)
        );
        assert_eq!(log.read("d", 0, 100).unwrap()[0].0, 4);
        // Trimming everything keeps the end: the next record gets offset 10, even reopened.
        assert_eq!(log.trim("d", 99).unwrap(), 10);
        assert!(log.read("d", 0, 100).unwrap().is_empty());
        drop(log);
        let log = DepotLog::open(&dir.path().join("depot.redb")).unwrap();
        assert_eq!(log.end_offset("d").unwrap(), 10);
        let offsets = log
            .append(&[("d", b"s")], &[], &mut HashMap::new())
            .unwrap();
        assert_eq!(offsets, vec![10]);
        assert_eq!(log.start_offset("d").unwrap(), 10);
        // Every stored offset was appended at or after a time before now.
        assert_eq!(log.first_offset_since("d", 0).unwrap(), 10);
        assert_eq!(log.first_offset_since("d", u64::MAX).unwrap(), 11);
    }

    #[test]
    fn offsets_are_dense_per_depot_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("depot.redb");
        let mut next = HashMap::new();
        {
            let log = DepotLog::open(&path).unwrap();
            let o = log
                .append(&[("a", b"1"), ("b", b"x"), ("a", b"2")], &[], &mut next)
                .unwrap();
            assert_eq!(o, vec![0, 0, 1]);
        }
        let log = DepotLog::open(&path).unwrap();
        let mut fresh = HashMap::new();
        assert_eq!(
            log.append(&[("a", b"3")], &[], &mut fresh).unwrap(),
            vec![2]
        );
        assert_eq!(log.end_offset("b").unwrap(), 1);
        let recs = log.read("a", 1, 10).unwrap();
        assert_eq!(recs, vec![(1, b"2".to_vec()), (2, b"3".to_vec())]);
        assert_eq!(log.read("missing", 0, 10).unwrap(), vec![]);
    }

    #[test]
    fn idempotency_keys_are_stored_with_their_records_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("depot.redb");
        let mut next = HashMap::new();
        {
            let log = DepotLog::open(&path).unwrap();
            let keys = [KeyedRecord {
                index: 1,
                key: "k1",
                fingerprint: 7,
            }];
            let o = log
                .append(&[("a", b"x"), ("a", b"y")], &keys, &mut next)
                .unwrap();
            assert_eq!(o, vec![0, 1]);
            assert_eq!(
                log.find_key("a", "k1").unwrap(),
                Some(KeyFound {
                    offset: 1,
                    fingerprint: 7
                })
            );
            assert_eq!(log.find_key("b", "k1").unwrap(), None, "keys are per depot");
        }
        let log = DepotLog::open(&path).unwrap();
        assert_eq!(
            log.find_key("a", "k1").unwrap().unwrap().offset,
            1,
            "durable"
        );
        log.set_idempotency_window_ms(0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(log.find_key("a", "k1").unwrap(), None, "expired");
        let k2 = [KeyedRecord {
            index: 0,
            key: "k2",
            fingerprint: 1,
        }];
        log.append(&[("a", b"z")], &k2, &mut next).unwrap();
        let txn = log.db.begin_read().unwrap();
        use redb::ReadableTableMetadata;
        assert_eq!(
            txn.open_table(KEYS).unwrap().len().unwrap(),
            1,
            "k1 pruned, k2 kept"
        );
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = DepotLog::open(&dir.path().join("depot.redb")).unwrap();
        log.append(
            &[("a", b"fine"), ("a", b"soon bad")],
            &[],
            &mut HashMap::new(),
        )
        .unwrap();
        let txn = log.db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, &[u8]>::new("depot/a"))
            .unwrap()
            .insert(1, b"\0\0\0\0soon bad".as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(log.read("a", 0, 1).unwrap(), vec![(0, b"fine".to_vec())]);
        let e = log.read("a", 0, 10).unwrap_err().to_string();
        assert!(e.contains("table `depot/a`, key offset 1"), "{e}");
        assert!(
            e.contains("depot.redb") && e.contains("checksum mismatch"),
            "{e}"
        );
    }
}
