//! The depot log: one redb file per (module, partition) holding that partition's records of
//! every depot of the module.
//!
//! Table `depot/<name>` maps a dense offset (0, 1, 2, …) to the record as CBOR, sealed
//! ([`crate::storage::seal`]; the key sealed is the offset, big-endian). Invariants:
//! offsets of a depot partition are dense and never reused; only the partition's worker appends;
//! an append is acknowledged only after the commit holding it returned with fsync
//! (`Durability::Immediate`).

use std::collections::HashMap;
use std::path::Path;

use redb::{Durability, ReadableTable, TableDefinition};

use crate::storage::seal::{seal, show_key, unseal};
use crate::storage::{DbFile, FileError, FileKind};

fn table_name(depot: &str) -> String {
    format!("depot/{depot}")
}

/// One partition's depot log.
pub struct DepotLog {
    db: DbFile,
}

impl DepotLog {
    /// Opens or creates a log outside a module's layout (tests, tools).
    pub fn open(path: &Path) -> Result<Self, FileError> {
        Ok(Self::from_file(DbFile::open(path, FileKind::DepotLog)?))
    }

    /// A log over an opened file (see [`crate::storage`]).
    pub fn from_file(db: DbFile) -> Self {
        Self { db }
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

    /// The offset the next record of `depot` will get (the number of records so far).
    pub fn end_offset(&self, depot: &str) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        let name = table_name(depot);
        let table = match txn.open_table(TableDefinition::<u64, &[u8]>::new(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let end = table.last()?.map_or(0, |(k, _)| k.value() + 1);
        Ok(end)
    }

    /// Appends records durably in one transaction (one fsync); returns their offsets.
    /// `next` caches each depot's end offset and is advanced only if the commit succeeds.
    pub fn append(
        &self,
        records: &[(&str, &[u8])],
        next: &mut HashMap<String, u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_dense_per_depot_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("depot.redb");
        let mut next = HashMap::new();
        {
            let log = DepotLog::open(&path).unwrap();
            let o = log
                .append(&[("a", b"1"), ("b", b"x"), ("a", b"2")], &mut next)
                .unwrap();
            assert_eq!(o, vec![0, 0, 1]);
        }
        let log = DepotLog::open(&path).unwrap();
        let mut fresh = HashMap::new();
        assert_eq!(log.append(&[("a", b"3")], &mut fresh).unwrap(), vec![2]);
        assert_eq!(log.end_offset("b").unwrap(), 1);
        let recs = log.read("a", 1, 10).unwrap();
        assert_eq!(recs, vec![(1, b"2".to_vec()), (2, b"3".to_vec())]);
        assert_eq!(log.read("missing", 0, 10).unwrap(), vec![]);
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = DepotLog::open(&dir.path().join("depot.redb")).unwrap();
        log.append(&[("a", b"fine"), ("a", b"soon bad")], &mut HashMap::new())
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
