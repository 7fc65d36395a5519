//! The partition state machine: what one partition does with the work it is given.
//!
//! [`Partition`] is generic over its seams ([`super::seams`]) so that the same code runs on
//! redb and wasmtime in the host and on in-memory stores with native handlers in the
//! simulation test. It has three entry points, all deterministic given their inputs:
//! [`Partition::start`] (recovery), [`Partition::step`] (one drained batch of work) and
//! [`Partition::tick`] (the flush timer). Any `Err` they return means the in-memory state
//! may be ahead of the store: the caller must drop the partition and start a new one from
//! the store (the supervisor in [`super::worker`] does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::hops::{decode_outbox, Hop, HopBook};
use super::microbatch::MbStates;
use super::seams::{
    Clock, Executor, HopTransport, KeyedRecord, PartitionLog, PartitionStore, StorageError,
};
use super::tree::Tree;
use super::work::{AckLevel, AppendOutcome, PeerMessage, ProcessingError, Reply, Work};
use super::Topology;

/// A partition's fixed settings.
#[derive(Debug, Clone)]
pub struct PartitionConfig {
    pub module: Arc<str>,
    pub partition: u32,
    pub partitions: u32,
    /// Work items one batch takes at most.
    pub batch_records_max: usize,
    pub handler_attempts_max: u32,
    /// How long PState commits may stay non-durable (0: every commit is durable).
    pub flush_interval_ms: u64,
    /// Backoff before retry n is `base << n`.
    pub retry_backoff_base_ms: u64,
    /// How long the partition pauses after a guest call stopped at its deadline.
    pub deadline_penalty_ms: u64,
    /// Tick depots: (depot, interval ms).
    pub ticks: Vec<(Arc<str>, u64)>,
    /// Depots with retention bounds.
    pub retention: Vec<(Arc<str>, crate::depot::Retention)>,
}

/// Why a partition stopped; it must be restarted from its store.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PartitionError {
    #[error("depot log: {0}")]
    Log(StorageError),
    #[error("PState store: {0}")]
    Store(StorageError),
    /// The files disagree: acked data is missing. The partition must not serve.
    #[error("acked data is lost: {0}")]
    Lost(String),
}

impl PartitionError {
    /// Whether starting again cannot help: stored data is damaged or lost.
    pub fn is_fatal(&self) -> bool {
        match self {
            PartitionError::Log(e) | PartitionError::Store(e) => e.damaged,
            PartitionError::Lost(_) => true,
        }
    }
}

/// Refuses progress whose outbox holds a hop at or past its pair's next seq: the counter and
/// the outbox are committed together, so such a store lost commits.
fn check_outbox(progress: &super::seams::Progress) -> Result<(), PartitionError> {
    for (target, seq, _) in &progress.outbox {
        let next = progress.hops_next.get(target).copied().unwrap_or(0);
        if *seq >= next {
            return Err(PartitionError::Lost(format!(
                "the hop outbox holds seq {seq} to partition {target}, but the next seq to it is {next}"
            )));
        }
    }
    Ok(())
}

/// One unit of work in a batch, with where it came from.
pub(super) enum Item {
    Record {
        depot: Arc<str>,
        offset: u64,
        record: Vec<u8>,
        tree: Option<Arc<Tree>>,
    },
    Hop(Hop),
    /// A dead letter of a stream topology, run again (`record`: the depot record, or the
    /// hop's payload when `hop` is set).
    Replay {
        topology: String,
        depot: Arc<str>,
        offset: u64,
        record: Vec<u8>,
        hop: Option<super::dead_letters::DeadHop>,
    },
}

/// This partition's metric handles per topology: records processed, retries, dead letters.
pub struct TopologyCounters {
    per_topology: HashMap<String, [Arc<AtomicU64>; 3]>,
    pub(super) commits: Arc<AtomicU64>,
    pub(super) items: Arc<AtomicU64>,
    /// Hops that waited for a full target queue.
    pub(super) hops_held: Arc<AtomicU64>,
    module: Arc<str>,
}

