//! The partition worker: one thread per (module, partition).
//!
//! Loop: take what is queued (up to `batch_records_max` items: appends, hops, hop
//! confirmations), append the records to the depot log in one fsynced commit (group commit),
//! answer `append` acks, run each subscribed stream topology's handler on each record and each
//! hop's handler, then commit — in one PState transaction — the handlers' writes, the
//! topologies' processed offsets, the hops they emitted (the *outbox*, with per-partition
//! sequence numbers) and the highest hop applied from each source partition. Only then are the
//! hops sent, and `full` acks answered when their event tree has no work left.
//!
//! After a crash, a worker replays the depot records its PState store does not reflect and
//! re-sends its outbox; a target skips hops at or below its watermark for that source. So a
//! record's effects — on its own partition and, through hops, on others — are applied exactly
//! once (for deterministic handlers), and hops between two partitions keep their order. A
//! target confirms a hop only once its application is durable; the source then drops it from
//! its outbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Topology, TopologyKind};
use crate::depot::log::DepotLog;
use crate::pstate::store::{Batch, DeadLetter};
use crate::pstate::PStateStore;
use crate::runtime::{EmittedHop, GuestError, GuestInstance, HopDest, RecordCtx};
use crate::value::{as_i64, from_cbor, to_cbor, Value};

/// What an append waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct AppendOutcome {
    pub partition: u32,
    pub offset: u64,
    /// Ack-return values by topology, from any handler of the event tree (`full` acks only).
    pub results: BTreeMap<String, Value>,
}

/// An append that was not (fully) carried out.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProcessingError {
    /// The record is durable at (partition, offset) but a handler of its event tree failed;
    /// the failed work is in that topology's dead letters.
    #[error(
        "record {partition}/{offset} is stored, but topology `{topology}` failed on it: {error}"
    )]
    Topology {
        partition: u32,
        offset: u64,
        topology: String,
        error: GuestError,
    },
    /// Storage failed; the record was not acknowledged.
    #[error("storage failure on partition {partition}: {message}")]
    Storage { partition: u32, message: String },
}

pub type Reply = oneshot::Sender<Result<AppendOutcome, ProcessingError>>;

/// The largest ack-return value a handler may give (it travels in the HTTP answer).
pub const ACK_VALUE_BYTES_MAX: usize = 1 << 20;

