//! How Sluice keeps bytes in redb files, and how it knows they are still the bytes it wrote.
//!
//! - [`file`]: [`DbFile`], an open redb file that can be reopened in place (after an I/O
//!   error), opened with this host's [`StorageOptions`] (cache share, verification on open).
//! - [`header`]: the `sluice-file` table every partition file carries: the on-disk format
//!   version, what the file is (depot log or PState store), whose (module, partition), and a
//!   *lineage* shared by the two files of one partition.
//! - [`seal`]: the checksum stored beside every depot record and PState entry and checked on
//!   every read, so damage is an error that names the file and key, never data.
//! - [`check`]: verifying a whole data directory offline (`sluice check`).
//!
//! Invariants: a partition's files are created together, with one lineage, before the module
//! directory becomes visible; a file is opened only if its header names the format this host
//! reads and the module and partition it is opened for; a value is returned only if its seal
//! matches its table, key and bytes.

pub mod check;
pub mod file;
pub mod header;
pub mod seal;

pub use file::{DbFile, FileError, StorageOptions};
pub use header::{FileKind, Header, FORMAT_VERSION};

use std::path::Path;

use crate::depot::log::DepotLog;
use crate::pstate::PStateStore;

/// Creates partition `partition`'s two files in `dir` (a module directory not yet visible),
/// with one lineage, and closes them.
pub fn create_partition(
    dir: &Path,
    module: &str,
    partition: u32,
    opts: &StorageOptions,
) -> Result<(), FileError> {
    std::fs::create_dir_all(dir).map_err(|e| FileError::Io {
        file: dir.to_path_buf(),
        source: e,
    })?;
    let (log, store) = Header::new_partition(module, partition);
    DbFile::create_new(&dir.join(DEPOT_FILE), log, opts)?;
    DbFile::create_new(&dir.join(STORE_FILE), store, opts)?;
    Ok(())
}

/// The depot log's file in a partition directory.
pub const DEPOT_FILE: &str = "depot.redb";
/// The PState store's file in a partition directory.
pub const STORE_FILE: &str = "pstate.redb";

/// Opens partition `partition`'s two files in `dir`: both must exist, carry this format's
/// header naming this partition, and share one lineage.
pub fn open_partition(
    dir: &Path,
    module: &str,
    partition: u32,
    opts: &StorageOptions,
) -> Result<(DepotLog, PStateStore), FileError> {
    let log = DbFile::open_existing(
        &dir.join(DEPOT_FILE),
        FileKind::DepotLog,
        module,
        partition,
        opts,
    )?;
    let store = DbFile::open_existing(
        &dir.join(STORE_FILE),
        FileKind::PStateStore,
        module,
        partition,
        opts,
    )?;
    if log.header().lineage != store.header().lineage {
        return Err(FileError::Lineage {
            log: log.path().to_path_buf(),
            store: store.path().to_path_buf(),
            log_lineage: log.header().lineage.clone(),
            store_lineage: store.header().lineage.clone(),
        });
    }
    Ok((DepotLog::from_file(log), PStateStore::from_file(store)))
}