impl TopologyCounters {
    pub fn new(module: &str, topologies: &[Topology]) -> Self {
        use crate::metrics::counter;
        Self {
            commits: counter("sluice_pstate_commits_total", &[("module", module)]),
            items: counter("sluice_worker_items_total", &[("module", module)]),
            hops_held: counter("sluice_hops_held_total", &[("module", module)]),
            module: module.into(),
            per_topology: topologies
                .iter()
                .map(|t| {
                    let l = [("module", module), ("topology", t.name.as_str())];
                    (
                        t.name.clone(),
                        [
                            counter("sluice_records_processed_total", &l),
                            counter("sluice_handler_retries_total", &l),
                            counter("sluice_dead_letters_total", &l),
                        ],
                    )
                })
                .collect(),
        }
    }

    fn add(&self, topology: &str, which: usize) {
        if let Some(c) = self.per_topology.get(topology) {
            c[which].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn processed(&self, topology: &str) {
        self.add(topology, 0);
    }

    pub(super) fn retried(&self, topology: &str) {
        self.add(topology, 1);
    }

    pub(super) fn dead(&self, topology: &str) {
        self.add(topology, 2);
    }

    /// Counts records trimmed by retention.
    pub(super) fn trimmed(&self, depot: &str, records: u64) {
        if records > 0 {
            crate::metrics::counter(
                "sluice_depot_records_trimmed_total",
                &[("module", &self.module), ("depot", depot)],
            )
            .fetch_add(records, Ordering::Relaxed);
        }
    }
}

/// When PState commits were last made durable.
#[derive(Debug, Default)]
pub(super) struct Flush {
    pub last_durable_ms: u64,
    pub dirty: bool,
}

/// One partition of a module: see the module docs.
pub struct Partition<X, L, S, T> {
    pub cfg: PartitionConfig,
    pub topologies: Arc<Vec<Topology>>,
    pub exec: X,
    pub log: L,
    pub store: S,
    pub transport: T,
    pub clock: Arc<dyn Clock>,
    /// `full`-ack event trees alive in the whole module (shared by its partitions).
    pub open_trees: Arc<AtomicUsize>,
    pub counters: TopologyCounters,
    /// Each depot's end offset, once known.
    pub(super) next_offsets: HashMap<String, u64>,
    pub(super) hops: HopBook,
    pub(super) flush: Flush,
    /// `full` acks waiting for a microbatch: (topology, depot, offset, tree).
    pub(super) mb_waiting: Vec<(String, Arc<str>, u64, Arc<Tree>)>,
    pub(super) mb: MbStates,
    /// The position of the last commit, and of the last one known durable.
    pub(super) position: u64,
    pub(super) durable_position: u64,
    /// Hops a target's queue could not take yet, per target in seq order (all durable in the
    /// outbox: holding them loses nothing). Offered again at every step and tick.
    pub(super) held: BTreeMap<u32, VecDeque<Hop>>,
    /// Per tick depot: the time of the last tick in its log (read at start).
    pub(super) tick_last: HashMap<Arc<str>, Option<u64>>,
    /// When depots were last trimmed (monotonic ms).
    pub(super) last_trim_ms: Option<u64>,
    /// Re-sending hops that no confirmation followed (off unless the transport may lose
    /// messages: [`Partition::resend_hops_every`]).
    pub(super) resend: Resend,
}

/// Re-sending unconfirmed hops over a transport that may lose them (hosts of a cluster):
/// every `every_ms`, a target whose confirmed watermark did not move over a whole interval
/// while hops to it stay unconfirmed is sent its outbox again from that watermark (it skips
/// what it has applied: watermarks make re-sending safe).
#[derive(Debug, Default)]
pub(super) struct Resend {
    every_ms: u64,
    last_ms: u64,
    /// The unconfirmed targets and their watermarks at the last check.
    seen: BTreeMap<u32, u64>,
}

/// An append taken from the queue, not yet in the log.
struct PendingAppend {
    depot: Arc<str>,
    record: Vec<u8>,
    ack: AckLevel,
    reply: Option<Reply>,
    key: Option<Arc<str>>,
}

/// A record's fingerprint for its idempotency key: 64 bits of its SHA-256 (a different
/// record under the same key is told apart, not taken for a retry).
fn fingerprint(record: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    u64::from_le_bytes(Sha256::digest(record)[..8].try_into().expect("8 bytes"))
}

/// An append whose idempotency key is already taken: by a stored record, or by an earlier
/// append of the same batch (`first`, its index).
enum Duplicate {
    Stored { offset: u64, reused: bool },
    InBatch { first: usize, reused: bool },
}

impl<X: Executor, L: PartitionLog, S: PartitionStore, T: HopTransport> Partition<X, L, S, T> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: PartitionConfig,
        topologies: Arc<Vec<Topology>>,
        exec: X,
        log: L,
        store: S,
        transport: T,
        clock: Arc<dyn Clock>,
        open_trees: Arc<AtomicUsize>,
    ) -> Self {
        let counters = TopologyCounters::new(&cfg.module, &topologies);
        Self {
            // Dirty at first: the store may hold non-durable commits of an earlier
            // incarnation, which must be durable before any watermark is confirmed.
            flush: Flush {
                last_durable_ms: clock.now_ms(),
                dirty: true,
            },
            cfg,
            topologies,
            exec,
            log,
            store,
            transport,
            clock,
            open_trees,
            counters,
            next_offsets: HashMap::new(),
            hops: HopBook::default(),
            mb_waiting: Vec::new(),
            mb: MbStates::default(),
            position: 0,
            durable_position: 0,
            held: BTreeMap::new(),
            tick_last: HashMap::new(),
            last_trim_ms: None,
            resend: Resend::default(),
        }
    }

