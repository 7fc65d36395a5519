//! The partition worker: the thread that runs one partition of a live module, and its
//! supervisor.
//!
//! Loop: take what is queued (up to `batch_records_max` items; a microbatch step or a
//! dead-letter replay ends the drain and runs after it), hand it to [`Partition::step`], and
//! make commits durable when the flush interval passes with nothing queued. The supervisor
//! owns the queue's receiving end: when the partition fails (an error from a step, a panic, an
//! instance that cannot be created) it is dropped and started again from its store, with
//! backoff, and its queue is kept — so appends and hops still queued are not lost, hops it
//! had taken are re-sent by their sources (it asks them to rewind), and `full` acks it was
//! working on are answered "outcome unknown" (their trees are dropped). Invariant: at most one
//! incarnation of a partition runs at a time, on this thread.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::core::{Partition, PartitionConfig, PartitionError};
use super::microbatch::HostPartition;
use super::seams::{Clock, HopTransport};
use super::work::{BatchReply, PeerMessage, Work};
use super::Topology;
use crate::cluster::jetstream::JetStreamLog;
use crate::cluster::replicated::{HostLog, HostStore, Replication};
use crate::depot::log::DepotLog;
use crate::imports::Imports;
use crate::pstate::claims::{Writer, WriterClaims};
use crate::pstate::{Catalog, PStateStore, Session};
use crate::runtime::{GuestInstance, Pre, Runtime};

/// The in-process hop transport: every partition's queue, and how many hops each holds
/// (bounded by `hop_queue_max`: a source holds what a full queue cannot take).
pub struct Channels {
    pub peers: Arc<Vec<Sender<Work>>>,
    pub hops_queued: Arc<Vec<AtomicUsize>>,
    pub hop_queue_max: usize,
}

impl HopTransport for Channels {
    fn send(&self, target: u32, message: PeerMessage) {
        if let Some(q) = self.peers.get(target as usize) {
            let _ = q.send(Work::Peer(message));
        }
    }

