//! A partition's seams on a cluster: the local depot log and state store (redb on a host,
//! in memory in the simulation) behind the partition's replicated log (CLUSTER.md §4.9).
//!
//! Every append is first stored as an `In` entry, every non-empty commit as an `Fx` entry,
//! by the partition's [`Owner`]; only then is it applied locally. So the local files are a
//! cache of a prefix of the log, and a host that claims the partition rebuilds them from the
//! log ([`Restorer`]) without running guest code: `In` entries are appended again (same
//! order, so the same offsets), `Fx` entries committed again. Records whose `Fx` never made
//! it are re-run by the partition's ordinary recovery. Invariants:
//! - nothing is applied locally (hence answered) before the log stored it;
//! - a write the log did not answer, after the retries, **poisons** the seams: every later
//!   write fails until the partition restarts and re-claims (the entry may land late; only a
//!   restore from the log may then say what the partition holds);
//! - a fenced owner writes nothing more: another host owns the partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::codec::{decode_commit, decode_inputs, encode_commit, encode_inputs};
use super::fence::{Claim, ClaimError, Entry, LogView, Owner, ViewError, WriteError};
use super::log::{EntryKind, ReplicatedLog};
use crate::partition::seams::{
    Commit, KeyFound, KeyedRecord, PartitionLog, PartitionStore, Progress, StorageError,
};
use crate::pstate::store::DeadLetter;

/// How a write the log did not answer is retried (same message ids: stored once): every
/// `pause`, at most `attempts` times and only while `within` has not passed since the first
/// try (one try may itself wait a whole request timeout, and the seams hold the writer
/// meanwhile: the time bound keeps that wait bounded).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub within: Duration,
    pub pause: Duration,
}

impl Default for Retry {
    /// Long enough for a stream leader election (4–6 s measured, CLUSTER.md §1.1) with a
    /// request timeout to spare; a write still in doubt then poisons the partition, which
    /// the cluster claims again (restoring whatever did land).
    fn default() -> Self {
        Self {
            attempts: 40,
            within: Duration::from_secs(15),
            pause: Duration::from_millis(250),
        }
    }
}

struct Writer<R: ?Sized> {
    owner: Owner<R>,
    /// Why the seams stopped writing (a write in doubt past its retries, or a fence).
    poisoned: Option<String>,
}

/// The partition's owner, shared by its two seams (they write one log, in order). Its
/// epoch and last sequence are also kept outside the writer, so that the heartbeats and
/// the placement read them without waiting for a write in flight.
pub struct Replication<R: ReplicatedLog + ?Sized> {
    writer: Mutex<Writer<R>>,
    retry: Retry,
    epoch: u64,
    last: std::sync::atomic::AtomicU64,
}

impl<R: ReplicatedLog + ?Sized> Replication<R> {
    pub fn new(owner: Owner<R>, retry: Retry) -> Arc<Self> {
        Arc::new(Self {
            epoch: owner.epoch(),
            last: std::sync::atomic::AtomicU64::new(owner.next_seq() - 1),
            writer: Mutex::new(Writer {
                owner,
                poisoned: None,
            }),
            retry,
        })
    }

    /// Why writes stopped, if they did (the partition must restart and re-claim).
    pub fn poisoned(&self) -> Option<String> {
        self.writer.lock().expect("poisoned").poisoned.clone()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the log holds entries past this owner's last one (another host claimed the
    /// partition, or a write in doubt landed): answers the log's last sequence if so. No
    /// write is in flight meanwhile (it holds the writer), so an entry of this owner's own
    /// is never mistaken for another's.
    ///
    /// A write in flight (retried through a leader election, say) holds the writer for up to
    /// [`Retry::within`]: then this answers `None` at once rather than wait, since that write
    /// itself finds a fence.
    pub fn overtaken(&self) -> Result<Option<u64>, super::log::LogError> {
        let w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
            Err(std::sync::TryLockError::Poisoned(_)) => panic!("poisoned"),
        };
        let ours = w.owner.next_seq() - 1;
        let last = w.owner.log().last_seq()?;
        Ok((last > ours).then_some(last))
    }