/// The in-memory state of one record's event tree, for its `full` ack.
pub struct Tree {
    outstanding: AtomicUsize,
    partition: u32,
    offset: u64,
    reply: Mutex<Option<Reply>>,
    results: Mutex<BTreeMap<String, Value>>,
    error: Mutex<Option<ProcessingError>>,
    /// The module's count of trees alive (a module update drains it to zero).
    open: Arc<AtomicUsize>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tree {
    fn new(reply: Reply, partition: u32, offset: u64, open: &Arc<AtomicUsize>) -> Arc<Self> {
        open.fetch_add(1, Ordering::AcqRel);
        Arc::new(Self {
            open: Arc::clone(open),
            outstanding: AtomicUsize::new(1),
            partition,
            offset,
            reply: Mutex::new(Some(reply)),
            results: Mutex::new(BTreeMap::new()),
            error: Mutex::new(None),
        })
    }

    fn add(&self, n: usize) {
        self.outstanding.fetch_add(n, Ordering::AcqRel);
    }

    /// One unit of the tree's work finished; the last one answers the ack.
    fn finish_one(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(reply) = self.reply.lock().expect("poisoned").take() else {
            return;
        };
        let outcome = match self.error.lock().expect("poisoned").take() {
            Some(e) => Err(e),
            None => Ok(AppendOutcome {
                partition: self.partition,
                offset: self.offset,
                results: std::mem::take(&mut *self.results.lock().expect("poisoned")),
            }),
        };
        let _ = reply.send(outcome);
    }

    fn fail(&self, topology: &str, error: GuestError) {
        self.error
            .lock()
            .expect("poisoned")
            .get_or_insert(ProcessingError::Topology {
                partition: self.partition,
                offset: self.offset,
                topology: topology.to_string(),
                error,
            });
    }

    fn result(&self, topology: &str, v: Value) {
        self.results
            .lock()
            .expect("poisoned")
            .insert(topology.to_string(), v);
    }
}

/// A hop on its way to its target partition.
pub struct Hop {
    pub source: u32,
    pub seq: u64,
    pub topology: String,
    pub handler: String,
    pub payload: Vec<u8>,
    pub origin_depot: Arc<str>,
    pub origin_offset: u64,
    pub tree: Option<Arc<Tree>>,
}

/// Work queued for a partition worker.
pub enum Work {
    Append {
        depot: Arc<str>,
        /// The record as CBOR.
        record: Vec<u8>,
        ack: AckLevel,
        reply: Option<Reply>,
    },
    Hop(Hop),
    /// The target made these hops of ours durable: drop them from the outbox.
    HopsConfirmed(Vec<u64>),
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
    /// Finish what is queued before this, flush, exit.
    Stop,
}

/// The steps a microbatch goes through on each partition.
pub enum BatchStep {
    /// Run the topology's handler on these `(depot, start, end)` ranges of this partition,
    /// starting the batch afresh (a retry of the same id starts over).
    Run(Vec<(String, u64, u64)>),
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
    pub error: Option<String>,
}

/// A microbatch in progress on this partition.
struct MbState {
    id: u64,
    session: Option<crate::pstate::Session>,
    dead: Vec<DeadLetter>,
}

/// Everything a worker owns.
pub struct Worker {
    pub module: Arc<str>,
    pub partition: u32,
    pub partitions: u32,
    pub log: Arc<DepotLog>,
    pub store: Arc<PStateStore>,
    pub instance: GuestInstance,
    pub topologies: Arc<Vec<Topology>>,
    pub batch_records_max: usize,
    pub handler_attempts_max: u32,
    /// How long PState commits may stay non-durable (see [`PStateStore::commit`]).
    pub pstate_flush_interval: Duration,
    /// How long the partition pauses after a guest call stopped at its deadline.
    pub deadline_penalty: Duration,
    /// Set once recovery finished; selects wait for it.
    pub ready: Arc<AtomicBool>,
    /// Appends queued and not yet taken (the queue bound is enforced on it).
    pub queued_appends: Arc<AtomicUsize>,
    /// `full`-ack event trees alive in the whole module (shared by its workers).
    pub open_trees: Arc<AtomicUsize>,
    /// Every partition's queue, this one's included.
    pub peers: Arc<Vec<Sender<Work>>>,
    pub rx: Receiver<Work>,
    /// A fresh session for a microbatch (its writes stay apart from stream writes).
    pub new_session: Box<dyn Fn() -> crate::pstate::Session + Send>,
    /// `full` acks waiting for a microbatch: (topology, depot, offset, tree).
    pub mb_waiting: Vec<(String, Arc<str>, u64, Arc<Tree>)>,
    pub mb: MbStates,
    pub counters: TopologyCounters,
}

/// This worker's metric handles per topology: records processed, retries, dead letters.
pub struct TopologyCounters {
    per_topology: HashMap<String, [Arc<std::sync::atomic::AtomicU64>; 3]>,
    commits: Arc<std::sync::atomic::AtomicU64>,
    items: Arc<std::sync::atomic::AtomicU64>,
}

const PROCESSED: usize = 0;
const RETRIED: usize = 1;
const DEAD: usize = 2;

impl TopologyCounters {
    pub fn new(module: &str, topologies: &[Topology]) -> Self {
        use crate::metrics::counter;
        Self {
            commits: counter("sluice_pstate_commits_total", &[("module", module)]),
            items: counter("sluice_worker_items_total", &[("module", module)]),
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
}

/// Microbatches in progress, by topology.
#[derive(Default)]
pub struct MbStates(HashMap<String, MbState>);

/// When PState commits were last made durable, and what waits for that.
struct Flush {
    last_durable: Instant,
    dirty: bool,
    /// Hops applied here, to confirm to their sources once durable: source → seqs.
    confirm: BTreeMap<u32, Vec<u64>>,
}

/// One unit of work in a batch, with where it came from.
enum Item {
    Record {
        depot: Arc<str>,
        offset: u64,
        record: Vec<u8>,
        tree: Option<Arc<Tree>>,
    },
    Hop(Hop),
    /// A dead letter of a stream topology, run again.
    Replay {
        topology: String,
        depot: Arc<str>,
        offset: u64,
        record: Vec<u8>,
    },
}

/// An append taken from the queue: depot, record (CBOR), ack level, answer.
type PendingAppend = (Arc<str>, Vec<u8>, AckLevel, Option<Reply>);

/// A hop emitted in this batch, addressed, waiting for the commit.
struct Outgoing {
    target: u32,
    hop: Hop,
}

/// Hop bookkeeping of this partition.
struct Hops {
    next_seq: u64,
    applied: HashMap<u32, u64>,
    confirmed: Vec<u64>,
}

impl Worker {
    pub fn run(mut self) {
        // Every line this thread logs carries the module and the partition.
        let span = tracing::info_span!(
            "partition",
            module = &*self.module,
            partition = self.partition
        );
        let _entered = span.enter();
        let mut next: HashMap<String, u64> = HashMap::new();
        let mut flush = Flush {
            last_durable: Instant::now(),
            dirty: false,
            confirm: BTreeMap::new(),
        };
        let mut hops = match self.store.hop_state() {
            Ok(st) => {
                // Unconfirmed hops from before a restart go out first, in order.
                for (seq, entry) in st.outbox {
                    if let Some((target, hop)) = decode_outbox(self.partition, seq, &entry) {
                        let _ = self.peers[target as usize].send(Work::Hop(hop));
                    }
                }
                Hops {
                    next_seq: st.hop_seq,
                    applied: st.hops_in.into_iter().collect(),
                    confirmed: Vec::new(),
                }
            }
            Err(e) => {
                tracing::error!(
                    module = &*self.module,
                    partition = self.partition,
                    "reading hop state failed: {e}"
                );
                return;
            }
        };
        if let Err(e) = self
            .recover(&mut flush, &mut hops)
            .and_then(|()| self.flush(&mut flush))
        {
            tracing::error!(
                module = &*self.module,
                partition = self.partition,
                "recovery failed: {e}"
            );
            return;
        }
        self.ready.store(true, Ordering::Release);
        let mut stopping = false;
        while !stopping {
            let first = match self
                .rx
                .recv_timeout(self.pstate_flush_interval.max(Duration::from_millis(1)))
            {
                Ok(w) => w,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.flush(&mut flush) {
                        tracing::error!(
                            module = &*self.module,
                            partition = self.partition,
                            "PState flush failed, stopping the partition: {e}"
                        );
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut work = vec![first];
            while work.len() < self.batch_records_max
                && !matches!(
                    work.last(),
                    Some(Work::Batch { .. } | Work::ReplayDeadLetters { .. })
                )
            {
                match self.rx.try_recv() {
                    Ok(w) => work.push(w),
                    Err(_) => break,
                }
            }
            let batch_step = match work.last() {
                Some(Work::Batch { .. } | Work::ReplayDeadLetters { .. }) => work.pop(),
                _ => None,
            };
            let mut appends = Vec::new();
            let mut items_in_order = Vec::new();
            for w in work {
                match w {
                    Work::Append {
                        depot,
                        record,
                        ack,
                        reply,
                    } => {
                        self.queued_appends.fetch_sub(1, Ordering::AcqRel);
                        items_in_order.push(None);
                        appends.push((depot, record, ack, reply));
                    }
                    Work::Hop(h) => items_in_order.push(Some(Item::Hop(h))),
                    Work::HopsConfirmed(seqs) => hops.confirmed.extend(seqs),
                    Work::Stop => stopping = true,
                    Work::Batch { .. } | Work::ReplayDeadLetters { .. } => {
                        unreachable!("batch steps and replays end the drain")
                    }
                }
            }
            let items = match self.append_to_log(appends, &mut next) {
                Some(mut records) => {
                    records.reverse();
                    items_in_order
                        .into_iter()
                        .map(|i| i.or_else(|| records.pop().flatten()))
                        .collect::<Vec<_>>()
                }
                None => items_in_order.into_iter().collect(),
            };
            let items: Vec<Item> = items.into_iter().flatten().collect();
            if !items.is_empty() || !hops.confirmed.is_empty() {
                if let Err(e) = self.process(items, None, &mut flush, &mut hops) {
                    tracing::error!(
                        module = &*self.module,
                        partition = self.partition,
                        "PState commit failed, stopping the partition: {e}"
                    );
                    return;
                }
            }
            if let Some(Work::ReplayDeadLetters { topology, reply }) = batch_step {
                let r = self.replay_dead_letters(&topology, &mut flush, &mut hops);
                let _ = reply.send(r);
            } else if let Some(Work::Batch {
                topology,
                id,
                step,
                reply,
            }) = batch_step
            {
                let r = self.batch_step(&topology, id, step);
                let _ = reply.send(match r {
                    Ok(hops) => BatchReply {
                        partition: self.partition,
                        hops,
                        error: None,
                    },
                    Err(e) => BatchReply {
                        partition: self.partition,
                        hops: Vec::new(),
                        error: Some(e),
                    },
                });
            }
        }
        if let Err(e) = self.flush(&mut flush) {
            tracing::error!(
                module = &*self.module,
                partition = self.partition,
                "final PState flush failed: {e}"
            );
        }
    }

    /// Appends records to the depot log (one fsync), answers `append` acks; returns one
    /// entry per append (`None` where the append failed and was answered with an error).
    fn append_to_log(
        &mut self,
        appends: Vec<PendingAppend>,
        next: &mut HashMap<String, u64>,
    ) -> Option<Vec<Option<Item>>> {
        if appends.is_empty() {
            return None;
        }
        let records: Vec<(&str, &[u8])> = appends
            .iter()
            .map(|(d, r, _, _)| (&**d, r.as_slice()))
            .collect();
        let offsets = match self.log.append(&records, next) {
            Ok(o) => o,
            Err(e) => {
                let err = ProcessingError::Storage {
                    partition: self.partition,
                    message: e.to_string(),
                };
                tracing::error!(
                    module = &*self.module,
                    partition = self.partition,
                    "depot append failed: {e}"
                );
                let n = appends.len();
                for (_, _, _, reply) in appends {
                    if let Some(r) = reply {
                        let _ = r.send(Err(err.clone()));
                    }
                }
                return Some((0..n).map(|_| None).collect());
            }
        };
        let mut out = Vec::with_capacity(appends.len());
        for ((depot, record, ack, reply), offset) in appends.into_iter().zip(offsets) {
            let mut tree = None;
            match (ack, reply) {
                (AckLevel::Append, Some(r)) => {
                    let _ = r.send(Ok(AppendOutcome {
                        partition: self.partition,
                        offset,
                        results: BTreeMap::new(),
                    }));
                }
                (AckLevel::Full, Some(r)) => {
                    tree = Some(Tree::new(r, self.partition, offset, &self.open_trees))
                }
                _ => {}
            }
            out.push(Some(Item::Record {
                depot,
                offset,
                record,
                tree,
            }));
        }
        Some(out)
    }

    /// Makes every earlier PState commit durable, if any was not, then confirms the hops it
    /// applied to their sources.
    fn flush(&mut self, flush: &mut Flush) -> Result<(), redb::Error> {
        if flush.dirty {
            self.store.commit(Batch::default(), true)?;
        }
        flush.dirty = false;
        flush.last_durable = Instant::now();
        for (source, seqs) in std::mem::take(&mut flush.confirm) {
            let _ = self.peers[source as usize].send(Work::HopsConfirmed(seqs));
        }
        Ok(())
    }

    /// Runs the handlers of `items` (records already durable in the log, and hops), commits,
    /// then sends hops and settles event trees. `done`, during replay, skips topology t for a
    /// record when `done[(t, depot)]` is past its offset.
    fn process(
        &mut self,
        items: Vec<Item>,
        done: Option<&HashMap<(String, String), u64>>,
        flush: &mut Flush,
        hops: &mut Hops,
    ) -> Result<(), redb::Error> {
        let mut offsets = BTreeMap::new();
        let mut dead_letters = Vec::new();
        let mut dead_letters_remove = Vec::new();
        let mut outgoing: Vec<Vec<Outgoing>> = Vec::with_capacity(items.len());
        let mut hops_in: BTreeMap<u32, u64> = BTreeMap::new();
        let mut applied_hops: Vec<(u32, u64)> = Vec::new();
        let topologies = Arc::clone(&self.topologies);
        for item in &items {
            let mut out = Vec::new();
            match item {
                Item::Record {
                    depot,
                    offset,
                    record,
                    tree,
                } => {
                    for t in topologies.iter() {
                        if !t.depots.iter().any(|d| **d == **depot) {
                            continue;
                        }
                        if t.kind == TopologyKind::Microbatch {
                            // Settled when the batch holding this record commits.
                            if let Some(tree) = tree {
                                tree.add(1);
                                self.mb_waiting.push((
                                    t.name.clone(),
                                    Arc::clone(depot),
                                    *offset,
                                    Arc::clone(tree),
                                ));
                            }
                            continue;
                        }
                        let key = (t.name.clone(), depot.to_string());
                        if done.and_then(|d| d.get(&key)).is_some_and(|&p| *offset < p) {
                            continue;
                        }
                        let ctx = self.ctx(depot, *offset, None);
                        match self.run_handler(t, &t.handler, record, ctx) {
                            Ok((ack, emitted)) => {
                                if let (Some(v), Some(tree)) = (ack, tree) {
                                    tree.result(&t.name, v);
                                }
                                self.address(t, emitted, depot, *offset, tree, hops, &mut out);
                            }
                            Err((error, attempts)) => {
                                dead_letters.push(DeadLetter::new(
                                    &t.name,
                                    depot,
                                    *offset,
                                    &error.code,
                                    &error.message,
                                    attempts,
                                ));
                                if let Some(tree) = tree {
                                    tree.fail(&t.name, error);
                                }
                            }
                        }
                        offsets.insert(key, offset + 1);
                    }
                }
                Item::Replay {
                    topology,
                    depot,
                    offset,
                    record,
                } => {
                    let Some(t) = topologies.iter().find(|t| t.name == *topology) else {
                        outgoing.push(out);
                        continue;
                    };
                    let ctx = self.ctx(depot, *offset, None);
                    match self.run_handler(t, &t.handler, record, ctx) {
                        Ok((_, emitted)) => {
                            dead_letters_remove.push((t.name.clone(), depot.to_string(), *offset));
                            self.address(t, emitted, depot, *offset, &None, hops, &mut out);
                        }
                        Err((error, attempts)) => dead_letters.push(DeadLetter::new(
                            &t.name,
                            depot,
                            *offset,
                            &error.code,
                            &error.message,
                            attempts,
                        )),
                    }
                }
                Item::Hop(h) => {
                    let watermark = hops.applied.get(&h.source).copied().unwrap_or(0);
                    applied_hops.push((h.source, h.seq));
                    if h.seq < watermark {
                        outgoing.push(out);
                        continue; // applied before a restart
                    }
                    hops.applied.insert(h.source, h.seq + 1);
                    hops_in.insert(h.source, h.seq + 1);
                    let Some(t) = topologies.iter().find(|t| t.name == h.topology) else {
                        outgoing.push(out);
                        continue;
                    };
                    let ctx = self.ctx(&h.origin_depot, h.origin_offset, None);
                    match self.run_handler(t, &h.handler, &h.payload, ctx) {
                        Ok((ack, emitted)) => {
                            if let (Some(v), Some(tree)) = (ack, &h.tree) {
                                tree.result(&t.name, v);
                            }
                            self.address(
                                t,
                                emitted,
                                &h.origin_depot,
                                h.origin_offset,
                                &h.tree,
                                hops,
                                &mut out,
                            );
                        }
                        Err((error, attempts)) => {
                            dead_letters.push(DeadLetter {
                                topology: t.name.clone(),
                                depot: format!("hop:{}:from-p{}", h.handler, h.source),
                                offset: h.seq,
                                error_code: error.code.clone(),
                                error: error.message.clone(),
                                attempts,
                            });
                            if let Some(tree) = &h.tree {
                                tree.fail(&t.name, error);
                            }
                        }
                    }
                }
            }
            outgoing.push(out);
        }
        let session = self
            .instance
            .session_mut()
            .as_mut()
            .expect("workers always have a session");
        let mut batch = session.take_batch();
        batch.offsets = offsets;
        batch.dead_letters = dead_letters;
        batch.dead_letters_remove = dead_letters_remove;
        batch.hops_in = hops_in;
        batch.outbox_remove = std::mem::take(&mut hops.confirmed);
        for o in outgoing.iter().flatten() {
            batch
                .outbox_put
                .push((o.hop.seq, encode_outbox(o.target, &o.hop)));
        }
        if !batch.outbox_put.is_empty() {
            batch.hop_seq = Some(hops.next_seq);
        }
        let durable = flush.last_durable.elapsed() >= self.pstate_flush_interval;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .items
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        if let Err(e) = self.store.commit(batch, durable) {
            let err = ProcessingError::Storage {
                partition: self.partition,
                message: e.to_string(),
            };
            for item in items {
                let tree = match item {
                    Item::Record { tree, .. } => tree,
                    Item::Hop(h) => h.tree,
                    Item::Replay { .. } => None,
                };
                if let Some(tree) = tree {
                    if let Some(r) = tree.reply.lock().expect("poisoned").take() {
                        let _ = r.send(Err(err.clone()));
                    }
                }
            }
            return Err(e);
        }
        for (source, seq) in applied_hops {
            flush.confirm.entry(source).or_default().push(seq);
        }
        if durable {
            self.flush(flush)?;
        } else {
            flush.dirty = true;
        }
        // Committed: send the hops, then settle each item's share of its event tree.
        for (item, out) in items.into_iter().zip(outgoing) {
            let tree = match item {
                Item::Record { tree, .. } => tree,
                Item::Hop(h) => h.tree,
                Item::Replay { .. } => None,
            };
            for o in out {
                let _ = self.peers[o.target as usize].send(Work::Hop(o.hop));
            }
            if let Some(tree) = tree {
                tree.finish_one();
            }
        }
        Ok(())
    }

    fn ctx<'a>(&self, depot: &'a str, offset: u64, batch_id: Option<u64>) -> RecordCtx<'a> {
        RecordCtx {
            depot,
            partition: self.partition,
            offset,
            partitions: self.partitions,
            batch_id,
        }
    }

    /// Gives emitted hops their targets and sequence numbers, and counts them in the tree.
    #[allow(clippy::too_many_arguments)]
    fn address(
        &self,
        t: &Topology,
        emitted: Vec<EmittedHop>,
        depot: &Arc<str>,
        offset: u64,
        tree: &Option<Arc<Tree>>,
        hops: &mut Hops,
        out: &mut Vec<Outgoing>,
    ) {
        for e in emitted {
            let targets: Vec<u32> = match &e.dest {
                HopDest::Key(k) => {
                    vec![crate::pstate::partition_of_key(k, self.partitions).unwrap_or(0)]
                }
                HopDest::All => (0..self.partitions).collect(),
                HopDest::Partition(p) => vec![*p],
            };
            for target in targets {
                let seq = hops.next_seq;
                hops.next_seq += 1;
                if let Some(tree) = tree {
                    tree.add(1);
                }
                out.push(Outgoing {
                    target,
                    hop: Hop {
                        source: self.partition,
                        seq,
                        topology: t.name.clone(),
                        handler: e.handler.clone(),
                        payload: e.payload.clone(),
                        origin_depot: Arc::clone(depot),
                        origin_offset: offset,
                        tree: tree.clone(),
                    },
                });
            }
        }
    }

    /// Runs one handler with retries; on success keeps its writes and returns its ack-return
    /// value and the hops it emitted.
    fn run_handler(
        &mut self,
        topology: &Topology,
        handler: &str,
        input: &[u8],
        ctx: RecordCtx<'_>,
    ) -> Result<(Option<Value>, Vec<EmittedHop>), (GuestError, u32)> {
        const RETRY_BACKOFF_BASE_MS: u64 = 5;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .instance
                .handle(&topology.name, handler, input, ctx)
                .and_then(|ack| {
                    let emitted = self.instance.take_hops();
                    if let Some(bad) = emitted.iter().find(|h| !topology.hop_handlers.contains(&h.handler)) {
                        return Err(GuestError {
                            code: "unknown-hop-handler".into(),
                            message: format!(
                                "hop to handler `{}`, which topology `{}` does not declare (it has: {})",
                                bad.handler,
                                topology.name,
                                topology.hop_handlers.join(", ")
                            ),
                        });
                    }
                    if let Some(bytes) = ack.as_ref().filter(|b| b.len() > ACK_VALUE_BYTES_MAX) {
                        return Err(GuestError {
                            code: "ack-too-large".into(),
                            message: format!(
                                "the ack-return value is {} bytes, over the limit of {ACK_VALUE_BYTES_MAX}",
                                bytes.len()
                            ),
                        });
                    }
                    let value = ack.map(|bytes| from_cbor(&bytes)).transpose().map_err(|e| GuestError {
                        code: "invalid-value".into(),
                        message: format!("ack-return value: {e}"),
                    })?;
                    Ok((value, emitted))
                });
            let session = self
                .instance
                .session_mut()
                .as_mut()
                .expect("workers always have a session");
            match result {
                Ok(v) => {
                    session.end_record(true);
                    self.counters.add(&topology.name, PROCESSED);
                    return Ok(v);
                }
                Err(e) => {
                    session.end_record(false);
                    tracing::warn!(
                        module = &*self.module,
                        partition = self.partition,
                        topology = topology.name,
                        handler,
                        offset = ctx.offset,
                        attempt,
                        "handler failed: {e}"
                    );
                    if e.code == "deadline-exceeded" {
                        // A call that ran to its deadline held a core that long: this partition
                        // pauses as long before its next call, so a runaway module gets at most
                        // half a core per partition and its neighbours keep theirs.
                        std::thread::sleep(self.deadline_penalty);
                    }
                    if attempt >= self.handler_attempts_max {
                        self.counters.add(&topology.name, DEAD);
                        return Err((e, attempt));
                    }
                    self.counters.add(&topology.name, RETRIED);
                    std::thread::sleep(Duration::from_millis(
                        RETRY_BACKOFF_BASE_MS << attempt.min(6),
                    ));
                }
            }
        }
    }

    /// Re-runs a stream topology on the records of its dead letters here.
    fn replay_dead_letters(
        &mut self,
        topology: &str,
        flush: &mut Flush,
        hops: &mut Hops,
    ) -> Result<(u64, u64), String> {
        let e = |e: redb::Error| e.to_string();
        let t = self
            .topologies
            .iter()
            .find(|t| t.name == topology && t.kind == TopologyKind::Stream)
            .cloned()
            .ok_or_else(|| format!("`{topology}` is not a stream topology"))?;
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
                .map_err(e)?
                .into_iter()
                .next()
            {
                if offset == d.offset {
                    items.push(Item::Replay {
                        topology: t.name.clone(),
                        depot: d.depot.as_str().into(),
                        offset,
                        record,
                    });
                }
            }
        }
        let total = items.len() as u64;
        self.process(items, None, flush, hops).map_err(e)?;
        let still = self
            .store
            .dead_letters(topology, usize::MAX)
            .map_err(e)?
            .into_iter()
            .filter(|d| t.depots.contains(&d.depot))
            .count() as u64;
        Ok((total.saturating_sub(still), still))
    }

