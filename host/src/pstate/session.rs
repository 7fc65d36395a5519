//! A guest's view of its partition's PStates during one worker batch, and the read-only view
//! HTTP selects use.
//!
//! Reads see, in order: the current record's own writes, the writes of earlier records of the
//! same batch, then the last commit (a redb snapshot). Writes go to the current record's
//! overlay; [`Session::end_record`] keeps them (success) or drops them (failure), which is how
//! a failed handler's writes roll back. Writes to one key within a batch coalesce into one redb
//! write at commit. Invariants: every overlay value passed schema validation; every written
//! top-level key belongs to this session's partition.

use std::sync::Arc;

use redb::ReadTransaction;

use super::claims::{Writer, WriterClaims};
use super::engine::{Table, View, ViewMut};
use super::path::{EncodedRange, Navigator, TransformOp};
use super::store::{Overlay, PStateStore};
use super::{AccessError, Catalog};
use crate::partition::partition_of;
use crate::value::Value;

/// Reads of the committed state only.
pub struct SnapshotView<'a> {
    pub store: &'a PStateStore,
    pub snapshot: &'a ReadTransaction,
}

impl View for SnapshotView<'_> {
    fn get(&mut self, pstate: &str, t: Table, key: &[u8]) -> Result<Option<Value>, AccessError> {
        Ok(self.store.get(self.snapshot, pstate, t, key)?)
    }

    fn scan(
        &mut self,
        pstate: &str,
        t: Table,
        prefix: &[u8],
        range: &EncodedRange,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, AccessError> {
        Ok(self
            .store
            .scan(self.snapshot, pstate, t, prefix, range, reverse, limit)?)
    }
}

/// An overlay key and what it held before (`None`: nothing).
type Undo = ((String, Table, Vec<u8>), Option<Option<Value>>);

/// See the module docs.
pub struct Session {
    store: Arc<PStateStore>,
    catalog: Arc<Catalog>,
    partition: u32,
    partitions: u32,
    select_values_max: usize,
    snapshot: Option<ReadTransaction>,
    batch: Overlay,
    record: Overlay,
    /// While a transform runs: how to undo its writes to `record` if it fails.
    undo: Vec<Undo>,
    /// Who this session writes as, and the module's claims ([`super::claims`]); `None`
    /// (tools, tests) writes unchecked.
    writer: Option<(Writer, Arc<WriterClaims>)>,
    /// PStates this session's writer already holds the claim of (claims never change, so the
    /// module-wide lock is taken once per PState, not once per transform).
    allowed: std::collections::BTreeSet<String>,
}

/// The overlay entries of one table inside `prefix`/`range`, in key order.
fn overlay_range<'o>(
    overlay: &'o Overlay,
    pstate: &str,
    t: Table,
    prefix: &[u8],
) -> impl Iterator<Item = (&'o [u8], &'o Option<Value>)> + 'o {
    let start = (pstate.to_string(), t, prefix.to_vec());
    let pstate = pstate.to_string();
    let prefix = prefix.to_vec();
    overlay
        .range(start..)
        .take_while(move |((p, tt, k), _)| *p == pstate && *tt == t && k.starts_with(&prefix))
        .map(|((_, _, k), v)| (k.as_slice(), v))
}

impl Session {
    pub fn new(
        store: Arc<PStateStore>,
        catalog: Arc<Catalog>,
        partition: u32,
        partitions: u32,
        select_values_max: usize,
    ) -> Self {
        Self {
            store,
            catalog,
            partition,
            partitions,
            select_values_max,
            snapshot: None,
            batch: Overlay::new(),
            record: Overlay::new(),
            undo: Vec::new(),
            writer: None,
            allowed: std::collections::BTreeSet::new(),
        }
    }

