//! Snapshots a partition's owner holds for queries running on other hosts, so that a query
//! reads each partition from one snapshot for its whole run, wherever the partition lives.
//!
//! A query on host A reading partition p owned by host B sends each select with a [`Pin`]:
//! the query's [`QueryRef`] and whether this is the query's first read of p. On its first
//! read B opens a redb snapshot of p's PState store and keeps it under the query's ref;
//! later reads of the same query read that snapshot, whatever was committed since. A
//! snapshot is dropped when the query ends ([`super::remote::ToPartition::EndQuery`], sent
//! by A) or, if that message is lost, once its hold (the query's deadline on A, at most
//! [`HOLD_MAX`]) has passed.
//!
//! Invariants: a read with `first == false` never opens a new snapshot — if the query's
//! snapshot is gone (the partition moved to another host since, or the hold passed) it is
//! refused `snapshot-lost`, which makes the query answer 503 (retry), never a mix of two
//! snapshots. At most [`HELD_MAX`] snapshots are held per partition (each keeps redb from
//! reusing the pages it sees); a first read beyond that is refused `partition-unavailable`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::ReadTransaction;

use super::remote::{Pin, QueryRef};
use crate::pstate::{AccessError, PStateStore};

/// The longest a snapshot is held for one query, whatever the query asked for.
pub const HOLD_MAX: Duration = Duration::from_secs(60);
/// Snapshots held at once per partition.
pub const HELD_MAX: usize = 256;

/// One query's snapshot of the partition.
struct Held {
    store: Arc<PStateStore>,
    snapshot: ReadTransaction,
    until: Instant,
}

/// The snapshots held for queries of other hosts on one partition here.
#[derive(Default)]
pub struct PinnedSnapshots {
    held: Mutex<HashMap<QueryRef, Arc<Held>>>,
}

impl PinnedSnapshots {
    /// Runs `read` on the snapshot `pin`'s query holds, opening it from `open()` on the
    /// query's first read (see the module docs for the refusals).
    pub fn read<R>(
        &self,
        pin: &Pin,
        partition: u32,
        open: impl FnOnce() -> Result<Arc<PStateStore>, AccessError>,
        read: impl FnOnce(&PStateStore, &ReadTransaction) -> Result<R, AccessError>,
    ) -> Result<R, AccessError> {
        let held = self.hold(pin, partition, open)?;
        read(&held.store, &held.snapshot)
    }

    fn hold(
        &self,
        pin: &Pin,
        partition: u32,
        open: impl FnOnce() -> Result<Arc<PStateStore>, AccessError>,
    ) -> Result<Arc<Held>, AccessError> {
        let now = Instant::now();
        let mut held = self.held.lock().expect("poisoned");
        held.retain(|_, h| h.until > now);
        if let Some(h) = held.get(&pin.query) {
            return Ok(Arc::clone(h));
        }
        if !pin.first {
            return Err(AccessError::new(
                "snapshot-lost",
                format!(
                    "partition {partition}'s snapshot for this query is gone (the partition \
                     moved to another host, or the query outlived its hold); retry the query"
                ),
            ));
        }
        if held.len() >= HELD_MAX {
            return Err(AccessError::new(
                "partition-unavailable",
                format!(
                    "partition {partition} holds {HELD_MAX} snapshots for running queries; retry"
                ),
            ));
        }
        let store = open()?;
        let snapshot = store.begin_read()?;
        let hold = Duration::from_millis(pin.hold_ms).min(HOLD_MAX);
        let h = Arc::new(Held {
            store,
            snapshot,
            until: now + hold,
        });
        held.insert(pin.query.clone(), Arc::clone(&h));
        Ok(h)
    }

    /// Drops the snapshot `query` held (it ended).
    pub fn end(&self, query: &QueryRef) {
        self.held.lock().expect("poisoned").remove(query);
    }

