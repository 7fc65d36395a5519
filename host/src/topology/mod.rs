//! Topologies: the guest logic run on each record, and the partition worker that runs it.
//!
//! Owns [`worker`], the single thread per (module, partition) that appends records to the
//! depot log, runs every stream topology subscribed to them, commits PState writes with the
//! topologies' processed offsets, and answers acks. Invariant: per depot partition, records are
//! processed in offset order, and a topology's offset advances only in the commit holding the
//! writes its handler made for those records.

pub mod microbatch;
pub mod worker;

pub use worker::{AckLevel, AppendOutcome, ProcessingError, Work};

/// Stream topologies run per record as it arrives; microbatch topologies run over batches
/// committed atomically across partitions ([`microbatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyKind {
    Stream,
    Microbatch,
}

/// A topology: `handler` runs for each record appended to any of `depots`; `hop_handlers`
/// continue its event trees on other partitions.
#[derive(Debug, Clone)]
pub struct Topology {
    pub kind: TopologyKind,
    pub name: String,
    pub depots: Vec<String>,
    pub handler: String,
    pub hop_handlers: Vec<String>,
}