    /// Checks every write against the module's PState writer claims, as `writer`.
    pub fn writing_as(mut self, writer: Writer, claims: Arc<WriterClaims>) -> Self {
        self.writer = Some((writer, claims));
        self
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Ends the current record: keep its writes in the batch, or drop them.
    pub fn end_record(&mut self, keep: bool) {
        let record = std::mem::take(&mut self.record);
        if keep {
            self.batch.extend(record);
        }
    }

    /// Moves the batch's writes out, to be committed; the next read takes a fresh snapshot.
    pub fn take_writes(&mut self) -> Overlay {
        self.record.clear();
        self.snapshot = None;
        std::mem::take(&mut self.batch)
    }

    fn check_partition(&self, pstate: &str, path: &[Navigator]) -> Result<(), AccessError> {
        if self.catalog.is_global(pstate) {
            // Every key of a global PState lives on its one partition.
            if self.partition != super::GLOBAL_PARTITION {
                return Err(AccessError::new(
                    "wrong-partition",
                    format!(
                        "PState `{pstate}` is global: it lives on partition {}, but this handler runs on partition {}; hop to partition {} first",
                        super::GLOBAL_PARTITION,
                        self.partition,
                        super::GLOBAL_PARTITION
                    ),
                ));
            }
            return Ok(());
        }
        let Some(Navigator::Key(k) | Navigator::Must(k)) = path.first() else {
            return Ok(());
        };
        let key =
            super::key::encode(k).map_err(|e| AccessError::new("invalid-path", e.to_string()))?;
        let owner = partition_of(&key, self.partitions);
        if owner != self.partition {
            return Err(AccessError::new(
                "wrong-partition",
                format!(
                    "top-level key {} of PState `{pstate}` belongs to partition {owner}, but this handler runs on partition {}; hop to the key's partition first",
                    crate::value::to_json(k),
                    self.partition
                ),
            ));
        }
        Ok(())
    }

    pub fn select(&mut self, pstate: &str, path: &[Navigator]) -> Result<Vec<Value>, AccessError> {
        let catalog = Arc::clone(&self.catalog);
        let schema = catalog.schema(pstate)?;
        super::check_leading_key(schema, pstate, path)?;
        self.check_partition(pstate, path)?;
        let limit = self.select_values_max;
        super::select_with(self, &catalog, pstate, limit, path)
    }

    pub fn transform(
        &mut self,
        pstate: &str,
        path: &[Navigator],
        op: &TransformOp,
    ) -> Result<(), AccessError> {
        let catalog = Arc::clone(&self.catalog);
        let schema = catalog.schema(pstate)?;
        super::check_leading_key(schema, pstate, path)?;
        self.check_partition(pstate, path)?;
        if let Some((writer, claims)) = &self.writer {
            if !self.allowed.contains(pstate) {
                claims.check(&self.store, pstate, writer)?;
                self.allowed.insert(pstate.to_string());
            }
        }
        let limit = self.select_values_max;
        self.undo.clear();
        let result = super::transform_with(&mut *self, &catalog, pstate, limit, path, op);
        // A failed transform leaves nothing behind, even if the guest carries on.
        let undo = std::mem::take(&mut self.undo);
        if result.is_err() {
            for (k, previous) in undo.into_iter().rev() {
                match previous {
                    Some(v) => self.record.insert(k, v),
                    None => self.record.remove(&k),
                };
            }
        }
        result
    }

    fn snapshot(&mut self) -> Result<&ReadTransaction, AccessError> {
        if self.snapshot.is_none() {
            self.snapshot = Some(self.store.begin_read()?);
        }
        Ok(self.snapshot.as_ref().expect("set above"))
    }
}

impl View for Session {
    fn get(&mut self, pstate: &str, t: Table, key: &[u8]) -> Result<Option<Value>, AccessError> {
        let k = (pstate.to_string(), t, key.to_vec());
        if let Some(v) = self.record.get(&k).or_else(|| self.batch.get(&k)) {
            return Ok(v.clone());
        }
        self.snapshot()?;
        let snapshot = self.snapshot.as_ref().expect("opened above");
        Ok(self.store.get(snapshot, pstate, t, key)?)
    }

    fn scan(
        &mut self,
        pstate: &str,
        t: Table,
        prefix: &[u8],
        range: &EncodedRange,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, AccessError> {
        // Overlay entries (record over batch) inside the range, by full key.
        let mut overlay: std::collections::BTreeMap<Vec<u8>, Option<Value>> =
            std::collections::BTreeMap::new();
        for o in [&self.batch, &self.record] {
            for (k, v) in overlay_range(o, pstate, t, prefix) {
                if range.contains(&k[prefix.len()..]) {
                    overlay.insert(k.to_vec(), v.clone());
                }
            }
        }
        // Each overlay entry hides at most one stored entry: read that many more.
        let want = limit.saturating_add(overlay.len());
        self.snapshot()?;
        let snapshot = self.snapshot.as_ref().expect("opened above");
        let stored = self
            .store
            .scan(snapshot, pstate, t, prefix, range, reverse, want)?;
        let mut merged: std::collections::BTreeMap<Vec<u8>, Value> = stored
            .into_iter()
            .map(|(suffix, v)| ([prefix, &suffix].concat(), v))
            .collect();
        // Stored entries beyond the last one read are unknown: only overlay keys up to it count.
        let bound = if stored_is_complete(merged.len(), want) {
            None
        } else if reverse {
            merged.keys().next().cloned()
        } else {
            merged.keys().next_back().cloned()
        };
        for (k, v) in overlay {
            let inside = match &bound {
                None => true,
                Some(b) => {
                    if reverse {
                        k >= *b
                    } else {
                        k <= *b
                    }
                }
            };
            if !inside {
                continue;
            }
            match v {
                Some(v) => {
                    merged.insert(k, v);
                }
                None => {
                    merged.remove(&k);
                }
            }
        }
        let iter: Box<dyn Iterator<Item = (Vec<u8>, Value)>> = if reverse {
            Box::new(merged.into_iter().rev())
        } else {
            Box::new(merged.into_iter())
        };
        Ok(iter
            .take(limit)
            .map(|(k, v)| (k[prefix.len()..].to_vec(), v))
            .collect())
    }
}

fn stored_is_complete(read: usize, want: usize) -> bool {
    read < want
}

impl ViewMut for Session {
    fn put(&mut self, pstate: &str, t: Table, key: Vec<u8>, value: Option<Value>) {
        let k = (pstate.to_string(), t, key);
        let previous = self.record.insert(k.clone(), value);
        self.undo.push((k, previous));
    }
}
