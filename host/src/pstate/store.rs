//! The PState store: one redb file per (module, partition) holding that partition's PState
//! entries.
//!
//! Tables: `pstate/<name>`, `pstate/<name>/sub` and `pstate/<name>/size` hold the PState's
//! entries, subindexed elements and collection sizes as laid out in [`super::engine`] (keys in
//! the order-preserving encoding, values as CBOR sealed by [`crate::storage::seal`] over the
//! table name and the key). The same file holds the partition's
//! progress (processed offsets, hop outbox and watermarks, dead letters), owned by
//! [`crate::partition::progress`]: [`PStateStore::write`] lets it commit both in one
//! transaction. Invariant: only the partition's worker writes; readers use snapshots.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Durability, ReadTransaction, TableDefinition, WriteTransaction};

use super::engine::Table;
use super::path::EncodedRange;
use crate::storage::seal::{seal, show_key, unseal};
use crate::storage::{DbFile, FileError, FileKind};
use crate::value::{from_cbor, to_cbor, Value};

pub use crate::partition::dead_letters::DeadLetter;

type EntryTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// The redb table holding one of a PState's tables (see [`super::engine`]).
pub fn table_name(pstate: &str, t: Table) -> String {
    match t {
        Table::Main => format!("pstate/{pstate}"),
        Table::Sub => format!("pstate/{pstate}/sub"),
        Table::Size => format!("pstate/{pstate}/size"),
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

/// Writes not yet committed: `(pstate, table, key)` to the new value; `None` removes it.
pub type Overlay = BTreeMap<(String, Table, Vec<u8>), Option<Value>>;

/// One partition's PState store.
pub struct PStateStore {
    db: DbFile,
    /// Who watches this partition's commits ([`crate::subscription`]).
    changes: crate::subscription::ChangeHub,
}

impl PStateStore {
    /// Opens or creates a store outside a module's layout (tests, tools).
    pub fn open(path: &Path) -> Result<Self, FileError> {
        Ok(Self::from_file(DbFile::open(path, FileKind::PStateStore)?))
    }

    /// A store over an opened file (see [`crate::storage`]).
    pub fn from_file(db: DbFile) -> Self {
        Self {
            db,
            changes: Default::default(),
        }
    }

    /// The feeds watching this store's commits.
    pub fn changes(&self) -> &crate::subscription::ChangeHub {
        &self.changes
    }

    pub fn file(&self) -> &DbFile {
        &self.db
    }

    /// The payload of a stored value, checked and decoded.
    fn decode(&self, table: &str, key: &[u8], stored: &[u8]) -> Result<Value, redb::Error> {
        let payload =
            unseal(table, key, stored).map_err(|e| self.db.damaged(table, &show_key(key), e))?;
        from_cbor(payload).map_err(|e| {
            self.db
                .damaged(table, &show_key(key), format!("undecodable value: {e}"))
        })
    }

    /// Closes and reopens the file (redb needs it after an I/O error).
    pub fn reopen(&self) -> Result<(), redb::Error> {
        self.db.reopen()
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// A snapshot of the last commit; never blocks the writer.
    pub fn begin_read(&self) -> Result<ReadTransaction, redb::Error> {
        self.db.begin_read()
    }

    /// The value under `key` in one table of `pstate`, in `snapshot`.
    pub fn get(
        &self,
        snapshot: &ReadTransaction,
        pstate: &str,
        t: Table,
        key: &[u8],
    ) -> Result<Option<Value>, redb::Error> {
        let name = table_name(pstate, t);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        let table = match snapshot.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(key)? {
            Some(v) => Ok(Some(self.decode(&name, key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Entries of one table whose key is `prefix ‖ suffix` with `suffix` in `range`, in key
    /// order (or reversed), at most `limit`, as `(suffix, value)`.
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        snapshot: &ReadTransaction,
        pstate: &str,
        t: Table,
        prefix: &[u8],
        range: &EncodedRange,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, redb::Error> {
        let name = table_name(pstate, t);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        let table = match snapshot.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let lo = match &range.start {
            Some((s, _)) => [prefix, s].concat(),
            None => prefix.to_vec(),
        };
        let hi = match &range.end {
            Some((e, _)) => Some([prefix, e].concat()),
            None => successor(prefix),
        };
        let iter = match &hi {
            Some(hi) => table.range::<&[u8]>(lo.as_slice()..=hi.as_slice())?,
            None => table.range::<&[u8]>(lo.as_slice()..)?,
        };
        let mut out = Vec::new();
        type Item<'a> = Result<
            (
                redb::AccessGuard<'a, &'static [u8]>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >;
        let mut push = |item: Item| -> Result<bool, redb::Error> {
            let (k, v) = item?;
            let k = k.value();
            if !k.starts_with(prefix) || !range.contains(&k[prefix.len()..]) {
                return Ok(true);
            }
            let v = self.decode(&name, k, v.value())?;
            out.push((k[prefix.len()..].to_vec(), v));
            Ok(out.len() < limit)
        };
        if reverse {
            for item in iter.rev() {
                if !push(item)? {
                    break;
                }
            }
        } else {
            for item in iter {
                if !push(item)? {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Runs `f` in one write transaction and commits it. `durable` fsyncs it (and every
    /// earlier commit); otherwise it is visible at once but survives a crash only once a later
    /// durable commit happened.
    pub fn write(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        f(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Commits PState writes alone (tests, benchmarks, tools; partitions commit through
    /// [`crate::partition::seams::PartitionStore::commit`]).
    pub fn commit_writes(&self, writes: &Overlay, durable: bool) -> Result<(), redb::Error> {
        self.write(durable, |txn| write_entries(txn, writes))
    }
}

/// Writes PState entries into an open write transaction (`None` removes the entry).
pub fn write_entries(txn: &WriteTransaction, entries: &Overlay) -> Result<(), redb::Error> {
    let mut current: Option<((String, Table), String, EntryTable)> = None;
    for ((pstate, t, key), value) in entries {
        if current
            .as_ref()
            .is_none_or(|((n, tt), _, _)| n != pstate || tt != t)
        {
            let name = table_name(pstate, *t);
            let table = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name))?;
            current = Some(((pstate.clone(), *t), name, table));
        }
        let (_, name, table) = current.as_mut().expect("opened above");
        match value {
            Some(v) => {
                let sealed = seal(name, key, &to_cbor(v));
                table.insert(key.as_slice(), sealed.as_slice())?;
            }
            None => {
                table.remove(key.as_slice())?;
            }
        }
    }
    Ok(())
}
