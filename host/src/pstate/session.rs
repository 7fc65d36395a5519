//! A guest's view of its partition's PStates during one worker batch.
//!
//! Reads see, in order: the current record's own writes, the writes of earlier records of the
//! same batch, then the last commit (a redb snapshot). Writes go to the current record's
//! overlay; [`Session::end_record`] keeps them (success) or drops them (failure), which is how
//! a failed handler's writes roll back. Writes to one key within a batch coalesce into one redb
//! write at commit. Invariants: every overlay value passed schema validation; every written
//! top-level key belongs to this session's partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::ReadTransaction;

use super::store::{Batch, PStateStore};
use super::{leading_key, path, AccessError, Catalog, Navigator, TransformOp};
use crate::partition::partition_of;
use crate::value::Value;

type Overlay = BTreeMap<(String, Vec<u8>), Option<Value>>;

/// See the module docs.
pub struct Session {
    store: Arc<PStateStore>,
    catalog: Arc<Catalog>,
    partition: u32,
    partitions: u32,
    snapshot: Option<ReadTransaction>,
    batch: Overlay,
    record: Overlay,
}

impl Session {
    pub fn new(
        store: Arc<PStateStore>,
        catalog: Arc<Catalog>,
        partition: u32,
        partitions: u32,
    ) -> Self {
        Self {
            store,
            catalog,
            partition,
            partitions,
            snapshot: None,
            batch: Overlay::new(),
            record: Overlay::new(),
        }
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Ends the current record: keep its writes in the batch, or drop them.
    pub fn end_record(&mut self, keep: bool) {
        let record = std::mem::take(&mut self.record);
        if keep {
            self.batch.extend(record);
        }
    }

    /// Moves the batch's writes out, to be committed; the next read takes a fresh snapshot.
    pub fn take_batch(&mut self) -> Batch {
        self.record.clear();
        self.snapshot = None;
        Batch {
            entries: std::mem::take(&mut self.batch),
            ..Batch::default()
        }
    }

    fn entry(&mut self, pstate: &str, key: &[u8]) -> Result<Option<Value>, AccessError> {
        let k = (pstate.to_string(), key.to_vec());
        if let Some(v) = self.record.get(&k).or_else(|| self.batch.get(&k)) {
            return Ok(v.clone());
        }
        if self.snapshot.is_none() {
            self.snapshot = Some(self.store.begin_read()?);
        }
        let snapshot = self.snapshot.as_ref().expect("set above");
        Ok(PStateStore::get(snapshot, pstate, key)?)
    }

    pub fn select(&mut self, pstate: &str, path: &[Navigator]) -> Result<Vec<Value>, AccessError> {
        let schema = self.catalog.schema(pstate)?;
        let key = leading_key(schema, pstate, path)?;
        let entry = self.entry(pstate, &key)?;
        Ok(path::select(entry.as_ref(), &path[1..], 1)?)
    }

    pub fn transform(
        &mut self,
        pstate: &str,
        path: &[Navigator],
        op: &TransformOp,
    ) -> Result<(), AccessError> {
        let catalog = Arc::clone(&self.catalog);
        let schema = catalog.schema(pstate)?;
        let key = leading_key(schema, pstate, path)?;
        let owner = partition_of(&key, self.partitions);
        if owner != self.partition {
            return Err(AccessError::new(
                "wrong-partition",
                format!(
                    "top-level key {} of PState `{pstate}` belongs to partition {owner}, but this handler runs on partition {}; hop to the key's partition first",
                    crate::value::to_json(&super::key::decode(&key).unwrap_or(Value::Null)),
                    self.partition
                ),
            ));
        }
        let old = self.entry(pstate, &key)?;
        let new = path::transform(old, &path[1..], op, 1)?;
        if let (Some(v), Some((_, value_schema))) = (&new, schema.as_top_level()) {
            value_schema
                .validate(v, pstate)
                .map_err(|e| AccessError::new("schema-mismatch", e.to_string()))?;
        }
        self.record.insert((pstate.to_string(), key), new);
        Ok(())
    }
}