    /// Re-sends hops no confirmation followed within `every_ms` (0: never; in-process
    /// queues lose nothing, so only a cluster's transport between hosts needs it).
    pub fn resend_hops_every(&mut self, every_ms: u64) {
        self.resend.every_ms = every_ms;
    }

    /// The re-send check of the flush timer (see [`Resend`]).
    fn resend_due(&mut self) -> Result<(), PartitionError> {
        let now = self.clock.now_ms();
        if self.resend.every_ms == 0
            || now.saturating_sub(self.resend.last_ms) < self.resend.every_ms
        {
            return Ok(());
        }
        self.resend.last_ms = now;
        let unconfirmed = self.hops.unconfirmed_targets();
        for (target, from) in &unconfirmed {
            if self.resend.seen.get(target) == Some(from) {
                self.rewind(*target, *from)?;
            }
        }
        self.resend.seen = unconfirmed;
        Ok(())
    }

    /// Recovery: restores the hop book, re-sends the outbox (before anything new, so
    /// per-pair order holds), replays the depot records the store does not reflect, and
    /// makes the result durable. After it the partition reflects everything in its log.
    pub fn start(&mut self) -> Result<(), PartitionError> {
        let progress = self.store.progress().map_err(PartitionError::Store)?;
        check_outbox(&progress)?;
        self.hops = HopBook::restore(progress.hops_next.clone(), progress.hops_applied.clone());
        self.position = progress.position;
        for (target, seq, entry) in &progress.outbox {
            match decode_outbox(self.cfg.partition, *seq, entry) {
                Some(hop) => self.send_hop(*target, hop),
                None => tracing::error!(
                    module = &*self.cfg.module,
                    partition = self.cfg.partition,
                    target,
                    seq,
                    "undecodable outbox entry; the hop is lost"
                ),
            }
        }
        self.recover(&progress.offsets)?;
        self.load_ticks()?;
        self.make_durable()
    }

    /// Processes one drained batch of work (appends, peer messages; microbatch steps and
    /// dead-letter replays are run by the caller). Returns whether a `Stop` was among it.
    pub fn step(&mut self, work: Vec<Work>) -> Result<bool, PartitionError> {
        let stopping = self.step_work(work)?;
        self.resend_due()?;
        self.append_due_ticks()?;
        self.trim_due()?;
        Ok(stopping)
    }

    /// Appends the ticks' records and processes them, as a step of appends.
    pub(super) fn step_appends(&mut self, work: Vec<Work>) -> Result<(), PartitionError> {
        self.step_work(work).map(|_| ())
    }

