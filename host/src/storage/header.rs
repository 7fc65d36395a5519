//! The `sluice-file` table: what a redb file is, written once when the file is created.
//!
//! It holds one entry, `header`, JSON of [`Header`]: the on-disk format version, the file's
//! kind, the module and partition it belongs to, and the partition's *lineage* — a random id
//! given to a partition's depot log and PState store together when they are created. A file
//! replaced by an empty one (truncated, re-created, restored from another backup) has no header
//! or another lineage, so the partition's other file tells that data was lost.
//!
//! Format history: 1 = no header, values unsealed (before checksums); 2 = this.

use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

/// The on-disk format this host reads and writes.
pub const FORMAT_VERSION: u32 = 2;

const HEADER_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sluice-file");
const HEADER_KEY: &str = "header";

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    DepotLog,
    PStateStore,
}

impl FileKind {
    pub fn name(self) -> &'static str {
        match self {
            FileKind::DepotLog => "depot log",
            FileKind::PStateStore => "PState store",
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub kind: FileKind,
    pub module: String,
    pub partition: u32,
    /// Shared by the two files of one partition (hex).
    pub lineage: String,
}

impl Header {
    /// A new partition's headers: one lineage for both files.
    pub fn new_partition(module: &str, partition: u32) -> (Header, Header) {
        let lineage = new_lineage(module, partition);
        let h = |kind| Header {
            format: FORMAT_VERSION,
            kind,
            module: module.to_string(),
            partition,
            lineage: lineage.clone(),
        };
        (h(FileKind::DepotLog), h(FileKind::PStateStore))
    }

    /// "module `m` partition k", for messages.
    pub fn owner(&self) -> String {
        format!("module `{}` partition {}", self.module, self.partition)
    }
}

/// 128 bits that differ between any two partition creations (time, process, place).
fn new_lineage(module: &str, partition: u32) -> String {
    use sha2::{Digest, Sha256};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = Sha256::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(
        COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    h.update(module.as_bytes());
    h.update(partition.to_le_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a file's header table says.
#[derive(Debug, PartialEq)]
pub enum Found {
    Header(Header),
    /// No header and no other table: a new (or emptied) file.
    Empty,
    /// Tables but no header: format 1, or not a Sluice file.
    Headerless,
    /// A header that does not parse.
    Unreadable(String),
}

pub fn read(db: &impl ReadableDatabase) -> Result<Found, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(HEADER_TABLE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(if txn.list_tables()?.next().is_none() {
                Found::Empty
            } else {
                Found::Headerless
            });
        }
        Err(e) => return Err(e.into()),
    };
    Ok(match table.get(HEADER_KEY)? {
        None => Found::Unreadable("the `sluice-file` table has no header".into()),
        Some(v) => match serde_json::from_slice(v.value()) {
            Ok(h) => Found::Header(h),
            Err(e) => Found::Unreadable(e.to_string()),
        },
    })
}

/// Writes the header durably.
pub fn write(db: &redb::Database, header: &Header) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(HEADER_TABLE)?.insert(
        HEADER_KEY,
        serde_json::to_vec(header)
            .expect("header serializes")
            .as_slice(),
    )?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_lineages_differ() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("f.redb")).unwrap();
        assert_eq!(read(&db).unwrap(), Found::Empty);
        let (log, store) = Header::new_partition("wc", 3);
        assert_eq!(log.lineage, store.lineage);
        assert_ne!(Header::new_partition("wc", 3).0.lineage, log.lineage);
        write(&db, &store).unwrap();
        assert_eq!(read(&db).unwrap(), Found::Header(store.clone()));
        assert_eq!(store.owner(), "module `wc` partition 3");
    }

    #[test]
    fn tables_without_a_header_are_format_1() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("f.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("depot/x"))
            .unwrap()
            .insert(0, 1)
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(read(&db).unwrap(), Found::Headerless);
    }
}
