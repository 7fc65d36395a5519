//! A redb file that can be closed and opened again while its handle is shared.
//!
//! redb refuses every later transaction after an I/O error on commit ("Previous I/O error
//! occurred. Please close and re-open the database"), so a partition recovers from a full
//! disk or a failed write only by reopening its files. [`DbFile`] keeps the path and the
//! open `Database` behind a lock: readers and writers begin transactions through it, and
//! [`DbFile::reopen`] drops the database and opens the file again. Invariant: at most one
//! `Database` per file is open in the process (redb forbids two); a reopen waits for the
//! snapshots still reading the old one to finish, up to [`REOPEN_WAIT_MS_MAX`].

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};

/// How long a reopen waits for readers of the old database to finish.
pub const REOPEN_WAIT_MS_MAX: u64 = 10_000;

/// See the module docs.
pub struct DbFile {
    path: PathBuf,
    db: RwLock<Option<Database>>,
}

fn closed(path: &Path) -> redb::Error {
    redb::Error::Io(std::io::Error::other(format!(
        "{} is closed (being reopened)",
        path.display()
    )))
}

impl DbFile {
    /// Opens (or creates) the file.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        Ok(Self {
            db: RwLock::new(Some(Database::create(path)?)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, redb::Error> {
        let db = self.db.read().expect("poisoned");
        Ok(db
            .as_ref()
            .ok_or_else(|| closed(&self.path))?
            .begin_read()?)
    }

    pub fn begin_write(&self) -> Result<WriteTransaction, redb::Error> {
        let db = self.db.read().expect("poisoned");
        Ok(db
            .as_ref()
            .ok_or_else(|| closed(&self.path))?
            .begin_write()?)
    }

    /// Closes the database and opens the file again (after an I/O error). Fails if the file
    /// cannot be opened (e.g. it is damaged) or readers keep the old one open too long.
    pub fn reopen(&self) -> Result<(), redb::Error> {
        let mut db = self.db.write().expect("poisoned");
        *db = None;
        let started = Instant::now();
        loop {
            match Database::create(&self.path) {
                Ok(d) => {
                    *db = Some(d);
                    return Ok(());
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if started.elapsed() < Duration::from_millis(REOPEN_WAIT_MS_MAX) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::TableDefinition;

    use super::*;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[test]
    fn reopen_keeps_committed_data_and_waits_for_readers() {
        let dir = tempfile::tempdir().unwrap();
        let f = DbFile::open(&dir.path().join("x.redb")).unwrap();
        let txn = f.begin_write().unwrap();
        txn.open_table(T).unwrap().insert(1, 10).unwrap();
        txn.commit().unwrap();
        let reader = f.begin_read().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                drop(reader);
            });
            f.reopen().unwrap();
        });
        let r = f.begin_read().unwrap();
        assert_eq!(
            r.open_table(T).unwrap().get(1).unwrap().unwrap().value(),
            10
        );
    }
}