    /// Carries out one microbatch step on this partition.
    fn batch_step(
        &mut self,
        topology: &str,
        id: u64,
        step: BatchStep,
    ) -> Result<Vec<BatchHop>, String> {
        let t = self
            .topologies
            .iter()
            .find(|t| t.name == topology && t.kind == TopologyKind::Microbatch)
            .cloned()
            .ok_or_else(|| format!("no microbatch topology `{topology}`"))?;
        match step {
            BatchStep::Run(ranges) => {
                self.mb.0.insert(
                    topology.to_string(),
                    MbState {
                        id,
                        session: Some((self.new_session)()),
                        dead: Vec::new(),
                    },
                );
                let mut work = Vec::new();
                for (depot, start, end) in ranges {
                    let depot: Arc<str> = depot.into();
                    let mut from = start;
                    while from < end {
                        let records = self
                            .log
                            .read(
                                &depot,
                                from,
                                (end - from).min(self.batch_records_max as u64) as usize,
                            )
                            .map_err(|e| e.to_string())?;
                        let Some(last) = records.last().map(|(o, _)| *o) else {
                            break;
                        };
                        for (offset, record) in records {
                            work.push((Arc::clone(&depot), offset, t.handler.clone(), record));
                        }
                        from = last + 1;
                    }
                }
                self.batch_run(&t, id, work)
            }
            BatchStep::Hops(hops) => {
                let work = hops
                    .into_iter()
                    .map(|h| (h.depot, h.offset, h.handler, h.payload))
                    .collect();
                self.batch_run(&t, id, work)
            }
            BatchStep::Prepare => {
                let st = self
                    .mb
                    .0
                    .get_mut(topology)
                    .filter(|s| s.id == id)
                    .ok_or("prepare of a batch this partition did not run")?;
                let mut session = st.session.take().ok_or("batch prepared twice")?;
                let entries = session.take_batch().entries;
                self.store
                    .prepare_microbatch(topology, id, &entries, &st.dead)
                    .map_err(|e| e.to_string())?;
                Ok(Vec::new())
            }
            BatchStep::Apply => {
                self.store
                    .apply_microbatch(topology, id)
                    .map_err(|e| e.to_string())?;
                self.mb.0.remove(topology);
                Ok(Vec::new())
            }
            BatchStep::Settle(ranges) => {
                // The batch's progress, for lag metrics only (the batch itself is recorded
                // as applied by `Apply`; recovery never reads these offsets for microbatches).
                let mut progress = Batch::default();
                for (d, _, e) in &ranges {
                    let o = progress
                        .offsets
                        .entry((topology.to_string(), d.clone()))
                        .or_insert(0);
                    *o = (*o).max(*e);
                }
                if !progress.offsets.is_empty() {
                    self.store
                        .commit(progress, false)
                        .map_err(|e| e.to_string())?;
                }
                let waiting = std::mem::take(&mut self.mb_waiting);
                for (tp, depot, offset, tree) in waiting {
                    let inside = tp == topology
                        && ranges
                            .iter()
                            .any(|(d, s, e)| **d == *depot && (*s..*e).contains(&offset));
                    if inside {
                        tree.finish_one();
                    } else {
                        self.mb_waiting.push((tp, depot, offset, tree));
                    }
                }
                Ok(Vec::new())
            }
        }
    }