    fn step_work(&mut self, work: Vec<Work>) -> Result<bool, PartitionError> {
        self.offer_held();
        let mut stopping = false;
        let mut appends = Vec::new();
        let mut slots: Vec<Option<Item>> = Vec::new();
        for w in work {
            match w {
                Work::Append {
                    depot,
                    record,
                    ack,
                    reply,
                    key,
                } => {
                    slots.push(None);
                    appends.push(PendingAppend {
                        depot,
                        record,
                        ack,
                        reply,
                        key,
                    });
                }
                Work::Peer(PeerMessage::Hop(h)) => slots.push(Some(Item::Hop(h))),
                Work::Peer(PeerMessage::Confirmed { target, next }) => {
                    self.hops.confirmed(target, next)
                }
                Work::Peer(PeerMessage::Rewind { target, from }) => self.rewind(target, from)?,
                Work::Stop => stopping = true,
                Work::Batch { .. }
                | Work::ReplayDeadLetters { .. }
                | Work::DiscardDeadLetter { .. } => {
                    unreachable!("the caller runs batch steps and replays")
                }
            }
        }
        let mut records = self.append_to_log(appends)?;
        records.reverse();
        let items: Vec<Item> = slots
            .into_iter()
            .filter_map(|slot| match slot {
                Some(item) => Some(item),
                None => records.pop().expect("one answer per append"),
            })
            .collect();
        self.process(items, None)?;
        Ok(stopping)
    }

    /// The flush timer: makes earlier commits durable once the flush interval has passed,
    /// and appends the ticks that are due.
    pub fn tick(&mut self) -> Result<(), PartitionError> {
        self.offer_held();
        self.resend_due()?;
        self.append_due_ticks()?;
        self.trim_due()?;
        if self.flush_due() {
            self.make_durable()?;
        }
        Ok(())
    }

    /// Makes every commit so far durable and confirms the hops they applied.
    pub fn make_durable(&mut self) -> Result<(), PartitionError> {
        if self.flush.dirty {
            self.store
                .commit(&Default::default(), true)
                .map_err(PartitionError::Store)?;
        }
        self.after_durable();
        Ok(())
    }

    /// Asks every partition to re-send its hops to this one from what is applied here (a
    /// restarted partition lost the hops its failed incarnation had taken from the queue).
    pub fn ask_rewind(&mut self) {
        for (source, from) in self.hops.rewind_all(self.cfg.partitions) {
            self.transport.send(
                source,
                PeerMessage::Rewind {
                    target: self.cfg.partition,
                    from,
                },
            );
        }
    }

    /// The position of the last commit (it may be lost by a crash until it is durable).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The partition's durable commit position: every commit up to it survives any crash.
    /// It never goes back, across crashes and restarts.
    pub fn durable_position(&self) -> u64 {
        self.durable_position
    }

    pub(super) fn flush_due(&self) -> bool {
        self.clock
            .now_ms()
            .saturating_sub(self.flush.last_durable_ms)
            >= self.cfg.flush_interval_ms
    }

    /// Bookkeeping after a durable commit: confirm applied hops to their sources.
    pub(super) fn after_durable(&mut self) {
        self.flush.dirty = false;
        self.flush.last_durable_ms = self.clock.now_ms();
        self.durable_position = self.position;
        for (source, next) in self.hops.take_confirmations() {
            self.transport.send(
                source,
                PeerMessage::Confirmed {
                    target: self.cfg.partition,
                    next,
                },
            );
        }
    }

