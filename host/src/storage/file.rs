//! A redb file that can be closed and opened again while its handle is shared.
//!
//! redb refuses every later transaction after an I/O error on commit ("Previous I/O error
//! occurred. Please close and re-open the database"), so a partition recovers from a full
//! disk or a failed write only by reopening its files. [`DbFile`] keeps the path and the
//! open `Database` behind a lock: readers and writers begin transactions through it, and
//! [`DbFile::reopen`] drops the database and opens the file again. Invariant: at most one
//! `Database` per file is open in the process (redb forbids two); a reopen waits for the
//! snapshots still reading the old one to finish, up to [`REOPEN_WAIT_MS_MAX`].
//!
//! Opening checks the file's [`Header`]: [`DbFile::create_new`] writes it, [`DbFile::open_existing`]
//! requires it (format, kind, module, partition), and with [`StorageOptions::verify_on_open`]
//! redb verifies the checksum of every page first, so damage at rest is found before anything
//! is served. A panic of redb on a damaged file is caught and reported as damage.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use redb::{Builder, Database, ReadTransaction, ReadableDatabase, WriteTransaction};

use super::header::{self, FileKind, Found, Header, FORMAT_VERSION};

/// How long a reopen waits for readers of the old database to finish.
pub const REOPEN_WAIT_MS_MAX: u64 = 10_000;

/// How this host opens its files.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// redb's page cache for one file.
    pub cache_bytes: usize,
    /// Verify every page's checksum when a file is opened at start (reads the whole file).
    pub verify_on_open: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 16 << 20,
            verify_on_open: true,
        }
    }
}

/// Why a file could not be opened. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: missing", .0.display())]
    Missing(PathBuf),
    #[error("{}: empty (0 bytes); it was truncated or replaced, and what it held is lost", .0.display())]
    Empty(PathBuf),
    #[error("{}: damaged or not a redb file: {why}", file.display())]
    Damaged { file: PathBuf, why: String },
    #[error("{}: holds data but no Sluice header: written in on-disk format 1 (before checksums) or not by Sluice; this host reads format {FORMAT_VERSION}", .0.display())]
    Headerless(PathBuf),
    #[error("{}: on-disk format {found}, but this host reads format {FORMAT_VERSION}", file.display())]
    Format { file: PathBuf, found: u32 },
    #[error("{}: is the {found}, expected the {expected}", file.display())]
    Identity {
        file: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{} and {} are not the two files of one partition (lineages {log_lineage} and {store_lineage}): one was replaced or re-created, so acked data may be lost", log.display(), store.display())]
    Lineage {
        log: PathBuf,
        store: PathBuf,
        log_lineage: String,
        store_lineage: String,
    },
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// See the module docs.
pub struct DbFile {
    path: PathBuf,
    header: Header,
    cache_bytes: usize,
    db: RwLock<Option<Database>>,
}

fn closed(path: &Path) -> redb::Error {
    redb::Error::Io(std::io::Error::other(format!(
        "{} is closed (being reopened)",
        path.display()
    )))
}

/// Runs a redb open, turning its errors and panics into [`FileError::Damaged`].
fn guarded(
    path: &Path,
    open: impl FnOnce() -> Result<Database, redb::DatabaseError>,
) -> Result<Database, FileError> {
    match std::panic::catch_unwind(AssertUnwindSafe(open)) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() != std::io::ErrorKind::InvalidData =>
        {
            Err(FileError::Io {
                file: path.to_path_buf(),
                source: e,
            })
        }
        Ok(Err(e)) => Err(FileError::Damaged {
            file: path.to_path_buf(),
            why: e.to_string(),
        }),
        Err(panic) => Err(FileError::Damaged {
            file: path.to_path_buf(),
            why: format!(
                "redb panicked reading it: {}",
                crate::partition::worker::panic_message(&panic)
            ),
        }),
    }
}

