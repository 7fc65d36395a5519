//! The seams a partition runs over, so that each can be replaced: the depot log, the state
//! store, the hop transport, the handler executor and the clock.
//!
//! The single node plugs in redb files, in-process channels and wasmtime
//! ([`super::progress`], [`super::worker`], [`super::execute`]); the simulation test plugs
//! in in-memory implementations and native Rust handlers; the cluster (CLUSTER.md §4.9) puts
//! the log and the store behind a partition's replicated log ([`crate::cluster::replicated`]),
//! and will plug in NATS request/reply for hops. Contracts every implementation keeps:
//! - [`PartitionLog::append`] returns only after the records are durable, with dense offsets;
//! - [`PartitionStore::commit`] is atomic; a commit with `durable` makes it and every earlier
//!   commit survive a crash, a commit without it may be lost by a crash (together with every
//!   later one) but never partly;
//! - [`HopTransport::send`] keeps the order of messages from one sender to one target.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use super::hops::Hop;
use super::work::PeerMessage;
pub use crate::depot::log::{KeyFound, KeyedRecord};
use crate::imports::EmittedHop;
use crate::pstate::store::{DeadLetter, Overlay};
use crate::runtime::{GuestError, RecordCtx};

/// A storage failure, with the file or the operation it concerns. `damaged`: stored data
/// failed a check (a seal or redb's structure); retrying cannot help.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct StorageError {
    pub message: String,
    pub damaged: bool,
}

impl StorageError {
    /// A failure that is not damage (an I/O error, a crash in a simulation).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            damaged: false,
        }
    }
}

impl From<redb::Error> for StorageError {
    fn from(e: redb::Error) -> Self {
        StorageError {
            damaged: matches!(e, redb::Error::Corrupted(_)),
            message: e.to_string(),
        }
    }
}

/// One partition's depot log: every depot's records on this partition.
pub trait PartitionLog {
    /// Appends records durably in one commit, with the idempotency keys of those that have
    /// one (in the same commit); returns their offsets. `next` caches each depot's end offset
    /// and is advanced only if the commit succeeds. `time_ms` is the host's wall time (age
    /// retention compares it with later times of the same clock).
    fn append(
        &self,
        records: &[(&str, &[u8])],
        keys: &[KeyedRecord<'_>],
        next: &mut HashMap<String, u64>,
        time_ms: u64,
    ) -> Result<Vec<u64>, StorageError>;
    /// The record stored under an idempotency key of `depot`, within the key window.
    fn find_key(&self, depot: &str, key: &str) -> Result<Option<KeyFound>, StorageError>;
    /// Up to `limit` records of `depot` from offset `from`, in order.
    fn read(
        &self,
        depot: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError>;
    /// The offset the next record of `depot` will get.
    fn end(&self, depot: &str) -> Result<u64, StorageError>;
    /// The first offset of `depot` still stored (retention trimmed those below). A log that
    /// never trims keeps these defaults.
    fn start(&self, depot: &str) -> Result<u64, StorageError> {
        let _ = depot;
        Ok(0)
    }
    /// Trims `depot` as far as `retention` says at wall time `now_ms`, durably, but never at
    /// or past `keep_from`; answers the new start.
    fn trim(
        &self,
        depot: &str,
        retention: crate::depot::Retention,
        now_ms: u64,
        keep_from: u64,
    ) -> Result<u64, StorageError> {
        let _ = (retention, now_ms, keep_from);
        self.start(depot)
    }
}

/// Everything one partition commit writes at once: PState entries and the partition's
/// progress (see [`super::commit`] for the protocol).
#[derive(Debug, Default)]
pub struct Commit {
    pub writes: Overlay,
    /// `(topology, depot)` to the new processed offset.
    pub offsets: BTreeMap<(String, String), u64>,
    pub dead_letters: Vec<DeadLetter>,
    /// Dead letters resolved by a replay: (topology, depot, offset).
    pub dead_letters_remove: Vec<(String, String, u64)>,
    /// Hops emitted: `(target, seq, entry)`.
    pub outbox_put: Vec<(u32, u64, Vec<u8>)>,
    /// Per target: outbox entries below this seq were confirmed and are dropped.
    pub outbox_trim: BTreeMap<u32, u64>,
    /// Per target: the next seq to assign (when it moved).
    pub hops_next: BTreeMap<u32, u64>,
    /// Per source: the next seq to apply (when it moved).
    pub hops_applied: BTreeMap<u32, u64>,
    /// This commit's position: the partition's commits are numbered 1, 2, 3, … (0: not
    /// numbered — a commit with nothing else in it).
    pub position: u64,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.offsets.is_empty()
            && self.dead_letters.is_empty()
            && self.dead_letters_remove.is_empty()
            && self.outbox_put.is_empty()
            && self.outbox_trim.is_empty()
            && self.hops_next.is_empty()
            && self.hops_applied.is_empty()
    }
}

/// A partition's progress as last committed.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    pub offsets: BTreeMap<(String, String), u64>,
    /// Unconfirmed hops, ordered by `(target, seq)`.
    pub outbox: Vec<(u32, u64, Vec<u8>)>,
    pub hops_next: BTreeMap<u32, u64>,
    pub hops_applied: BTreeMap<u32, u64>,
    /// The position of the last commit.
    pub position: u64,
}

