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
use std::time::Duration;

use super::core::{Partition, PartitionConfig, PartitionError};
use super::microbatch::HostPartition;
use super::seams::{HopTransport, SystemClock};
use super::work::{BatchReply, PeerMessage, Work};
use super::Topology;
use crate::depot::log::DepotLog;
use crate::pstate::claims::{Writer, WriterClaims};
use crate::pstate::{Catalog, PStateStore, Session};
use crate::runtime::{GuestInstance, Pre, Runtime};

/// The in-process hop transport: every partition's queue.
pub struct Channels(pub Arc<Vec<Sender<Work>>>);

impl HopTransport for Channels {
    fn send(&self, target: u32, message: PeerMessage) {
        if let Some(q) = self.0.get(target as usize) {
            let _ = q.send(Work::Peer(message));
        }
    }
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
    Stopped,
}

impl PartitionState {
    pub fn name(&self) -> &'static str {
        match self {
            PartitionState::Recovering => "recovering",
            PartitionState::Serving => "serving",
            PartitionState::Restarting { .. } => "restarting",
            PartitionState::Stopped => "stopped",
        }
    }
}

/// A partition's state as others see it.
pub struct PartitionStatus {
    state: Mutex<PartitionState>,
    /// Set while the partition serves: its PStates reflect everything acked.
    ready: AtomicBool,
    pub restarts: AtomicU64,
    /// Durable commits made (the partition's durable commit position).
    pub durable_commits: AtomicU64,
}