    /// Re-sends the outbox to `target` from `from` (the target lost what followed). Hops
    /// still held for it are re-sent in their place (keeping their `full`-ack trees).
    fn rewind(&mut self, target: u32, from: u64) -> Result<(), PartitionError> {
        let entries = self
            .store
            .outbox_from(target, from)
            .map_err(PartitionError::Store)?;
        let mut held: HashMap<u64, Hop> = self
            .held
            .remove(&target)
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.seq, h))
            .collect();
        for (seq, entry) in entries {
            let hop = held
                .remove(&seq)
                .or_else(|| decode_outbox(self.cfg.partition, seq, &entry));
            if let Some(hop) = hop {
                self.send_hop(target, hop);
            }
        }
        Ok(())
    }

    /// Sends a durable hop to `target`, or holds it (behind any already held for `target`,
    /// so each pair stays in seq order) when the target's queue is full.
    pub(super) fn send_hop(&mut self, target: u32, hop: Hop) {
        if let Some(q) = self.held.get_mut(&target) {
            q.push_back(hop);
            self.counters.hops_held.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(hop) = self.transport.offer(target, hop) {
            self.held.entry(target).or_default().push_back(hop);
            self.counters.hops_held.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Offers the held hops again, in order, as far as each target takes them.
    pub fn offer_held(&mut self) {
        let targets: Vec<u32> = self.held.keys().copied().collect();
        for target in targets {
            let mut q = self.held.remove(&target).unwrap_or_default();
            while let Some(hop) = q.pop_front() {
                if let Err(hop) = self.transport.offer(target, hop) {
                    q.push_front(hop);
                    break;
                }
            }
            if !q.is_empty() {
                self.held.insert(target, q);
            }
        }
    }

    /// Hops held for full target queues.
    pub fn hops_held(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// Which appends carry an idempotency key already taken (see [`Duplicate`]).
    fn find_duplicates(
        &self,
        appends: &[PendingAppend],
    ) -> Result<Vec<Option<Duplicate>>, PartitionError> {
        let mut first: HashMap<(&str, &str), (usize, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(appends.len());
        for (i, a) in appends.iter().enumerate() {
            let Some(key) = a.key.as_deref() else {
                out.push(None);
                continue;
            };
            let fp = fingerprint(&a.record);
            if let Some(&(f, ffp)) = first.get(&(&*a.depot, key)) {
                out.push(Some(Duplicate::InBatch {
                    first: f,
                    reused: ffp != fp,
                }));
                continue;
            }
            match self
                .log
                .find_key(&a.depot, key)
                .map_err(PartitionError::Log)?
            {
                Some(found) => out.push(Some(Duplicate::Stored {
                    offset: found.offset,
                    reused: found.fingerprint != fp,
                })),
                None => {
                    first.insert((&*a.depot, key), (i, fp));
                    out.push(None);
                }
            }
        }
        Ok(out)
    }

    /// Answers an append whose key was taken: the original record's place (nothing is
    /// appended), or "key reused" when it was taken by another record.
    fn answer_duplicate(&self, a: PendingAppend, offset: u64, reused: bool) {
        let Some(reply) = a.reply else { return };
        let _ = reply.send(if reused {
            Err(ProcessingError::KeyReused {
                key: a.key.as_deref().unwrap_or_default().to_string(),
                partition: self.cfg.partition,
                offset,
            })
        } else {
            Ok(AppendOutcome {
                partition: self.cfg.partition,
                offset,
                results: BTreeMap::new(),
                replayed: true,
            })
        });
    }

    /// Appends records to the depot log (one durable commit, with their idempotency keys) and
    /// answers `append` acks; answers one item slot per append (`None`: a duplicate key, not
    /// appended). A failed commit answers every append "outcome unknown" (the record may be
    /// stored) and fails the partition (it restarts from its files).
    fn append_to_log(
        &mut self,
        appends: Vec<PendingAppend>,
    ) -> Result<Vec<Option<Item>>, PartitionError> {
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let duplicates = match self.find_duplicates(&appends) {
            Ok(d) => d,
            Err(e) => {
                // Nothing was appended: every append is answered so, and the partition fails.
                for a in appends {
                    if let Some(r) = a.reply {
                        let _ = r.send(Err(ProcessingError::Storage {
                            partition: self.cfg.partition,
                            message: format!("looking up idempotency keys: {e}"),
                        }));
                    }
                }
                return Err(e);
            }
        };
        // Stored duplicates are answered whatever happens to this commit.
        let mut appends: Vec<Option<PendingAppend>> = appends.into_iter().map(Some).collect();
        for (a, dup) in appends.iter_mut().zip(&duplicates) {
            if let Some(Duplicate::Stored { offset, reused }) = dup {
                let a = a.take().expect("each once");
                self.answer_duplicate(a, *offset, *reused);
            }
        }
        let pending = |i: usize| appends[i].as_ref().expect("not a stored duplicate");
        let fresh: Vec<usize> = (0..appends.len())
            .filter(|i| duplicates[*i].is_none())
            .collect();
        let records: Vec<(&str, &[u8])> = fresh
            .iter()
            .map(|&i| (&*pending(i).depot, pending(i).record.as_slice()))
            .collect();
        let keys: Vec<KeyedRecord<'_>> = fresh
            .iter()
            .enumerate()
            .filter_map(|(index, &i)| {
                pending(i).key.as_deref().map(|key| KeyedRecord {
                    index,
                    key,
                    fingerprint: fingerprint(&pending(i).record),
                })
            })
            .collect();
        let appended = if records.is_empty() {
            Ok(Vec::new())
        } else {
            let now = self.clock.wall_ms();
            self.log
                .append(&records, &keys, &mut self.next_offsets, now)
        };
        drop((records, keys));
        let offsets = match appended {
            Ok(o) => o,
            Err(e) => {
                self.answer_unknown(appends, &duplicates, &e);
                return Err(PartitionError::Log(e));
            }
        };
        let mut offset_of: Vec<Option<u64>> = vec![None; appends.len()];
        for (&i, &o) in fresh.iter().zip(&offsets) {
            offset_of[i] = Some(o);
        }
        let mut out = Vec::with_capacity(appends.len());
        for ((i, a), dup) in appends.into_iter().enumerate().zip(duplicates) {
            let Some(a) = a else {
                out.push(None); // a stored duplicate, answered above
                continue;
            };
            match dup {
                Some(Duplicate::Stored { .. }) => unreachable!("answered above"),
                Some(Duplicate::InBatch { first, reused }) => {
                    let offset = offset_of[first].expect("the first of a key is appended");
                    self.answer_duplicate(a, offset, reused);
                    out.push(None);
                }
                None => {
                    let offset = offset_of[i].expect("appended");
                    out.push(Some(self.appended(a, offset)));
                }
            }
        }
        Ok(out)
    }

    /// Answers an `append` ack of a record now in the log, and makes its item.
    fn appended(&self, a: PendingAppend, offset: u64) -> Item {
        let mut tree = None;
        match (a.ack, a.reply) {
            (AckLevel::Append, Some(r)) => {
                let _ = r.send(Ok(AppendOutcome {
                    partition: self.cfg.partition,
                    offset,
                    results: BTreeMap::new(),
                    replayed: false,
                }));
            }
            (AckLevel::Full, Some(r)) => {
                tree = Some(Tree::new(r, self.cfg.partition, offset, &self.open_trees))
            }
            _ => {}
        }
        Item::Record {
            depot: a.depot,
            offset,
            record: a.record,
            tree,
        }
    }

    /// After a failed log commit: every append's outcome is unknown (the commit may have
    /// reached the disk before it failed: an fsync error, a full disk after the write). Each
    /// answer names the offset the record has if it was stored (an in-batch duplicate: its
    /// first's); stored duplicates were answered before.
    fn answer_unknown(
        &self,
        appends: Vec<Option<PendingAppend>>,
        duplicates: &[Option<Duplicate>],
        e: &super::seams::StorageError,
    ) {
        tracing::error!(
            module = &*self.cfg.module,
            partition = self.cfg.partition,
            "depot append failed: {e}"
        );
        let mut next = self.next_offsets.clone();
        let mut hint: Vec<Option<u64>> = vec![None; appends.len()];
        for (i, a) in appends.iter().enumerate() {
            let Some(a) = a else { continue };
            hint[i] = match duplicates[i] {
                Some(Duplicate::InBatch { first, .. }) => hint[first],
                _ => next.get_mut(&*a.depot).map(|n| {
                    *n += 1;
                    *n - 1
                }),
            };
        }
        for (a, offset) in appends.into_iter().zip(hint) {
            if let Some(r) = a.and_then(|a| a.reply) {
                let _ = r.send(Err(ProcessingError::AppendUnknown {
                    partition: self.cfg.partition,
                    offset,
                    reason: e.to_string(),
                }));
            }
        }
    }
}