    /// The sequence of the last entry this owner stored (its claim, at first).
    pub fn last_seq(&self) -> u64 {
        self.last.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores one entry, retrying a write in doubt; any failure poisons the seams.
    fn write(&self, kind: EntryKind, body: &[u8]) -> Result<u64, StorageError> {
        let mut w = self.writer.lock().expect("poisoned");
        if let Some(why) = &w.poisoned {
            return Err(StorageError::new(format!(
                "the partition stopped writing ({why}); it restarts from its log"
            )));
        }
        let started = std::time::Instant::now();
        let mut result = w.owner.write(kind, body);
        let mut attempts = 0;
        while matches!(result, Err(WriteError::Unavailable(_)))
            && attempts < self.retry.attempts
            && started.elapsed() < self.retry.within
        {
            attempts += 1;
            if !self.retry.pause.is_zero() {
                std::thread::sleep(self.retry.pause);
            }
            result = w.owner.retry();
        }
        self.last
            .store(w.owner.next_seq() - 1, std::sync::atomic::Ordering::Release);
        result.map_err(|e| {
            let why = e.to_string();
            w.poisoned = Some(why.clone());
            StorageError::new(format!("replicated log: {why}"))
        })
    }
}

/// The depot log of a partition: the local one, behind its replicated log on a cluster
/// (`replication: None` on a single node: the local log alone).
pub struct ReplicatedDepotLog<L, R: ReplicatedLog + ?Sized> {
    pub local: L,
    pub replication: Option<Arc<Replication<R>>>,
}

impl<L: PartitionLog, R: ReplicatedLog + ?Sized> PartitionLog for ReplicatedDepotLog<L, R> {
    fn append(
        &self,
        records: &[(&str, &[u8])],
        keys: &[KeyedRecord<'_>],
        next: &mut HashMap<String, u64>,
        time_ms: u64,
    ) -> Result<Vec<u64>, StorageError> {
        if let Some(r) = &self.replication {
            r.write(EntryKind::In, &encode_inputs(records, keys, time_ms))?;
        }
        self.local.append(records, keys, next, time_ms)
    }

    fn find_key(&self, depot: &str, key: &str) -> Result<Option<KeyFound>, StorageError> {
        self.local.find_key(depot, key)
    }

    fn read(
        &self,
        depot: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.local.read(depot, from, limit)
    }

    fn end(&self, depot: &str) -> Result<u64, StorageError> {
        self.local.end(depot)
    }

    fn start(&self, depot: &str) -> Result<u64, StorageError> {
        self.local.start(depot)
    }

    fn trim(
        &self,
        depot: &str,
        retention: crate::depot::Retention,
        now_ms: u64,
        keep_from: u64,
    ) -> Result<u64, StorageError> {
        // Local only: a restore appends trimmed records again, and retention trims them again.
        self.local.trim(depot, retention, now_ms, keep_from)
    }
}

/// The state store of a partition: the local one, behind its replicated log on a cluster
/// (`replication: None` on a single node).
pub struct ReplicatedStore<S, R: ReplicatedLog + ?Sized> {
    pub local: S,
    pub replication: Option<Arc<Replication<R>>>,
}

impl<S: PartitionStore, R: ReplicatedLog + ?Sized> PartitionStore for ReplicatedStore<S, R> {
    fn progress(&self) -> Result<Progress, StorageError> {
        self.local.progress()
    }

    fn outbox_from(&self, target: u32, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.local.outbox_from(target, from)
    }

    fn commit(&self, commit: &Commit, durable: bool) -> Result<(), StorageError> {
        // An empty commit only makes earlier ones durable locally: the log already has them.
        if let (false, Some(r)) = (commit.is_empty(), &self.replication) {
            r.write(EntryKind::Fx, &encode_commit(commit))?;
        }
        self.local.commit(commit, durable)
    }