    fn offer(&self, target: u32, hop: super::hops::Hop) -> Result<(), super::hops::Hop> {
        let (Some(q), Some(n)) = (
            self.peers.get(target as usize),
            self.hops_queued.get(target as usize),
        ) else {
            return Ok(()); // no such partition: nothing can take it
        };
        if n.fetch_add(1, Ordering::AcqRel) >= self.hop_queue_max {
            n.fetch_sub(1, Ordering::AcqRel);
            return Err(hop);
        }
        if q.send(Work::Peer(PeerMessage::Hop(hop))).is_err() {
            n.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// Hops among `work` (taken from a queue: they leave its hop count).
fn hops_in(work: &[Work]) -> usize {
    work.iter()
        .filter(|w| matches!(w, Work::Peer(PeerMessage::Hop(_))))
        .count()
}

/// What a partition is doing, for `/health`, `/metrics` and the errors requests get.
#[derive(Debug, Clone, PartialEq)]
pub enum PartitionState {
    /// Replaying its depot log (after a start or a restart).
    Recovering,
    Serving,
    /// Failed and waiting to start again (`restarts` so far, `cause` of the last failure).
    Restarting {
        cause: String,
    },
    /// Failed for good: its files are damaged or lost acked data (`cause` says which file
    /// and how). It serves nothing until the module is updated or the host restarted.
    Failed {
        cause: String,
    },
    Stopped,
    /// Runs on another host of the cluster (a spread module): its queue goes there.
    Remote,
}

impl PartitionState {
    pub fn name(&self) -> &'static str {
        match self {
            PartitionState::Recovering => "recovering",
            PartitionState::Serving => "serving",
            PartitionState::Restarting { .. } => "restarting",
            PartitionState::Failed { .. } => "failed",
            PartitionState::Stopped => "stopped",
            PartitionState::Remote => "remote",
        }
    }
}

/// A partition's state as others see it.
pub struct PartitionStatus {
    state: Mutex<PartitionState>,
    /// Set while the partition serves: its PStates reflect everything acked.
    ready: AtomicBool,
    pub restarts: AtomicU64,
    /// The partition's durable commit position (see [`Partition::durable_position`]).
    pub durable_position: AtomicU64,
    /// Why the partition last failed, if it ever did.
    pub last_failure: Mutex<Option<String>>,
    /// Set when the partition is asked to stop, before its `Stop` is queued: an
    /// incarnation that took the `Stop` from the queue and then failed is neither restarted
    /// nor left waiting for another one (its queue never closes: peers hold senders).
    stop_requested: AtomicBool,
}

impl Default for PartitionStatus {
    fn default() -> Self {
        Self {
            state: Mutex::new(PartitionState::Recovering),
            ready: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            durable_position: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            stop_requested: AtomicBool::new(false),
        }
    }
}

impl PartitionStatus {
    pub fn state(&self) -> PartitionState {
        self.state.lock().expect("poisoned").clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the partition as asked to stop; queue a `Stop` after it.
    pub fn request_stop(&self) {
        self.stop_requested.store(true, Ordering::Release);
    }

    fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::Acquire)
    }

    fn set(&self, s: PartitionState) {
        self.ready.store(
            matches!(s, PartitionState::Serving | PartitionState::Remote),
            Ordering::Release,
        );
        *self.state.lock().expect("poisoned") = s;
    }

    /// Marks a partition another host runs: ready as far as this host can tell (its owner
    /// answers for its state).
    pub fn set_remote(&self) {
        self.set(PartitionState::Remote);
    }
}

/// Everything needed to (re)start one partition.
pub struct WorkerSpec {
    pub cfg: PartitionConfig,
    pub topologies: Arc<Vec<Topology>>,
    pub log: Arc<DepotLog>,
    pub store: Arc<PStateStore>,
    pub runtime: Arc<Runtime>,
    pub pre: Pre,
    pub catalog: Arc<Catalog>,
    /// Which topology kind writes each PState (module-wide).
    pub claims: Arc<WriterClaims>,
    pub select_values_max: usize,
    pub peers: Arc<Vec<Sender<Work>>>,
    /// Hops queued per partition of the module (this partition's is at its index).
    pub hops_queued: Arc<Vec<AtomicUsize>>,
    /// The most hops one partition's queue holds; senders hold the rest.
    pub hop_queue_max: usize,
    /// Appends queued and not yet taken (the queue bound is enforced on it).
    pub queued_appends: Arc<AtomicUsize>,
    pub open_trees: Arc<AtomicUsize>,
    pub status: Arc<PartitionStatus>,
    /// The host's clock (flush timing, tick times).
    pub clock: Arc<dyn Clock>,
    /// The partition's replicated log on a cluster (`None` on a single node). A replicated
    /// partition never restarts in place: its local files may then be behind its log, so
    /// every failure is final here and the cluster re-claims it (restoring from the log).
    pub replication: Option<Arc<Replication<JetStreamLog>>>,
    /// Re-send hops unconfirmed for this long (0: never; see
    /// [`Partition::resend_hops_every`]): set when some partitions run on other hosts.
    pub resend_hops_ms: u64,
}

/// How soon hops held for a full queue are offered again when nothing else arrives.
const HELD_RETRY_MS: u64 = 1;

/// The longest pause between two restarts of a failing partition.
const RESTART_BACKOFF_MS_MAX: u64 = 5_000;
/// The first pause; it doubles per consecutive failure.
const RESTART_BACKOFF_MS_MIN: u64 = 20;

/// How one incarnation ended.
pub(super) enum Exit {
    Stopped,
    Failed(String),
    /// Starting again cannot help (see [`PartitionError::is_fatal`]).
    Fatal(String),
}

/// The supervision loop: runs `incarnation(queue, work kept from before, restarted)` until
/// one ends with `Stopped`; after a failure (an `Exit::Failed` or a panic) records the cause,
/// pauses with backoff (reset once an incarnation reached `Serving`) keeping what arrives, and
/// starts the next. A `Stop` during a pause ends it, and so does a stop requested (see
/// [`PartitionStatus::request_stop`]) whose `Stop` the failed incarnation took.
pub(super) fn supervise(
    module: &str,
    status: &PartitionStatus,
    queue: &Queue<'_>,
    mut incarnation: impl FnMut(&Receiver<Work>, &mut Vec<Work>, bool) -> Exit,
) {
    let rx = queue.rx;
    let mut carry: Vec<Work> = Vec::new();
    let mut failures: u32 = 0;
    loop {
        status.set(PartitionState::Recovering);
        let restarted = status.restarts.load(Ordering::Acquire) > 0;
        let exit =
            std::panic::catch_unwind(AssertUnwindSafe(|| incarnation(rx, &mut carry, restarted)))
                .unwrap_or_else(|panic| Exit::Failed(panic_message(&panic)));
        let cause = match exit {
            Exit::Stopped => break,
            Exit::Failed(cause) => cause,
            Exit::Fatal(cause) => {
                tracing::error!("partition failed for good: {cause}");
                *status.last_failure.lock().expect("poisoned") = Some(cause.clone());
                status.set(PartitionState::Failed {
                    cause: cause.clone(),
                });
                crate::metrics::inc("sluice_partition_failures_total", &[("module", module)]);
                refuse_until_stopped(queue, status, std::mem::take(&mut carry), &cause);
                break;
            }
        };
        if status.state() == PartitionState::Serving {
            failures = 0;
        }
        failures += 1;
        status.restarts.fetch_add(1, Ordering::AcqRel);
        tracing::error!(failures, "partition failed, restarting: {cause}");
        *status.last_failure.lock().expect("poisoned") = Some(cause.clone());
        status.set(PartitionState::Restarting { cause });
        crate::metrics::inc("sluice_partition_restarts_total", &[("module", module)]);
        let pause = (RESTART_BACKOFF_MS_MIN << failures.min(10)).min(RESTART_BACKOFF_MS_MAX);
        if status.stop_requested() || wait(rx, &mut carry, Duration::from_millis(pause)) {
            break;
        }
    }
    status.set(PartitionState::Stopped);
}

/// A partition's queue, as the supervisor sees it.
pub(super) struct Queue<'a> {
    pub rx: &'a Receiver<Work>,
    /// Appends queued and not yet taken (see [`WorkerSpec::queued_appends`]).
    pub queued_appends: &'a AtomicUsize,
    /// Hops queued and not yet taken (this partition's entry of [`Channels::hops_queued`]).
    pub hops_queued: &'a AtomicUsize,
    pub partition: u32,
}

