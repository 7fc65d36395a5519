//! What a partition is asked to do, and what it answers.
//!
//! Owns the messages on a partition's queue ([`Work`], [`PeerMessage`] for the hop protocol
//! between partitions, microbatch steps) and the answers an append gets. Invariant: a message
//! never carries a promise the sender has not kept durably (a hop is sent only after the
//! commit holding it in the source's outbox was made durable).

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::hops::Hop;
use crate::runtime::GuestError;
use crate::value::Value;

/// What an append waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AckLevel {
    /// Accepted into the partition's bounded queue.
    None,
    /// Durable in the depot log (fsync).
    Append,
    /// Every stream topology reading the depot finished its whole event tree.
    Full,
}

impl AckLevel {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(AckLevel::None),
            "append" => Some(AckLevel::Append),
            "full" => Some(AckLevel::Full),
            _ => None,
        }
    }
}

/// A successful append.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AppendOutcome {
    pub partition: u32,
    pub offset: u64,
    /// Ack-return values by topology, from any handler of the event tree (`full` acks only).
    pub results: BTreeMap<String, Value>,
    /// The append carried an idempotency key already stored: this is the original record's
    /// place, nothing was appended (and `results` is empty).
    pub replayed: bool,
}

/// An append that was not (fully) carried out.
#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ProcessingError {
    /// The record is durable at (partition, offset) but a handler of its event tree failed;
    /// the failed work is in that topology's dead letters.
    #[error(
        "the record (partition {partition}, offset {offset}) is stored, but topology `{topology}` failed on it: {error}"
    )]
    Topology {
        partition: u32,
        offset: u64,
        topology: String,
        error: GuestError,
    },
    /// Storage failed before the record was stored; it was not acknowledged.
    #[error("storage failure on partition {partition}: {message}")]
    Storage { partition: u32, message: String },
    /// The depot-log commit holding the record failed in a way that does not say whether it
    /// reached the disk (ENOSPC or EIO on write or fsync): it may be stored at `offset` (when
    /// known), and then it will be processed. Read the depot at that offset, or retry with the
    /// same `Idempotency-Key`, to learn which.
    #[error("the record may or may not be stored on partition {partition}{}: {reason}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    AppendUnknown {
        partition: u32,
        offset: Option<u64>,
        reason: String,
    },
    /// The partition failed for good (damaged files, lost acked data) before taking the
    /// record: nothing was written.
    #[error("partition {partition} has failed and serves nothing: {cause}")]
    PartitionFailed { partition: u32, cause: String },
    /// The idempotency key was used for another record (another body) within the window.
    #[error("idempotency key `{key}` was already used for another record (stored on partition {partition} at offset {offset})")]
    KeyReused {
        key: String,
        partition: u32,
        offset: u64,
    },
    /// The partition runs on another host of the cluster, which took nothing: it was full,
    /// restarting or being updated, or no host owns the partition now (a failover).
    /// Nothing was written; retry.
    #[error("partition {partition} took nothing: {reason}")]
    NotTaken {
        partition: u32,
        reason: String,
        /// Its queue was full (else: not running).
        busy: bool,
    },
    /// The record is durable at (partition, offset), but a partition working on its event
    /// tree restarted before the tree finished: its effects will be applied (exactly once)
    /// when the work resumes, and nobody can say when. Do not append it again.
    #[error(
        "the record (partition {partition}, offset {offset}) is stored, but its processing outcome is unknown: {reason}"
    )]
    OutcomeUnknown {
        partition: u32,
        offset: u64,
        reason: String,
    },
}

pub type Reply = oneshot::Sender<Result<AppendOutcome, ProcessingError>>;

/// The largest ack-return value a handler may give (it travels in the HTTP answer).
pub const ACK_VALUE_BYTES_MAX: usize = 1 << 20;

/// The hop protocol between partitions (CLUSTER.md §4.4 in its one-host form).
pub enum PeerMessage {
    /// A hop from `hop.source`, identified by its dense sequence number on that pair.
    Hop(Hop),
    /// `target` has durably applied every hop from the receiver below `next`: the receiver
    /// may drop them from its outbox.
    Confirmed { target: u32, next: u64 },
    /// `target` expects hop `from` next (it lost what came after, e.g. it restarted): the
    /// receiver re-sends its outbox to `target` from `from`.
    Rewind { target: u32, from: u64 },
}

/// Work queued for a partition.
pub enum Work {
    Append {
        depot: Arc<str>,
        /// The record as CBOR.
        record: Vec<u8>,
        ack: AckLevel,
        reply: Option<Reply>,
        /// Its idempotency key, if the client gave one.
        key: Option<Arc<str>>,
    },
    Peer(PeerMessage),
    /// One step of a microbatch, from the module's coordinator.
    Batch {
        topology: String,
        id: u64,
        step: BatchStep,
        reply: Sender<BatchReply>,
    },
    /// Run `topology` again on the records in its dead letters on this partition (after a
    /// fix, e.g. a module update); answers (replayed successfully, still failing).
    ReplayDeadLetters {
        topology: String,
        reply: oneshot::Sender<Result<(u64, u64), String>>,
    },
    /// Discard one dead letter (`by`: who asked, for the audit line).
    DiscardDeadLetter {
        topology: String,
        depot: String,
        offset: u64,
        by: String,
        reply: oneshot::Sender<Result<super::dead_letters::Discard, String>>,
    },
    /// Finish what is queued before this, flush, exit.
    Stop,
}

/// The steps a microbatch goes through on each partition.
pub enum BatchStep {
    /// Run the topology's handler on these `(depot, start, end)` ranges of this partition,
    /// starting the batch afresh (a retry of the same id starts over).
    Run(Vec<(String, u64, u64)>),
    /// Run this partition's dead letters of the topology again, as a batch of their own
    /// (applying it removes those that succeed).
    RunDeadLetters,
    /// Run hop handlers sent by other partitions within the batch.
    Hops(Vec<BatchHop>),
    /// Store this partition's writes for the batch durably, not yet applied.
    Prepare,
    /// Apply the prepared writes (the coordinator decided to commit).
    Apply,
    /// Every partition applied the batch: answer the `full` acks of records in these ranges.
    Settle(Vec<(String, u64, u64)>),
}

/// A hop inside a microbatch (delivered by the coordinator, never through the outbox).
#[derive(Debug, Clone)]
pub struct BatchHop {
    pub target: u32,
    pub handler: String,
    pub payload: Vec<u8>,
    pub depot: Arc<str>,
    pub offset: u64,
}

/// A partition's answer to one batch step.
pub struct BatchReply {
    pub partition: u32,
    pub hops: Vec<BatchHop>,
    /// Handlers a replay ran, or dead letters a prepare holds.
    pub count: u64,
    pub error: Option<String>,
}
