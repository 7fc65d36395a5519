//! Topologies: the guest logic run on each record, and the partition worker that runs it.
//!
//! Owns [`worker`], the single thread per (module, partition) that appends records to the
//! depot log, runs every stream topology subscribed to them, commits PState writes with the
//! topologies' processed offsets, and answers acks. Invariant: per depot partition, records are
//! processed in offset order, and a topology's offset advances only in the commit holding the
//! writes its handler made for those records.

pub mod worker;

pub use worker::{AckLevel, AppendOutcome, ProcessingError, Work};

/// A stream topology: `handler` runs for each record appended to any of `depots`.
#[derive(Debug, Clone)]
pub struct StreamTopology {
    pub name: String,
    pub depots: Vec<String>,
    pub handler: String,
    pub hop_handlers: Vec<String>,
}