    /// Runs handlers inside a microbatch: `(origin depot, origin offset, handler, input)`.
    fn batch_run(
        &mut self,
        t: &Topology,
        id: u64,
        work: Vec<(Arc<str>, u64, String, Vec<u8>)>,
    ) -> Result<Vec<BatchHop>, String> {
        let mut st = self
            .mb
            .0
            .remove(&t.name)
            .filter(|s| s.id == id)
            .ok_or("hops for a batch this partition is not running")?;
        let session = st.session.take().ok_or("hops after prepare")?;
        let stream_session = self.instance.session_mut().replace(session);
        let mut out = Vec::new();
        for (depot, offset, handler, input) in work {
            let ctx = self.ctx(&depot, offset, Some(id));
            match self.run_handler(t, &handler, &input, ctx) {
                Ok((_, emitted)) => {
                    for e in emitted {
                        let targets: Vec<u32> = match &e.dest {
                            HopDest::Key(k) => {
                                vec![crate::pstate::partition_of_key(k, self.partitions)
                                    .unwrap_or(0)]
                            }
                            HopDest::All => (0..self.partitions).collect(),
                            HopDest::Partition(p) => vec![*p],
                        };
                        for target in targets {
                            out.push(BatchHop {
                                target,
                                handler: e.handler.clone(),
                                payload: e.payload.clone(),
                                depot: Arc::clone(&depot),
                                offset,
                            });
                        }
                    }
                }
                Err((error, attempts)) => st.dead.push(DeadLetter {
                    topology: t.name.clone(),
                    depot: if handler == t.handler {
                        depot.to_string()
                    } else {
                        format!("batch-hop:{handler}:{depot}")
                    },
                    offset,
                    error_code: error.code.clone(),
                    error: format!("batch {id}: {}", error.message),
                    attempts,
                }),
            }
        }
        let session = std::mem::replace(self.instance.session_mut(), stream_session);
        st.session = session;
        self.mb.0.insert(t.name.clone(), st);
        Ok(out)
    }