/// How often a failed partition's queue looks whether a stop was requested.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A failed partition's queue: appends are answered "partition failed" (nothing was written
/// to the log), everything else is dropped, until a `Stop` or a stop requested.
fn refuse_until_stopped(
    queue: &Queue<'_>,
    status: &PartitionStatus,
    carry: Vec<Work>,
    cause: &str,
) {
    let rx = queue.rx;
    let refuse = |w: Work| match w {
        Work::Stop => true,
        Work::Peer(PeerMessage::Hop(_)) => {
            queue.hops_queued.fetch_sub(1, Ordering::AcqRel);
            false
        }
        Work::Append { reply, .. } => {
            // Taken from the queue: it no longer counts against the queue bound (an update's
            // drain waits for that count to reach zero).
            queue.queued_appends.fetch_sub(1, Ordering::AcqRel);
            if let Some(reply) = reply {
                let _ = reply.send(Err(super::work::ProcessingError::PartitionFailed {
                    partition: queue.partition,
                    cause: cause.to_string(),
                }));
            }
            false
        }
        _ => false,
    };
    for w in carry {
        if refuse(w) {
            return;
        }
    }
    while !status.stop_requested() {
        match rx.recv_timeout(STOP_POLL) {
            Ok(w) => {
                if refuse(w) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
    // Answer what is still queued: nothing takes it after this.
    while let Ok(w) = rx.try_recv() {
        if refuse(w) {
            return;
        }
    }
}

/// Waits out a restart pause, keeping what arrives; true if a `Stop` arrived.
fn wait(rx: &Receiver<Work>, carry: &mut Vec<Work>, pause: Duration) -> bool {
    let until = std::time::Instant::now() + pause;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        match rx.recv_timeout(left) {
            Ok(Work::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
            Ok(w) => carry.push(w),
            Err(RecvTimeoutError::Timeout) => return false,
        }
    }
}

impl WorkerSpec {
    /// Runs the partition until it is stopped, restarting it whenever it fails.
    pub fn run(self, rx: Receiver<Work>) {
        let span = tracing::info_span!(
            "partition",
            module = &*self.cfg.module,
            partition = self.cfg.partition
        );
        let _entered = span.enter();
        let queue = Queue {
            rx: &rx,
            queued_appends: &self.queued_appends,
            hops_queued: &self.hops_queued[self.cfg.partition as usize],
            partition: self.cfg.partition,
        };
        supervise(
            &self.cfg.module,
            &self.status,
            &queue,
            |rx, carry, restarted| {
                if self.replication.is_none() {
                    return self.run_once(rx, carry, restarted);
                }
                let once = AssertUnwindSafe(|| self.run_once(rx, carry, restarted));
                match std::panic::catch_unwind(once) {
                    Ok(Exit::Failed(cause)) => Exit::Fatal(self.replicated_failure(cause)),
                    Err(panic) => Exit::Fatal(self.replicated_failure(panic_message(&panic))),
                    Ok(exit) => exit,
                }
            },
        );
    }

    /// The cause of a replicated partition's failure, as its status reports it.
    fn replicated_failure(&self, cause: String) -> String {
        let poisoned = self.replication.as_ref().and_then(|r| r.poisoned());
        let why = poisoned.map_or(cause, |p| format!("its log stopped taking writes: {p}"));
        format!(
            "{why}; a replicated partition is not restarted in place (the cluster claims it again)"
        )
    }

    fn build(&self) -> Result<HostPartition, String> {
        let (store, catalog) = (Arc::clone(&self.store), Arc::clone(&self.catalog));
        let (p, partitions, max) = (
            self.cfg.partition,
            self.cfg.partitions,
            self.select_values_max,
        );
        let session = Session::new(Arc::clone(&store), Arc::clone(&catalog), p, partitions, max)
            .writing_as(Writer::Stream, Arc::clone(&self.claims));
        let hop_handlers = Arc::new(
            self.topologies
                .iter()
                .map(|t| (t.name.clone(), t.hop_handlers.clone()))
                .collect(),
        );
        let imports = Imports::for_handlers(
            &self.cfg.module,
            self.runtime.limits().path_navigators_max,
            session,
            hop_handlers,
        );
        let instance = GuestInstance::new(
            Arc::clone(&self.runtime),
            self.pre.clone(),
            &self.cfg.module,
            Box::new(imports),
        )
        .map_err(|e| format!("creating the module instance: {e}"))?;
        let mut partition = Partition::new(
            self.cfg.clone(),
            Arc::clone(&self.topologies),
            instance,
            HostLog {
                local: Arc::clone(&self.log),
                replication: self.replication.clone(),
            },
            HostStore {
                local: Arc::clone(&self.store),
                replication: self.replication.clone(),
            },
            Channels {
                peers: Arc::clone(&self.peers),
                hops_queued: Arc::clone(&self.hops_queued),
                hop_queue_max: self.hop_queue_max,
            },
            Arc::clone(&self.clock),
            Arc::clone(&self.open_trees),
        );
        partition.resend_hops_every(self.resend_hops_ms);
        let claims = Arc::clone(&self.claims);
        partition.mb.new_session = Some(Box::new(move |topology: &str| {
            Session::new(Arc::clone(&store), Arc::clone(&catalog), p, partitions, max)
                .writing_as(Writer::Microbatch(topology.into()), Arc::clone(&claims))
        }));
        Ok(partition)
    }

    /// One incarnation: build, recover, serve until stopped or failed.
    fn run_once(&self, rx: &Receiver<Work>, carry: &mut Vec<Work>, restarted: bool) -> Exit {
        if restarted {
            // redb refuses all work after an I/O error until the file is opened again.
            for (what, r) in [
                (self.log.path(), self.log.reopen()),
                (self.store.path(), self.store.reopen()),
            ] {
                if let Err(e) = r {
                    return Exit::Failed(format!("reopening {}: {e}", what.display()));
                }
            }
        }
        let mut p = match self.build() {
            Ok(p) => p,
            Err(e) => return Exit::Failed(e),
        };
        if let Err(e) = p.start() {
            return self.exit(&e);
        }
        // Subscriptions: the schemas now in force; positions above this one are gone.
        self.store
            .changes()
            .started(p.position(), Arc::clone(&self.catalog));
        if restarted || self.resend_hops_ms > 0 {
            // Hops taken by the failed incarnation are gone (or, on a cluster, were sent to
            // this partition's previous owner): ask every source to re-send from what is
            // applied here.
            p.ask_rewind();
        }
        self.status.set(PartitionState::Serving);
        let flush_tick = Duration::from_millis(p.cfg.flush_interval_ms.max(1));
        let mut migrating: Vec<String> = self.catalog.migrating.iter().cloned().collect();
        for pstate in &migrating {
            if let Err(e) = crate::pstate::migration::resume(&self.store, pstate) {
                return Exit::Failed(format!("PState `{pstate}`: resuming its migration: {e}"));
            }
        }
        loop {
            let mut work = std::mem::take(carry);
            let stepped = Instant::now();
            if let Err(e) = self.migrate_some(&mut p, &mut migrating) {
                return Exit::Failed(e);
            }
            // The rewrite takes at most half of an idle partition's time: after a step it
            // waits as long for work (a waiting batch runs first).
            let pace = stepped.elapsed();
            if work.is_empty() {
                // Held hops are offered again soon, not at the next flush.
                let mut tick = if p.hops_held() > 0 {
                    Duration::from_millis(HELD_RETRY_MS)
                } else {
                    flush_tick
                };
                if let Some(ms) = p.next_tick_in_ms() {
                    tick = tick.min(Duration::from_millis(ms.max(1)));
                }
                if !migrating.is_empty() {
                    tick = tick.min(pace);
                }
                match rx.recv_timeout(tick) {
                    Ok(w) => work.push(w),
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = p.tick() {
                            return self.exit(&e);
                        }
                        self.publish(&p);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return match p.make_durable() {
                            Ok(()) => Exit::Stopped,
                            Err(e) => self.exit(&e),
                        };
                    }
                }
            }
            while work.len() < p.cfg.batch_records_max && !ends_drain(work.last()) {
                match rx.try_recv() {
                    Ok(w) => work.push(w),
                    Err(_) => break,
                }
            }
            let special = if ends_drain(work.last()) {
                work.pop()
            } else {
                None
            };
            let taken = work
                .iter()
                .filter(|w| matches!(w, Work::Append { .. }))
                .count();
            self.hops_queued[self.cfg.partition as usize]
                .fetch_sub(hops_in(&work), Ordering::AcqRel);
            let stepped = p.step(work);
            // Only now do the taken appends leave the queue count: their `full`-ack trees
            // exist (an update's drain, which waits for both counts to reach zero, must never
            // see an append between the queue and its tree).
            self.queued_appends.fetch_sub(taken, Ordering::AcqRel);
            let stopping = match stepped {
                Ok(s) => s,
                Err(e) => return self.exit(&e),
            };
            if let Err(e) = self.special(&mut p, special) {
                return Exit::Failed(e);
            }
            self.publish(&p);
            if stopping {
                return match p.make_durable() {
                    Ok(()) => Exit::Stopped,
                    Err(e) => self.exit(&e),
                };
            }
        }
    }

    /// One bounded step of the first PState migration still running here (each worker loop
    /// runs one, between batches: the rewrite never holds the partition longer).
    fn migrate_some(
        &self,
        p: &mut HostPartition,
        migrating: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(pstate) = migrating.first().cloned() else {
            return Ok(());
        };
        let stepped = crate::pstate::migration::step(&self.store, &self.catalog, &pstate)
            .map_err(|e| format!("PState `{pstate}`: the migration failed to write: {e}"))?;
        use crate::pstate::migration::Stepped;
        let rewrote = match stepped {
            Stepped::Rewrote(n) => n,
            Stepped::Finished(n) => {
                migrating.remove(0);
                tracing::info!(
                    module = &*self.cfg.module,
                    partition = self.cfg.partition,
                    pstate,
                    "PState migration done on this partition"
                );
                n
            }
            Stepped::Idle => {
                migrating.remove(0);
                0
            }
        };
        if rewrote > 0 || stepped != Stepped::Idle {
            p.flush.dirty = true;
        }
        if rewrote > 0 {
            crate::metrics::counter(
                "sluice_pstate_migrated_entries_total",
                &[("module", &self.cfg.module), ("pstate", &pstate)],
            )
            .fetch_add(rewrote, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Runs a microbatch step or a dead-letter replay.
    fn special(&self, p: &mut HostPartition, work: Option<Work>) -> Result<(), String> {
        match work {
            Some(Work::ReplayDeadLetters { topology, reply }) => {
                let r = p.replay_dead_letters(&topology);
                let failed = r.as_ref().err().and_then(|e| e.partition_failed());
                let _ = reply.send(r.map_err(|e| e.to_string()));
                failed.map_or(Ok(()), Err)
            }
            Some(Work::DiscardDeadLetter {
                topology,
                depot,
                offset,
                by,
                reply,
            }) => {
                let r = p.discard_dead_letter(&topology, &depot, offset, &by);
                let failed = r.as_ref().err().map(|e| e.to_string());
                let _ = reply.send(r.map_err(|e| e.to_string()));
                failed.map_or(Ok(()), Err)
            }
            Some(Work::Batch {
                topology,
                id,
                step,
                reply,
            }) => {
                let r = p.batch_step(&topology, id, step);
                let _ = reply.send(match r {
                    Ok((hops, count)) => BatchReply {
                        partition: p.cfg.partition,
                        hops,
                        count,
                        error: None,
                    },
                    Err(e) => BatchReply {
                        partition: p.cfg.partition,
                        hops: Vec::new(),
                        count: 0,
                        error: Some(e),
                    },
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A partition failure, naming the file it concerns.
    fn describe(&self, e: &PartitionError) -> String {
        let file = match e {
            PartitionError::Log(_) => self.log.path(),
            PartitionError::Store(_) | PartitionError::Lost(_) => self.store.path(),
        };
        format!("{e} ({})", file.display())
    }

    /// How an incarnation ends on `e`.
    fn exit(&self, e: &PartitionError) -> Exit {
        if e.is_fatal() {
            let cause = self.describe(e);
            // Its subscribers are told: nothing will change here any more.
            self.store.changes().close(
                "partition-failed",
                &format!("partition {} has failed: {cause}", self.cfg.partition),
            );
            Exit::Fatal(cause)
        } else {
            Exit::Failed(self.describe(e))
        }
    }

    fn publish(&self, p: &HostPartition) {
        self.status
            .durable_position
            .store(p.durable_position(), Ordering::Release);
    }
}

fn ends_drain(w: Option<&Work>) -> bool {
    matches!(
        w,
        Some(Work::Batch { .. } | Work::ReplayDeadLetters { .. } | Work::DiscardDeadLetter { .. })
    )
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {what}")
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;

    fn confirmed(n: u32) -> Work {
        Work::Peer(PeerMessage::Confirmed { target: n, next: 0 })
    }

    fn test_queue(rx: &Receiver<Work>) -> Queue<'_> {
        Queue {
            rx,
            queued_appends: Box::leak(Box::new(AtomicUsize::new(0))),
            hops_queued: Box::leak(Box::new(AtomicUsize::new(0))),
            partition: 3,
        }
    }

    /// A fatal failure (damage, lost data) is not restarted: the partition reports `failed`
    /// with the cause, answers every queued append "partition failed" (taking it off the
    /// queue count, so an update's drain can finish), and ends at `Stop`.
    #[test]
    fn a_fatal_failure_refuses_appends_until_stopped() {
        let (tx, rx) = channel();
        let status = PartitionStatus::default();
        let queued = AtomicUsize::new(2);
        let hops = AtomicUsize::new(0);
        let queue = Queue {
            rx: &rx,
            queued_appends: &queued,
            hops_queued: &hops,
            partition: 3,
        };
        let mut replies = Vec::new();
        for _ in 0..2 {
            let (reply, answer) = tokio::sync::oneshot::channel();
            tx.send(Work::Append {
                depot: "d".into(),
                record: vec![],
                ack: super::super::AckLevel::Append,
                reply: Some(reply),
                key: None,
            })
            .unwrap();
            replies.push(answer);
        }
        tx.send(Work::Stop).unwrap();
        let mut runs = 0;
        supervise("m", &status, &queue, |_, _, _| {
            runs += 1;
            Exit::Fatal("damaged data in p3".into())
        });
        assert_eq!(runs, 1, "a fatal failure is not restarted");
        assert_eq!(queued.load(Ordering::Acquire), 0);
        for mut r in replies {
            match r.try_recv().unwrap() {
                Err(super::super::ProcessingError::PartitionFailed { partition, cause }) => {
                    assert_eq!((partition, cause.as_str()), (3, "damaged data in p3"))
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            *status.last_failure.lock().unwrap(),
            Some("damaged data in p3".to_string())
        );
    }

    /// A panic in recovery and a failed start are survived: the partition is restarted with
    /// backoff, keeps the work queued meanwhile, reports why, and serves.
    #[test]
    fn a_failing_partition_restarts_keeping_its_queue() {
        let status = Arc::new(PartitionStatus::default());
        let (tx, rx) = channel();
        for n in 0..3 {
            tx.send(confirmed(n)).unwrap();
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let supervisor = {
            let (status, got) = (Arc::clone(&status), Arc::clone(&got));
            std::thread::spawn(move || {
                let mut calls = 0;
                supervise("m", &status, &test_queue(&rx), |rx, carry, restarted| {
                    calls += 1;
                    match calls {
                        1 => {
                            assert!(!restarted);
                            panic!("boom in recovery")
                        }
                        2 => {
                            assert!(restarted);
                            Exit::Failed("disk full".into())
                        }
                        _ => {
                            status.set(PartitionState::Serving);
                            let mut work = std::mem::take(carry);
                            loop {
                                for w in work.drain(..) {
                                    match w {
                                        Work::Stop => return Exit::Stopped,
                                        Work::Peer(PeerMessage::Confirmed { target, .. }) => {
                                            got.lock().unwrap().push(target)
                                        }
                                        _ => {}
                                    }
                                }
                                work.push(rx.recv().unwrap());
                            }
                        }
                    }
                })
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !status.is_ready() {
            assert!(std::time::Instant::now() < deadline, "never served");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(status.restarts.load(Ordering::Acquire), 2);
        assert_eq!(
            status.last_failure.lock().unwrap().as_deref(),
            Some("disk full")
        );
        tx.send(confirmed(3)).unwrap();
        tx.send(Work::Stop).unwrap();
        supervisor.join().unwrap();
        assert_eq!(
            *got.lock().unwrap(),
            vec![0, 1, 2, 3],
            "nothing queued was lost"
        );
        assert_eq!(status.state(), PartitionState::Stopped);
    }

    /// The `Stop` a partition is sent can be taken by an incarnation that then fails (a
    /// batch held appends and the `Stop`, and the appends' write was fenced): the stop
    /// requested ends the partition anyway, failed for good or not, instead of a restart or
    /// a wait for a second `Stop` that never comes (the queue stays open: peers hold
    /// senders) — an update or a reshape joining the worker would hang.
    #[test]
    fn a_stop_taken_by_a_failing_incarnation_still_ends_the_partition() {
        for fatal in [false, true] {
            let status = Arc::new(PartitionStatus::default());
            let (tx, rx) = channel();
            let (done_tx, done) = channel();
            let calls = Arc::new(AtomicUsize::new(0));
            let supervisor = {
                let (status, calls) = (Arc::clone(&status), Arc::clone(&calls));
                std::thread::spawn(move || {
                    supervise("m", &status, &test_queue(&rx), |rx, _, _| {
                        calls.fetch_add(1, Ordering::AcqRel);
                        let taken = rx.recv().unwrap();
                        assert!(matches!(taken, Work::Stop));
                        if fatal {
                            Exit::Fatal("fenced".into())
                        } else {
                            Exit::Failed("disk full".into())
                        }
                    });
                    done_tx.send(()).unwrap();
                })
            };
            status.request_stop();
            tx.send(Work::Stop).unwrap();
            let ended = done.recv_timeout(Duration::from_secs(10));
            assert!(ended.is_ok(), "the partition never ended (fatal: {fatal})");
            supervisor.join().unwrap();
            assert_eq!(calls.load(Ordering::Acquire), 1, "restarted after a stop");
            assert_eq!(status.state(), PartitionState::Stopped);
            drop(tx);
        }
    }

    #[test]
    fn a_stop_during_the_restart_pause_ends_the_partition() {
        let status = PartitionStatus::default();
        let (tx, rx) = channel();
        tx.send(Work::Stop).unwrap();
        let mut calls = 0;
        supervise("m", &status, &test_queue(&rx), |_, _, _| {
            calls += 1;
            Exit::Failed("instance creation failed".into())
        });
        assert_eq!(calls, 1);
        assert_eq!(status.state(), PartitionState::Stopped);
        assert_eq!(
            status.last_failure.lock().unwrap().as_deref(),
            Some("instance creation failed")
        );
    }
}
