//! Depot retention on the partition: trimming each depot's log as its bounds say, but never
//! past work that is still owed.
//!
//! Invariants: a record is trimmed only once every topology reading its depot has processed
//! it **durably** (the PState commit holding the processed offset was fsynced first: a lost
//! commit would replay from an older offset), no dead letter of those topologies names it, and
//! it is not the newest tick of a tick depot (the next tick's time is read from it). Trimming is
//! one durable depot-log transaction per depot and call (at most `TRIM_RECORDS_MAX` records),
//! so a crash leaves the log either before or after it, and offsets are never reused.

use super::core::{Partition, PartitionError};
use super::seams::{Executor, HopTransport, PartitionLog, PartitionStore};

/// How often a partition looks for records to trim.
pub const TRIM_EVERY_MS: u64 = 1_000;

impl<X: Executor, L: PartitionLog, S: PartitionStore, T: HopTransport> Partition<X, L, S, T> {
    /// Trims the depots with retention, if a trim is due.
    pub(super) fn trim_due(&mut self) -> Result<(), PartitionError> {
        if self.cfg.retention.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        if self
            .last_trim_ms
            .is_some_and(|t| now.saturating_sub(t) < TRIM_EVERY_MS)
        {
            return Ok(());
        }
        self.last_trim_ms = Some(now);
        // Only durable progress allows a trim.
        self.make_durable()?;
        let progress = self.store.progress().map_err(PartitionError::Store)?;
        let wall = self.clock.wall_ms();
        for (depot, retention) in self.cfg.retention.clone() {
            let end = self.log.end(&depot).map_err(PartitionError::Log)?;
            let mut keep = end;
            for t in self
                .topologies
                .iter()
                .filter(|t| t.depots.iter().any(|d| **d == *depot))
            {
                let processed = progress
                    .offsets
                    .get(&(t.name.clone(), depot.to_string()))
                    .copied()
                    .unwrap_or(0);
                keep = keep.min(processed);
                let letters = self
                    .store
                    .dead_letters(&t.name, usize::MAX)
                    .map_err(PartitionError::Store)?;
                for d in letters.iter().filter(|d| d.depot == *depot) {
                    keep = keep.min(d.offset);
                }
            }
            if self.cfg.ticks.iter().any(|(d, _)| *d == depot) {
                keep = keep.min(end.saturating_sub(1));
            }
            let before = self.log.start(&depot).map_err(PartitionError::Log)?;
            let start = self
                .log
                .trim(&depot, retention, wall, keep)
                .map_err(PartitionError::Log)?;
            self.counters.trimmed(&depot, start.saturating_sub(before));
        }
        Ok(())
    }
}