    /// Replays records the PState store does not reflect yet (after a crash or kill).
    fn recover(&mut self, flush: &mut Flush, hops: &mut Hops) -> Result<(), redb::Error> {
        let mut done: HashMap<(String, String), u64> = HashMap::new();
        let mut depots: BTreeMap<String, u64> = BTreeMap::new();
        for t in self
            .topologies
            .iter()
            .filter(|t| t.kind == TopologyKind::Stream)
        {
            for d in &t.depots {
                let processed = self.store.processed_offset(&t.name, d)?;
                done.insert((t.name.clone(), d.clone()), processed);
                let e = depots.entry(d.clone()).or_insert(processed);
                *e = (*e).min(processed);
            }
        }
        let mut replayed = 0u64;
        for (depot, from) in depots {
            let depot: Arc<str> = depot.into();
            let mut from = from;
            loop {
                let records = self.log.read(&depot, from, self.batch_records_max)?;
                let Some(last) = records.last().map(|(o, _)| *o) else {
                    break;
                };
                replayed += records.len() as u64;
                let items = records
                    .into_iter()
                    .map(|(offset, record)| Item::Record {
                        depot: Arc::clone(&depot),
                        offset,
                        record,
                        tree: None,
                    })
                    .collect();
                self.process(items, Some(&done), flush, hops)?;
                from = last + 1;
            }
        }
        if replayed > 0 {
            tracing::info!(
                module = &*self.module,
                partition = self.partition,
                replayed,
                "replayed records after restart"
            );
        }
        Ok(())
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn encode_outbox(target: u32, h: &Hop) -> Vec<u8> {
    to_cbor(&Value::Map(vec![
        (text("target"), Value::Integer(target.into())),
        (text("topology"), text(&h.topology)),
        (text("handler"), text(&h.handler)),
        (text("payload"), Value::Bytes(h.payload.clone())),
        (text("depot"), text(&h.origin_depot)),
        (text("offset"), Value::Integer(h.origin_offset.into())),
    ]))
}

fn decode_outbox(source: u32, seq: u64, bytes: &[u8]) -> Option<(u32, Hop)> {
    let Value::Map(entries) = from_cbor(bytes).ok()? else {
        return None;
    };
    let get = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| *k == text(name))
            .map(|(_, v)| v)
    };
    let s = |name: &str| match get(name) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    };
    let payload = match get("payload") {
        Some(Value::Bytes(b)) => b.clone(),
        _ => return None,
    };
    Some((
        u32::try_from(as_i64(get("target")?)?).ok()?,
        Hop {
            source,
            seq,
            topology: s("topology")?,
            handler: s("handler")?,
            payload,
            origin_depot: s("depot")?.into(),
            origin_offset: u64::try_from(as_i64(get("offset")?)?).ok()?,
            tree: None,
        },
    ))
}
