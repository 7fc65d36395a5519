//! Dead letters: work a topology gave up on, kept with why, and run again on request.
//!
//! A record (or hop) whose handler failed permanently, or transiently past
//! `handler_attempts_max`, is recorded in the partition's `dead-letters` table
//! ([`super::progress`]) in the commit that advances past it, so a poison record never wedges
//! the partition. Invariant: a replayed dead letter is removed in the same commit as the
//! effects of its successful run.

use std::sync::Arc;

use super::core::{Item, Partition, PartitionError};
use super::seams::{Executor, HopTransport, PartitionLog, PartitionStore};
use super::TopologyKind;

/// A record a topology gave up on, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topology: String,
    pub depot: String,
    pub offset: u64,
    pub error_code: String,
    pub error: String,
    pub attempts: u32,
}

impl DeadLetter {
    pub fn new(
        topology: &str,
        depot: &str,
        offset: u64,
        code: &str,
        error: &str,
        attempts: u32,
    ) -> Self {
        Self {
            topology: topology.to_string(),
            depot: depot.to_string(),
            offset,
            error_code: code.to_string(),
            error: error.to_string(),
            attempts,
        }
    }
}

/// Why a dead-letter replay did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("`{0}` is not a stream topology")]
    NotStream(String),
    /// The partition failed while replaying; it restarts.
    #[error(transparent)]
    Partition(#[from] PartitionError),
}

impl ReplayError {
    /// The failure the partition must restart for, if any.
    pub fn partition_failed(&self) -> Option<String> {
        match self {
            ReplayError::Partition(e) => Some(e.to_string()),
            ReplayError::NotStream(_) => None,
        }
    }
}

impl<X: Executor, L: PartitionLog, S: PartitionStore, T: HopTransport> Partition<X, L, S, T> {
    /// Re-runs a stream topology on the records of its dead letters here; answers
    /// (replayed successfully, still failing).
    pub fn replay_dead_letters(&mut self, topology: &str) -> Result<(u64, u64), ReplayError> {
        let e = |e: super::seams::StorageError| ReplayError::Partition(PartitionError::Store(e));
        let t = self
            .topologies
            .iter()
            .find(|t| t.name == topology && t.kind == TopologyKind::Stream)
            .cloned()
            .ok_or_else(|| ReplayError::NotStream(topology.to_string()))?;
        let letters: Vec<DeadLetter> = self
            .store
            .dead_letters(topology, usize::MAX)
            .map_err(e)?
            .into_iter()
            .filter(|d| t.depots.contains(&d.depot))
            .collect();
        let mut items = Vec::new();
        for d in &letters {
            if let Some((offset, record)) = self
                .log
                .read(&d.depot, d.offset, 1)
                .map_err(PartitionError::Log)?
                .into_iter()
                .next()
            {
                if offset == d.offset {
                    items.push(Item::Replay {
                        topology: t.name.clone(),
                        depot: Arc::from(d.depot.as_str()),
                        offset,
                        record,
                    });
                }
            }
        }
        let total = items.len() as u64;
        self.process(items, None)?;
        let still = self
            .store
            .dead_letters(topology, usize::MAX)
            .map_err(e)?
            .into_iter()
            .filter(|d| t.depots.contains(&d.depot))
            .count() as u64;
        Ok((total.saturating_sub(still), still))
    }
}
