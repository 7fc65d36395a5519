//! Recovery: bringing a partition's store up to its depot log after a crash or restart.
//!
//! The store's processed offsets say, per (stream topology, depot), the first record whose
//! effects are not committed. Replay runs exactly those records again, per depot in offset
//! order, skipping a topology for records it had done (topologies reading the same depot may
//! be at different offsets). Invariant: replay never re-runs a record whose effects are
//! committed, and the hops it emits are new (their earlier emission was never durable, so
//! never sent — see [`super::commit`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::commit::Done;
use super::core::{Item, Partition, PartitionError};
use super::seams::{Executor, HopTransport, PartitionLog, PartitionStore};
use super::TopologyKind;

impl<X: Executor, L: PartitionLog, S: PartitionStore, T: HopTransport> Partition<X, L, S, T> {
    /// Refuses a store that is ahead of its log: a processed offset past the log's end means
    /// acked records are gone (the log was truncated, replaced or rolled back).
    pub(super) fn check_log(&self, offsets: &Done) -> Result<(), PartitionError> {
        for ((topology, depot), processed) in offsets {
            let end = self.log.end(depot).map_err(PartitionError::Log)?;
            if *processed > end {
                return Err(PartitionError::Lost(format!(
                    "topology `{topology}` has processed depot `{depot}` up to offset {processed}, but the depot log ends at offset {end}"
                )));
            }
        }
        Ok(())
    }

    /// Replays the records the store does not reflect; `offsets` is the stored progress.
    pub(super) fn recover(&mut self, offsets: &Done) -> Result<(), PartitionError> {
        self.check_log(offsets)?;
        let mut done = Done::new();
        let mut depots: BTreeMap<String, u64> = BTreeMap::new();
        for t in self
            .topologies
            .iter()
            .filter(|t| t.kind == TopologyKind::Stream)
        {
            for d in &t.depots {
                let key = (t.name.clone(), d.clone());
                let processed = offsets.get(&key).copied().unwrap_or(0);
                done.insert(key, processed);
                let e = depots.entry(d.clone()).or_insert(processed);
                *e = (*e).min(processed);
            }
        }
        let mut replayed = 0u64;
        for (depot, mut from) in depots {
            let depot: Arc<str> = depot.into();
            loop {
                let records = self
                    .log
                    .read(&depot, from, self.cfg.batch_records_max)
                    .map_err(PartitionError::Log)?;
                let Some(last) = records.last().map(|(o, _)| *o) else {
                    break;
                };
                replayed += records.len() as u64;
                let items = records
                    .into_iter()
                    .map(|(offset, record)| Item::Record {
                        depot: Arc::clone(&depot),
                        offset,
                        record,
                        tree: None,
                    })
                    .collect();
                self.process(items, Some(&done))?;
                from = last + 1;
            }
        }
        if replayed > 0 {
            tracing::info!(
                module = &*self.cfg.module,
                partition = self.cfg.partition,
                replayed,
                "replayed records after restart"
            );
        }
        Ok(())
    }
}