fn damaged(path: &Path, e: impl std::fmt::Display) -> FileError {
    FileError::Damaged {
        file: path.to_path_buf(),
        why: e.to_string(),
    }
}

impl DbFile {
    /// Creates a new file with `header`; fails if the file already holds anything.
    pub fn create_new(
        path: &Path,
        header: Header,
        opts: &StorageOptions,
    ) -> Result<Self, FileError> {
        let db = guarded(path, || {
            Builder::new().set_cache_size(opts.cache_bytes).create(path)
        })?;
        match header::read(&db).map_err(|e| damaged(path, e))? {
            Found::Empty => {}
            _ => {
                return Err(FileError::Identity {
                    file: path.to_path_buf(),
                    found: "file of an earlier partition".into(),
                    expected: "new file".into(),
                })
            }
        }
        header::write(&db, &header).map_err(|e| damaged(path, e))?;
        Ok(Self::wrap(path, header, opts, db))
    }

    /// Opens a file that must exist, hold a header of this format, and be the `kind` of
    /// `module` partition `partition`.
    pub fn open_existing(
        path: &Path,
        kind: FileKind,
        module: &str,
        partition: u32,
        opts: &StorageOptions,
    ) -> Result<Self, FileError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FileError::Missing(path.to_path_buf()))
            }
            Err(e) => {
                return Err(FileError::Io {
                    file: path.to_path_buf(),
                    source: e,
                })
            }
            Ok(m) if m.len() == 0 => return Err(FileError::Empty(path.to_path_buf())),
            Ok(_) => {}
        }
        let db = guarded(path, || {
            Builder::new()
                .set_cache_size(opts.cache_bytes)
                .set_check_integrity_on_open(opts.verify_on_open)
                .open(path)
        })?;
        let found = header_of(path, &db)?;
        let expected = format!("{} of module `{module}` partition {partition}", kind.name());
        let actual = format!(
            "{} of module `{}` partition {}",
            found.kind.name(),
            found.module,
            found.partition
        );
        if actual != expected {
            return Err(FileError::Identity {
                file: path.to_path_buf(),
                found: actual,
                expected,
            });
        }
        Ok(Self::wrap(path, found, opts, db))
    }

    /// Opens or creates a file outside a module's layout (tests, tools): a new file gets a
    /// header of `kind` with no module.
    pub fn open(path: &Path, kind: FileKind) -> Result<Self, FileError> {
        let opts = StorageOptions::default();
        let db = guarded(path, || {
            Builder::new().set_cache_size(opts.cache_bytes).create(path)
        })?;
        let header = header_or_new(path, &db, kind)?;
        Ok(Self::wrap(path, header, &opts, db))
    }

    /// Opens or creates a database over another storage backend (fault-injection tests of
    /// the protocol below redb); `label` names it in errors. A new one gets a `kind` header.
    /// [`DbFile::reopen`] is not available on it (there is no file to reopen).
    pub fn with_backend(
        label: &Path,
        backend: impl redb::StorageBackend,
        kind: FileKind,
    ) -> Result<Self, FileError> {
        let db = guarded(label, || Builder::new().create_with_backend(backend))?;
        let header = header_or_new(label, &db, kind)?;
        Ok(Self::wrap(label, header, &StorageOptions::default(), db))
    }

    fn wrap(path: &Path, header: Header, opts: &StorageOptions, db: Database) -> Self {
        Self {
            path: path.to_path_buf(),
            header,
            cache_bytes: opts.cache_bytes,
            db: RwLock::new(Some(db)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The error for a value that failed its check: names the owner, file, table and key.
    pub fn damaged(&self, table: &str, key: &str, why: impl std::fmt::Display) -> redb::Error {
        redb::Error::Corrupted(format!(
            "damaged data in {} ({}), table `{table}`, key {key}: {why}",
            self.header.owner(),
            self.path.display()
        ))
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
            match Builder::new()
                .set_cache_size(self.cache_bytes)
                .open(&self.path)
            {
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

/// The header of a file opened outside a module's layout: a new file gets one of `kind`
/// with no module.
fn header_or_new(path: &Path, db: &Database, kind: FileKind) -> Result<Header, FileError> {
    if header::read(db).map_err(|e| damaged(path, e))? != Found::Empty {
        return header_of(path, db);
    }
    let (log, store) = Header::new_partition("", 0);
    let h = if kind == FileKind::DepotLog {
        log
    } else {
        store
    };
    header::write(db, &h).map_err(|e| damaged(path, e))?;
    Ok(h)
}

/// The header of an open file, which must be of this format.
fn header_of(path: &Path, db: &Database) -> Result<Header, FileError> {
    match header::read(db).map_err(|e| damaged(path, e))? {
        Found::Header(h) if h.format == FORMAT_VERSION => Ok(h),
        Found::Header(h) => Err(FileError::Format {
            file: path.to_path_buf(),
            found: h.format,
        }),
        Found::Empty => Err(FileError::Empty(path.to_path_buf())),
        Found::Headerless => Err(FileError::Headerless(path.to_path_buf())),
        Found::Unreadable(why) => Err(damaged(path, format!("unreadable header: {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use redb::TableDefinition;

    use super::*;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    /// Every way a file can be the wrong one is refused with an error naming the file.
    #[test]
    fn open_existing_refuses_what_is_not_this_partitions_file() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StorageOptions::default();
        let path = dir.path().join("depot.redb");
        let open = |p: &Path| DbFile::open_existing(p, FileKind::DepotLog, "m", 1, &opts);
        assert!(matches!(open(&path), Err(FileError::Missing(_))));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(open(&path), Err(FileError::Empty(_))));
        std::fs::write(&path, b"not a redb file at all, just text").unwrap();
        let e = open(&path).err().unwrap();
        assert!(matches!(e, FileError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("depot.redb"), "{e}");
        std::fs::remove_file(&path).unwrap();
        // Format 1: tables but no header.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(T).unwrap().insert(0, 1).unwrap();
            txn.commit().unwrap();
        }
        let e = open(&path).err().unwrap();
        assert!(matches!(e, FileError::Headerless(_)), "{e}");
        assert!(e.to_string().contains("format 1"), "{e}");
        std::fs::remove_file(&path).unwrap();
        // A format from the future.
        let (log, _) = Header::new_partition("m", 1);
        DbFile::create_new(
            &path,
            Header {
                format: 3,
                ..log.clone()
            },
            &opts,
        )
        .unwrap();
        let e = open(&path).err().unwrap();
        assert!(matches!(e, FileError::Format { found: 3, .. }), "{e}");
        std::fs::remove_file(&path).unwrap();
        // Another partition's, another kind.
        DbFile::create_new(
            &path,
            Header {
                partition: 2,
                ..log.clone()
            },
            &opts,
        )
        .unwrap();
        let e = open(&path).err().unwrap();
        assert!(e.to_string().contains("module `m` partition 2"), "{e}");
        std::fs::remove_file(&path).unwrap();
        DbFile::create_new(
            &path,
            Header {
                kind: FileKind::PStateStore,
                ..log.clone()
            },
            &opts,
        )
        .unwrap();
        assert!(matches!(open(&path), Err(FileError::Identity { .. })));
        std::fs::remove_file(&path).unwrap();
        // The right one.
        DbFile::create_new(&path, log.clone(), &opts).unwrap();
        assert_eq!(open(&path).unwrap().header(), &log);
        assert!(
            DbFile::create_new(&path, log, &opts).is_err(),
            "create_new refuses a used file"
        );
    }

    #[test]
    fn reopen_keeps_committed_data_and_waits_for_readers() {
        let dir = tempfile::tempdir().unwrap();
        let f = DbFile::open(&dir.path().join("x.redb"), FileKind::DepotLog).unwrap();
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
