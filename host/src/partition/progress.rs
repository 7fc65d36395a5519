//! A partition's progress in redb: processed offsets, the hop outbox and watermarks, and dead
//! letters — stored in the partition's PState file so that they commit in the same
//! transaction as the PState writes they describe.
//!
//! Tables (in `pstate.redb`, beside the PState tables of [`crate::pstate::store`]):
//! `offsets`: `"<topology>/<depot>"` → next unprocessed offset; `hops-out`: `(target, seq)` →
//! hop not yet confirmed by its target; `hops-out-next`: target → next seq to assign;
//! `hops-applied`: source → next seq to apply; `dead-letters`: `(topology, depot, offset)` →
//! failure; `partition-meta`: `commit-position` → the last commit's position. Invariant: every table here changes only inside [`PartitionStore::commit`], so a
//! committed state always has progress matching its entries. Also the redb implementations of
//! the [`PartitionLog`] and [`PartitionStore`] seams.

use std::collections::HashMap;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::seams::{Commit, PartitionLog, PartitionStore, Progress, StorageError};
use crate::depot::log::DepotLog;
use crate::pstate::store::{write_entries, DeadLetter};
use crate::pstate::PStateStore;
use crate::value::{from_cbor, to_cbor, Value};

const OFFSETS: TableDefinition<&str, u64> = TableDefinition::new("offsets");
const HOPS_OUT: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("hops-out");
const HOPS_OUT_NEXT: TableDefinition<u32, u64> = TableDefinition::new("hops-out-next");
const HOPS_APPLIED: TableDefinition<u32, u64> = TableDefinition::new("hops-applied");
const DEAD_LETTERS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("dead-letters");
/// `commit-position`: the position of the last commit (see [`Commit::position`]).
const PARTITION_META: TableDefinition<&str, u64> = TableDefinition::new("partition-meta");
const COMMIT_POSITION: &str = "commit-position";

fn offsets_key(topology: &str, depot: &str) -> String {
    format!("{topology}/{depot}")
}

/// Opens a table for reading; a table never written reads as empty (`None`).
macro_rules! read_table {
    ($txn:expr, $def:expr) => {
        match $txn.open_table($def) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(redb::Error::from(e).into()),
        }
    };
}

/// The next offset of `depot` that `topology` has not finished (0 when it has none).
pub fn processed_offset(
    txn: &ReadTransaction,
    topology: &str,
    depot: &str,
) -> Result<u64, StorageError> {
    let Some(t) = read_table!(txn, OFFSETS) else {
        return Ok(0);
    };
    Ok(t.get(offsets_key(topology, depot).as_str())
        .map_err(redb::Error::from)?
        .map_or(0, |v| v.value()))
}