    fn dead_letters(&self, topology: &str, limit: usize) -> Result<Vec<DeadLetter>, StorageError> {
        self.local.dead_letters(topology, limit)
    }
}

/// Rebuilds a partition's local log and store from its replicated log, entry by entry (the
/// `apply` of a claim's [`super::fence::LogView::catch_up`]); [`Restorer::finish`] makes it
/// durable.
#[derive(Default)]
pub struct Restorer {
    next: HashMap<String, u64>,
    pub inputs: u64,
    pub commits: u64,
}

impl Restorer {
    pub fn apply<L: PartitionLog + ?Sized, S: PartitionStore + ?Sized>(
        &mut self,
        entry: &Entry,
        log: &L,
        store: &S,
    ) -> Result<(), ViewError> {
        let damaged = |reason: String| ViewError::Damaged {
            seq: entry.seq,
            reason,
        };
        let apply = |reason: String| ViewError::Apply {
            seq: entry.seq,
            reason,
        };
        match entry.kind {
            EntryKind::In => {
                let inputs = decode_inputs(&entry.body).map_err(|e| damaged(e.to_string()))?;
                let records: Vec<(&str, &[u8])> = inputs
                    .records
                    .iter()
                    .map(|(d, r)| (d.as_str(), r.as_slice()))
                    .collect();
                log.append(&records, &inputs.keyed(), &mut self.next, inputs.time_ms)
                    .map_err(|e| apply(format!("restoring into the local log: {e}")))?;
                self.inputs += 1;
            }
            EntryKind::Fx => {
                let commit = decode_commit(&entry.body).map_err(|e| damaged(e.to_string()))?;
                store
                    .commit(&commit, false)
                    .map_err(|e| apply(format!("restoring into the local store: {e}")))?;
                self.commits += 1;
            }
            EntryKind::Ctl => {}
        }
        Ok(())
    }

    /// Makes the restored store durable (one fsync for the whole restore).
    pub fn finish<S: PartitionStore + ?Sized>(&self, store: &S) -> Result<(), StorageError> {
        store.commit(&Commit::default(), true)
    }
}

/// Claims the partition for `host` by `rule` (see [`Owner::claim_as`]), restoring the
/// empty local `log` and `store` from the replicated log on the way; answers the new owner's
/// replication, to build the partition's seams with. Entries are split into parts of
/// `part_bytes` ([`super::fence::PART_BYTES_MAX`] on JetStream).
#[allow(clippy::too_many_arguments)]
pub fn claim_restoring<R, L, S>(
    rlog: Arc<R>,
    host: &str,
    rule: Claim,
    log: &L,
    store: &S,
    retry: Retry,
    part_bytes: usize,
) -> Result<Arc<Replication<R>>, ClaimError>
where
    R: ReplicatedLog + ?Sized,
    L: PartitionLog + ?Sized,
    S: PartitionStore + ?Sized,
{
    let mut restorer = Restorer::default();
    let owner = Owner::claim_as(rlog, host, &mut LogView::default(), rule, |e| {
        restorer.apply(e, log, store)
    })?;
    restorer.finish(store).map_err(|e| {
        ClaimError::View(ViewError::Apply {
            seq: owner.next_seq() - 1,
            reason: format!("making the restored store durable: {e}"),
        })
    })?;
    Ok(Replication::new(owner.with_part_bytes(part_bytes), retry))
}

/// A host partition's depot log (replicated through JetStream on a cluster).
pub type HostLog =
    ReplicatedDepotLog<Arc<crate::depot::log::DepotLog>, super::jetstream::JetStreamLog>;
/// A host partition's state store (replicated through JetStream on a cluster).
pub type HostStore =
    ReplicatedStore<Arc<crate::pstate::PStateStore>, super::jetstream::JetStreamLog>;