/// One partition's state: PState entries plus progress, committed together.
pub trait PartitionStore {
    fn progress(&self) -> Result<Progress, StorageError>;
    /// Outbox entries to `target` from seq `from`, in order.
    fn outbox_from(&self, target: u32, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError>;
    fn commit(&self, commit: &Commit, durable: bool) -> Result<(), StorageError>;
    /// Up to `limit` dead letters of `topology`, oldest offsets first.
    fn dead_letters(&self, topology: &str, limit: usize) -> Result<Vec<DeadLetter>, StorageError>;
}

/// Delivers hop-protocol messages to partitions of the same module.
pub trait HopTransport {
    /// Sends a control message (a confirmation, a rewind); never refused.
    fn send(&self, target: u32, message: PeerMessage);
    /// Offers a hop; gives it back when `target`'s queue already holds as many hops as it
    /// may (the sender holds it and offers it again: it is durable in the outbox).
    fn offer(&self, target: u32, hop: Hop) -> Result<(), Hop> {
        self.send(target, PeerMessage::Hop(hop));
        Ok(())
    }
}

/// What one handler call gave back.
#[derive(Debug, Default)]
pub struct Called {
    /// The ack-return value (CBOR), if any.
    pub ack: Option<Vec<u8>>,
    pub hops: Vec<EmittedHop>,
}

/// Runs handlers. Writes a call makes go to the current record's overlay; reads see that
/// overlay, then the batch's kept writes, then the last commit.
pub trait Executor {
    fn call(
        &mut self,
        topology: &str,
        handler: &str,
        input: &[u8],
        ctx: RecordCtx<'_>,
    ) -> Result<Called, GuestError>;
    /// Ends the current record: keep its writes in the batch, or drop them.
    fn end_record(&mut self, keep: bool);
    /// The batch's kept writes, to be committed.
    fn take_writes(&mut self) -> Overlay;
    /// A storage failure a handler's read hit since the last call of this (the batch must
    /// not commit: its handlers saw an error that was not theirs).
    fn take_storage_fault(&mut self) -> Option<StorageError> {
        None
    }
}

/// Milliseconds on a monotonic clock, and the wall-clock time tick depots are stamped with
/// (injectable, so tests need not sleep).
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock whose wall time moves only when told ([`ManualClock::advance`]), so tests drive
/// tick depots without sleeping; its monotonic time is the system's (flush timing stays
/// real). `sluice serve --manual-clock-ms` and `TestHost` (`Options::manual_clock_ms`) use it.
#[derive(Debug)]
pub struct ManualClock {
    started: std::time::Instant,
    wall_ms: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    pub fn new(wall_ms: u64) -> Self {
        Self {
            started: std::time::Instant::now(),
            wall_ms: std::sync::atomic::AtomicU64::new(wall_ms),
        }
    }

    /// Moves the wall time `ms` forward; returns the new time.
    pub fn advance(&self, ms: u64) -> u64 {
        self.wall_ms
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst)
            + ms
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn wall_ms(&self) -> u64 {
        self.wall_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The process's monotonic clock.
pub struct SystemClock(std::time::Instant);

impl Default for SystemClock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// The seams through shared pointers (the host shares its files with readers; the simulation
/// shares its in-memory state with the checker).
macro_rules! forward_through {
    ($ptr:ident) => {
        impl<T: PartitionLog + ?Sized> PartitionLog for $ptr<T> {
            fn append(
                &self,
                records: &[(&str, &[u8])],
                keys: &[KeyedRecord<'_>],
                next: &mut HashMap<String, u64>,
                time_ms: u64,
            ) -> Result<Vec<u64>, StorageError> {
                (**self).append(records, keys, next, time_ms)
            }

            fn find_key(&self, depot: &str, key: &str) -> Result<Option<KeyFound>, StorageError> {
                (**self).find_key(depot, key)
            }

            fn read(
                &self,
                depot: &str,
                from: u64,
                limit: usize,
            ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
                (**self).read(depot, from, limit)
            }

            fn end(&self, depot: &str) -> Result<u64, StorageError> {
                (**self).end(depot)
            }

            fn start(&self, depot: &str) -> Result<u64, StorageError> {
                (**self).start(depot)
            }

            fn trim(
                &self,
                depot: &str,
                retention: crate::depot::Retention,
                now_ms: u64,
                keep_from: u64,
            ) -> Result<u64, StorageError> {
                (**self).trim(depot, retention, now_ms, keep_from)
            }
        }

        impl<T: PartitionStore + ?Sized> PartitionStore for $ptr<T> {
            fn progress(&self) -> Result<Progress, StorageError> {
                (**self).progress()
            }

            fn outbox_from(
                &self,
                target: u32,
                from: u64,
            ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
                (**self).outbox_from(target, from)
            }

            fn commit(&self, commit: &Commit, durable: bool) -> Result<(), StorageError> {
                (**self).commit(commit, durable)
            }

            fn dead_letters(
                &self,
                topology: &str,
                limit: usize,
            ) -> Result<Vec<DeadLetter>, StorageError> {
                (**self).dead_letters(topology, limit)
            }
        }
    };
}

forward_through!(Arc);
forward_through!(Rc);
forward_through!(Box);