/// The position of the last commit in a snapshot (0: none yet).
pub fn read_position(txn: &ReadTransaction) -> Result<u64, redb::Error> {
    match txn.open_table(PARTITION_META) {
        Ok(t) => Ok(t.get(COMMIT_POSITION)?.map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// A partition's stored progress, from a snapshot.
pub fn read_progress(txn: &ReadTransaction) -> Result<Progress, StorageError> {
    let e = |e: redb::StorageError| StorageError::from(redb::Error::from(e));
    let mut p = Progress::default();
    if let Some(t) = read_table!(txn, OFFSETS) {
        for item in t.iter().map_err(e)? {
            let (k, v) = item.map_err(e)?;
            if let Some((topology, depot)) = k.value().split_once('/') {
                p.offsets
                    .insert((topology.to_string(), depot.to_string()), v.value());
            }
        }
    }
    if let Some(t) = read_table!(txn, HOPS_OUT) {
        for item in t.iter().map_err(e)? {
            let (k, v) = item.map_err(e)?;
            let (target, seq) = k.value();
            p.outbox.push((target, seq, v.value().to_vec()));
        }
    }
    if let Some(t) = read_table!(txn, PARTITION_META) {
        p.position = t.get(COMMIT_POSITION).map_err(e)?.map_or(0, |v| v.value());
    }
    for (def, into) in [
        (HOPS_OUT_NEXT, &mut p.hops_next),
        (HOPS_APPLIED, &mut p.hops_applied),
    ] {
        if let Some(t) = read_table!(txn, def) {
            for item in t.iter().map_err(e)? {
                let (k, v) = item.map_err(e)?;
                into.insert(k.value(), v.value());
            }
        }
    }
    Ok(p)
}

/// Records `position` as the last commit's (a microbatch apply is a commit of its own).
pub fn write_position(txn: &WriteTransaction, position: u64) -> Result<(), redb::Error> {
    txn.open_table(PARTITION_META)?
        .insert(COMMIT_POSITION, position)?;
    Ok(())
}

/// Writes a commit's progress into an open write transaction.
pub fn write_progress(txn: &WriteTransaction, c: &Commit) -> Result<(), redb::Error> {
    if c.position > 0 {
        write_position(txn, c.position)?;
    }
    if !c.offsets.is_empty() {
        let mut offsets = txn.open_table(OFFSETS)?;
        for ((topology, depot), offset) in &c.offsets {
            offsets.insert(offsets_key(topology, depot).as_str(), *offset)?;
        }
    }
    if !c.outbox_put.is_empty() || !c.outbox_trim.is_empty() {
        let mut outbox = txn.open_table(HOPS_OUT)?;
        for (target, seq, entry) in &c.outbox_put {
            outbox.insert((*target, *seq), entry.as_slice())?;
        }
        for (target, below) in &c.outbox_trim {
            outbox.retain_in((*target, 0)..(*target, *below), |_, _| false)?;
        }
    }
    for (def, map) in [
        (HOPS_OUT_NEXT, &c.hops_next),
        (HOPS_APPLIED, &c.hops_applied),
    ] {
        if !map.is_empty() {
            let mut t = txn.open_table(def)?;
            for (k, v) in map {
                t.insert(*k, *v)?;
            }
        }
    }
    write_dead_letters(txn, &c.dead_letters, &c.dead_letters_remove)
}

/// Records dead letters (and drops resolved ones) in an open write transaction.
pub fn write_dead_letters(
    txn: &WriteTransaction,
    add: &[DeadLetter],
    remove: &[(String, String, u64)],
) -> Result<(), redb::Error> {
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let mut dead = txn.open_table(DEAD_LETTERS)?;
    for (topology, depot, offset) in remove {
        dead.remove((topology.as_str(), depot.as_str(), *offset))?;
    }
    for d in add {
        dead.insert(
            (d.topology.as_str(), d.depot.as_str(), d.offset),
            to_cbor(&d.encode()).as_slice(),
        )?;
    }
    Ok(())
}

fn read_dead_letters(
    txn: &ReadTransaction,
    topology: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, StorageError> {
    let e = |e: redb::StorageError| StorageError::from(redb::Error::from(e));
    let Some(table) = read_table!(txn, DEAD_LETTERS) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in table.range((topology, "", 0u64)..).map_err(e)? {
        let (k, v) = item.map_err(e)?;
        let (t, depot, offset) = k.value();
        if t != topology || out.len() >= limit {
            break;
        }
        let v = from_cbor(v.value()).unwrap_or(Value::Null);
        out.push(DeadLetter::decode(t, depot, offset, &v));
    }
    Ok(out)
}

impl PartitionStore for PStateStore {
    fn progress(&self) -> Result<Progress, StorageError> {
        read_progress(&self.begin_read()?)
    }

    fn outbox_from(&self, target: u32, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let e = |e: redb::StorageError| StorageError::from(redb::Error::from(e));
        let txn = self.begin_read()?;
        let Some(t) = read_table!(txn, HOPS_OUT) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in t.range((target, from)..=(target, u64::MAX)).map_err(e)? {
            let (k, v) = item.map_err(e)?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, c: &Commit, durable: bool) -> Result<(), StorageError> {
        if c.is_empty() && !durable {
            return Ok(());
        }
        self.write(durable, |txn| {
            write_entries(txn, &c.writes)?;
            write_progress(txn, c)
        })?;
        self.changes().published(self, c.position, &c.writes);
        Ok(())
    }

    fn dead_letters(&self, topology: &str, limit: usize) -> Result<Vec<DeadLetter>, StorageError> {
        read_dead_letters(&self.begin_read()?, topology, limit)
    }
}

impl PartitionLog for DepotLog {
    fn append(
        &self,
        records: &[(&str, &[u8])],
        keys: &[super::seams::KeyedRecord<'_>],
        next: &mut HashMap<String, u64>,
        time_ms: u64,
    ) -> Result<Vec<u64>, StorageError> {
        Ok(DepotLog::append_at(self, records, keys, next, time_ms)?)
    }

    fn find_key(
        &self,
        depot: &str,
        key: &str,
    ) -> Result<Option<super::seams::KeyFound>, StorageError> {
        Ok(DepotLog::find_key(self, depot, key)?)
    }

    fn read(
        &self,
        depot: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        Ok(DepotLog::read(self, depot, from, limit)?)
    }

    fn end(&self, depot: &str) -> Result<u64, StorageError> {
        Ok(DepotLog::end_offset(self, depot)?)
    }

    fn start(&self, depot: &str) -> Result<u64, StorageError> {
        Ok(DepotLog::start_offset(self, depot)?)
    }

    fn trim(
        &self,
        depot: &str,
        retention: crate::depot::Retention,
        now_ms: u64,
        keep_from: u64,
    ) -> Result<u64, StorageError> {
        let end = DepotLog::end_offset(self, depot)?;
        let by_count = retention.max_records.map_or(0, |n| end.saturating_sub(n));
        let by_age = match retention.max_age_ms {
            Some(age) => DepotLog::first_offset_since(self, depot, now_ms.saturating_sub(age))?,
            None => 0,
        };
        Ok(DepotLog::trim(
            self,
            depot,
            by_count.max(by_age).min(keep_from),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn progress_commits_with_entries_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = PStateStore::open(&dir.path().join("pstate.redb")).unwrap();
        let mut c = Commit::default();
        c.offsets.insert(("t".into(), "d".into()), 5);
        c.outbox_put = vec![
            (1, 0, b"a".to_vec()),
            (1, 1, b"b".to_vec()),
            (2, 0, b"c".to_vec()),
        ];
        c.hops_next = BTreeMap::from([(1, 2), (2, 1)]);
        c.hops_applied = BTreeMap::from([(3, 7)]);
        c.dead_letters = vec![DeadLetter::new("t", "d", 4, "guest-error", "no", 1)];
        store.commit(&c, true).unwrap();
        let p = store.progress().unwrap();
        assert_eq!(p.offsets[&("t".to_string(), "d".to_string())], 5);
        assert_eq!(p.outbox.len(), 3);
        assert_eq!(p.hops_next, c.hops_next);
        assert_eq!(p.hops_applied, c.hops_applied);
        assert_eq!(store.outbox_from(1, 1).unwrap(), vec![(1, b"b".to_vec())]);
        let trim = Commit {
            outbox_trim: BTreeMap::from([(1, 1)]),
            ..Commit::default()
        };
        store.commit(&trim, false).unwrap();
        let left: Vec<_> = store
            .progress()
            .unwrap()
            .outbox
            .into_iter()
            .map(|(t, s, _)| (t, s))
            .collect();
        assert_eq!(left, vec![(1, 1), (2, 0)]);
        let dl = store.dead_letters("t", 10).unwrap();
        assert_eq!(
            (dl[0].offset, dl[0].error_code.as_str()),
            (4, "guest-error")
        );
        let txn = store.begin_read().unwrap();
        assert_eq!(processed_offset(&txn, "t", "d").unwrap(), 5);
        assert_eq!(processed_offset(&txn, "t", "other").unwrap(), 0);
    }
}