    /// Snapshots held now (expired ones included until the next read).
    pub fn len(&self) -> usize {
        self.held.lock().expect("poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pstate::{select_in, Catalog, Navigator, Schema, Session, TransformOp};
    use crate::value::Value;

    fn store_and_catalog(dir: &std::path::Path) -> (Arc<PStateStore>, Arc<Catalog>) {
        let mut catalog = Catalog::default();
        catalog
            .schemas
            .insert("n".into(), Schema::parse("map<string, int>").unwrap());
        (
            Arc::new(PStateStore::open(&dir.join("p0")).unwrap()),
            Arc::new(catalog),
        )
    }

    /// Commits `n[k] = v`.
    fn set(store: &Arc<PStateStore>, catalog: &Arc<Catalog>, v: i64) {
        let mut s = Session::new(Arc::clone(store), Arc::clone(catalog), 0, 1, 1000);
        s.transform(
            "n",
            &[Navigator::Key(Value::Text("k".into()))],
            &TransformOp::Set(Value::Integer(v.into())),
        )
        .unwrap();
        s.end_record(true);
        store.commit_writes(&s.take_writes(), true).unwrap();
    }

    fn pin(id: u64, first: bool) -> Pin {
        Pin {
            query: QueryRef {
                host: "a".into(),
                id,
            },
            first,
            hold_ms: 5_000,
        }
    }

    /// What query `pin` reads of `n[k]`.
    fn read(
        pinned: &PinnedSnapshots,
        store: &Arc<PStateStore>,
        catalog: &Catalog,
        pin: &Pin,
    ) -> Result<Vec<Value>, AccessError> {
        let path = [Navigator::Key(Value::Text("k".into()))];
        pinned.read(
            pin,
            0,
            || Ok(Arc::clone(store)),
            |store, snapshot| select_in(store, catalog, "n", &path, snapshot, 100),
        )
    }

    /// A query's later reads see its first read's snapshot, whatever was committed since;
    /// another query's first read sees the latest commit; an ended query's snapshot is gone.
    #[test]
    fn a_query_reads_the_snapshot_of_its_first_read_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (store, catalog) = store_and_catalog(dir.path());
        set(&store, &catalog, 1);
        let pinned = PinnedSnapshots::default();
        let one = |v: i64| Ok(vec![Value::Integer(v.into())]);
        assert_eq!(read(&pinned, &store, &catalog, &pin(1, true)), one(1));
        set(&store, &catalog, 2);
        assert_eq!(read(&pinned, &store, &catalog, &pin(1, false)), one(1));
        // A first read sent again (its answer was lost) reads the same snapshot.
        assert_eq!(read(&pinned, &store, &catalog, &pin(1, true)), one(1));
        assert_eq!(read(&pinned, &store, &catalog, &pin(2, true)), one(2));
        assert_eq!(pinned.len(), 2);
        pinned.end(&pin(1, false).query);
        assert_eq!(pinned.len(), 1);
        let lost = read(&pinned, &store, &catalog, &pin(1, false)).unwrap_err();
        assert_eq!(lost.code, "snapshot-lost", "{}", lost.message);
        // Its snapshot was not reopened by the refused read.
        assert_eq!(pinned.len(), 1);
    }

    /// A later read whose snapshot is not here (the partition came here from another host
    /// mid-query) is refused instead of reading a new snapshot.
    #[test]
    fn a_later_read_without_its_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, catalog) = store_and_catalog(dir.path());
        set(&store, &catalog, 1);
        let pinned = PinnedSnapshots::default();
        let lost = read(&pinned, &store, &catalog, &pin(7, false)).unwrap_err();
        assert_eq!(lost.code, "snapshot-lost");
        assert!(pinned.is_empty());
    }

    /// A hold that passed frees its snapshot (the query's end message was lost); holds are
    /// capped at [`HOLD_MAX`] and their number at [`HELD_MAX`].
    #[test]
    fn holds_expire_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, catalog) = store_and_catalog(dir.path());
        set(&store, &catalog, 1);
        let pinned = PinnedSnapshots::default();
        let mut short = pin(1, true);
        short.hold_ms = 1;
        read(&pinned, &store, &catalog, &short).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        short.first = false;
        let lost = read(&pinned, &store, &catalog, &short).unwrap_err();
        assert_eq!(lost.code, "snapshot-lost");
        assert!(pinned.is_empty(), "the expired snapshot is dropped");

        let mut long = pin(2, true);
        long.hold_ms = u64::MAX;
        read(&pinned, &store, &catalog, &long).unwrap();
        let until = pinned.held.lock().unwrap()[&long.query].until;
        assert!(until <= Instant::now() + HOLD_MAX);

        for id in 3..(HELD_MAX as u64 + 2) {
            read(&pinned, &store, &catalog, &pin(id, true)).unwrap();
        }
        assert_eq!(pinned.len(), HELD_MAX);
        let full = read(&pinned, &store, &catalog, &pin(9_999, true)).unwrap_err();
        assert_eq!(full.code, "partition-unavailable", "{}", full.message);
        // Queries already holding one go on.
        read(&pinned, &store, &catalog, &pin(3, false)).unwrap();
    }
}
