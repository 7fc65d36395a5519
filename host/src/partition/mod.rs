//! The partition: the unit of storage, ordering and processing of a module, as a state
//! machine over explicit seams.
//!
//! A partition owns its depot log and its state store (PState entries plus progress), runs
//! its handlers, and talks to the other partitions of its module only through the hop
//! protocol. Code map:
//! - [`work`]: the messages on a partition's queue and the answers appends get;
//! - [`seams`]: the traits it runs over (log, store, hop transport, executor, clock);
//! - [`core`]: the [`core::Partition`] state machine: start (recovery), step, tick;
//! - [`commit`]: **the commit protocol** and why it gives exactly-once effects;
//! - [`hops`]: hop identity (dense seq per pair), outbox, watermarks, confirmations, rewinds;
//! - [`tree`]: `full`-ack event trees;
//! - [`execute`]: handler calls with a typed retry class; the wasmtime executor;
//! - [`recovery`]: replaying the depot log into the store;
//! - [`dead_letters`]: dead letters and their replay;
//! - [`microbatch`]: the partition's side of microbatches;
//! - [`progress`]: the redb tables of offsets, outbox, watermarks, dead letters;
//! - [`worker`]: the thread, its supervisor (restart with backoff) and the partition status;
//! - [`hash`]: the stable hash that maps keys to partitions.

pub mod commit;
pub mod core;
pub mod dead_letters;
pub mod execute;
mod hash;
pub mod hops;
pub mod microbatch;
pub mod progress;
pub mod recovery;
pub mod retention;
pub mod seams;
pub mod ticks;
pub mod tree;
pub mod work;
pub mod worker;

pub use self::core::{Partition, PartitionConfig, PartitionError};
pub use hash::{partition_of, stable_hash};
pub use work::{AckLevel, AppendOutcome, ProcessingError, Reply, Work};

pub use crate::topology::{Topology, TopologyKind};
