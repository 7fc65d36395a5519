//! Topologies: the guest logic run on each record, as declared by a module, and the
//! microbatch coordinator.
//!
//! The partitions run the topologies ([`crate::partition`]); [`microbatch`] owns the
//! coordinator that plans, runs, prepares, decides and applies microbatches across them.

pub mod microbatch;

pub use crate::partition::{AckLevel, AppendOutcome, ProcessingError, Work};

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