impl Default for PartitionStatus {
    fn default() -> Self {
        Self {
            state: Mutex::new(PartitionState::Recovering),
            ready: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            durable_commits: AtomicU64::new(0),
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

    fn set(&self, s: PartitionState) {
        self.ready
            .store(s == PartitionState::Serving, Ordering::Release);
        *self.state.lock().expect("poisoned") = s;
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
    /// Appends queued and not yet taken (the queue bound is enforced on it).
    pub queued_appends: Arc<AtomicUsize>,
    pub open_trees: Arc<AtomicUsize>,
    pub status: Arc<PartitionStatus>,
}

/// The longest pause between two restarts of a failing partition.
const RESTART_BACKOFF_MS_MAX: u64 = 5_000;
/// The first pause; it doubles per consecutive failure.
const RESTART_BACKOFF_MS_MIN: u64 = 20;

/// How one incarnation ended.
enum Exit {
    Stopped,
    Failed(String),
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
        let mut carry: Vec<Work> = Vec::new();
        let mut failures: u32 = 0;
        loop {
            self.status.set(PartitionState::Recovering);
            let restarted = self.status.restarts.load(Ordering::Acquire) > 0;
            let exit = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.run_once(&rx, &mut carry, restarted, &mut failures)
            }))
            .unwrap_or_else(|panic| Exit::Failed(panic_message(&panic)));
            let cause = match exit {
                Exit::Stopped => break,
                Exit::Failed(cause) => cause,
            };
            failures += 1;
            self.status.restarts.fetch_add(1, Ordering::AcqRel);
            tracing::error!(failures, "partition failed, restarting: {cause}");
            self.status.set(PartitionState::Restarting { cause });
            crate::metrics::inc(
                "sluice_partition_restarts_total",
                &[("module", &self.cfg.module)],
            );
            let pause = (RESTART_BACKOFF_MS_MIN << failures.min(10)).min(RESTART_BACKOFF_MS_MAX);
            if self.wait(&rx, &mut carry, Duration::from_millis(pause)) {
                break;
            }
        }
        self.status.set(PartitionState::Stopped);
    }

    /// Waits out a restart pause, keeping what arrives; true if a `Stop` arrived.
    fn wait(&self, rx: &Receiver<Work>, carry: &mut Vec<Work>, pause: Duration) -> bool {
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

    fn build(&self) -> Result<HostPartition, String> {
        let mut instance = GuestInstance::new(
            Arc::clone(&self.runtime),
            self.pre.clone(),
            &self.cfg.module,
        )
        .map_err(|e| format!("creating the module instance: {e}"))?;
        instance.set_hop_handlers(Arc::new(
            self.topologies
                .iter()
                .map(|t| (t.name.clone(), t.hop_handlers.clone()))
                .collect(),
        ));
        let (store, catalog) = (Arc::clone(&self.store), Arc::clone(&self.catalog));
        let (p, partitions, max) = (
            self.cfg.partition,
            self.cfg.partitions,
            self.select_values_max,
        );
        *instance.session_mut() = Some(
            Session::new(Arc::clone(&store), Arc::clone(&catalog), p, partitions, max)
                .writing_as(Writer::Stream, Arc::clone(&self.claims)),
        );
        let mut partition = Partition::new(
            self.cfg.clone(),
            Arc::clone(&self.topologies),
            instance,
            Arc::clone(&self.log),
            Arc::clone(&self.store),
            Channels(Arc::clone(&self.peers)),
            Arc::new(SystemClock::default()),
            Arc::clone(&self.open_trees),
        );
        let claims = Arc::clone(&self.claims);
        partition.mb.new_session = Some(Box::new(move |topology: &str| {
            Session::new(Arc::clone(&store), Arc::clone(&catalog), p, partitions, max)
                .writing_as(Writer::Microbatch(topology.into()), Arc::clone(&claims))
        }));
        Ok(partition)
    }

    /// One incarnation: build, recover, serve until stopped or failed.
    fn run_once(
        &self,
        rx: &Receiver<Work>,
        carry: &mut Vec<Work>,
        restarted: bool,
        failures: &mut u32,
    ) -> Exit {
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
            return Exit::Failed(self.describe(&e));
        }
        if restarted {
            // Hops taken by the failed incarnation are gone: ask every source to re-send
            // from what is applied here.
            p.ask_rewind();
        }
        *failures = 0;
        self.status.set(PartitionState::Serving);
        let tick = Duration::from_millis(p.cfg.flush_interval_ms.max(1));
        loop {
            let mut work = std::mem::take(carry);
            if work.is_empty() {
                match rx.recv_timeout(tick) {
                    Ok(w) => work.push(w),
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = p.tick() {
                            return Exit::Failed(self.describe(&e));
                        }
                        self.publish(&p);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return match p.make_durable() {
                            Ok(()) => Exit::Stopped,
                            Err(e) => Exit::Failed(self.describe(&e)),
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
            self.queued_appends.fetch_sub(taken, Ordering::AcqRel);
            let stopping = match p.step(work) {
                Ok(s) => s,
                Err(e) => return Exit::Failed(self.describe(&e)),
            };
            if let Err(e) = self.special(&mut p, special) {
                return Exit::Failed(e);
            }
            self.publish(&p);
            if stopping {
                return match p.make_durable() {
                    Ok(()) => Exit::Stopped,
                    Err(e) => Exit::Failed(self.describe(&e)),
                };
            }
        }
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
            Some(Work::Batch {
                topology,
                id,
                step,
                reply,
            }) => {
                let r = p.batch_step(&topology, id, step);
                let _ = reply.send(match r {
                    Ok(hops) => BatchReply {
                        partition: p.cfg.partition,
                        hops,
                        error: None,
                    },
                    Err(e) => BatchReply {
                        partition: p.cfg.partition,
                        hops: Vec::new(),
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
            PartitionError::Store(_) => self.store.path(),
        };
        format!("{e} ({})", file.display())
    }

    fn publish(&self, p: &HostPartition) {
        self.status
            .durable_commits
            .store(p.durable_commits(), Ordering::Release);
    }
}

fn ends_drain(w: Option<&Work>) -> bool {
    matches!(w, Some(Work::Batch { .. } | Work::ReplayDeadLetters { .. }))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {what}")
}
