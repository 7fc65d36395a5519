//! Deterministic simulation of the partition protocol (TigerBeetle's VOPR idea): the real
//! partition state machine (`sluice::partition`) over in-memory logs, stores and queues, with
//! native Rust handlers, under a seeded scheduler that chooses batch compositions, message
//! deliveries, appends, flush timing and crashes at every commit boundary (before or after
//! the commit takes effect, durable or not; a whole-process crash or one partition's
//! restart), then checks the result against a model:
//! - every acked record is in its log at the acked offset;
//! - every stored record's effects are present exactly once, on the right partitions, and
//!   nothing else is (no effect of a failed attempt, none of a record never stored);
//! - hops of each (source, target) pair are applied in emission order, none lost or repeated;
//! - a `full` ack is answered only when its whole tree's effects are visible, and no request
//!   is left hanging;
//! - commit positions are dense, and a partition's durable position never goes back.
//!
//! `SIM_SEEDS=N` runs seeds 0..N (default 300, what `make test` runs); `SIM_SEED=S` runs one
//! seed; a failure names its seed. `make sim SEEDS=N` runs many.

mod cluster;
mod handlers;
mod mem;
mod rng;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sluice::partition::seams::Executor;
use sluice::partition::{
    AckLevel, AppendOutcome, Partition, PartitionConfig, ProcessingError, Topology, Work,
};
use sluice::value::Value;
use tokio::sync::oneshot;

use handlers::{place, record, record_id, SimExec, FLAKY, POISON};
use mem::{
    Faults, FaultyLog, Inboxes, MemLog, MemStore, MemTransport, SharedFaults, SimClock, SIM_RETRY,
};
use rng::Rng;
use sluice::cluster::fence::{current_epoch, Claim, LogView};
use sluice::cluster::replicated::{claim_restoring, ReplicatedDepotLog, ReplicatedStore, Restorer};

/// A partition's depot log and store as the simulation runs them: local, or behind a
/// replicated log.
type SimLog = Box<dyn sluice::partition::seams::PartitionLog>;
type SimStore = Box<dyn sluice::partition::seams::PartitionStore>;

type SimPartition = Partition<SimExec, SimLog, SimStore, MemTransport>;

type AckRx = oneshot::Receiver<Result<AppendOutcome, ProcessingError>>;

struct Pending {
    id: u64,
    depot: &'static str,
    rx: AckRx,
}

struct Sim {
    seed: u64,
    rng: Rng,
    n: u32,
    flush_interval_ms: u64,
    faults: SharedFaults,
    clock: Arc<SimClock>,
    inboxes: Inboxes,
    logs: Vec<Rc<MemLog>>,
    stores: Vec<Rc<MemStore>>,
    parts: Vec<Option<SimPartition>>,
    topologies: Arc<Vec<Topology>>,
    open_trees: Arc<AtomicUsize>,
    pending: Vec<Pending>,
    next_id: u64,
    /// (id, partition, offset) of every append answered with success.
    acked: Vec<(u64, &'static str, u32, u64)>,
    crashes: u32,
    restarts: u32,
    /// Replicated seeds (one in three): each partition's log on the model of JetStream;
    /// every crash or restart is a failover to a new host that restores from it.
    replicated: Option<Vec<Arc<FaultyLog>>>,
    failovers: u32,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let n = 1u32 << rng.below(4);
        let flush_interval_ms = [0, 5, 50, 1_000][rng.below(4) as usize];
        let per_mille = [0, 5, 20, 60][rng.below(4) as usize];
        let faults = Rc::new(RefCell::new(Faults {
            rng: Rng::new(seed.wrapping_mul(7919).wrapping_add(1)),
            per_mille,
            enabled: true,
            fired: false,
        }));
        let logs = (0..n)
            .map(|_| {
                Rc::new(MemLog {
                    depots: RefCell::default(),
                    keys: RefCell::default(),
                    faults: Rc::clone(&faults),
                })
            })
            .collect();
        let stores = (0..n)
            .map(|_| {
                Rc::new(MemStore {
                    durable: RefCell::default(),
                    current: RefCell::default(),
                    faults: Rc::clone(&faults),
                })
            })
            .collect();
        let mut sim = Self {
            seed,
            rng,
            n,
            flush_interval_ms,
            faults,
            clock: Arc::new(SimClock::default()),
            inboxes: Rc::new(RefCell::new((0..n).map(|_| VecDeque::new()).collect())),
            logs,
            stores,
            parts: (0..n).map(|_| None).collect(),
            topologies: Arc::new(handlers::topologies()),
            open_trees: Arc::new(AtomicUsize::new(0)),
            pending: Vec::new(),
            next_id: 1,
            acked: Vec::new(),
            crashes: 0,
            restarts: 0,
            replicated: None,
            failovers: 0,
        };
        if seed % 3 == 1 {
            #[allow(clippy::arc_with_non_send_sync)] // one thread: the Arc is Owner's type
            let logs = (0..n)
                .map(|_| Arc::new(FaultyLog::new(Rc::clone(&sim.faults))))
                .collect();
            sim.replicated = Some(logs);
        }
        for p in 0..n {
            sim.start(p, false);
        }
        sim
    }

    fn context(&self) -> String {
        format!(
            "seed {} ({}{} partitions, flush interval {} ms, fault rate {}‰, {} crashes, {} partition restarts)",
            self.seed,
            if self.replicated.is_some() { "replicated, " } else { "" },
            self.n,
            self.flush_interval_ms,
            self.faults.borrow().per_mille,
            self.crashes,
            self.restarts
        )
    }

    /// Starts partition `p` from its store, until a start survives its faults.
    fn start(&mut self, p: u32, alone: bool) {
        loop {
            let cfg = PartitionConfig {
                module: "sim".into(),
                partition: p,
                partitions: self.n,
                batch_records_max: 1 + self.rng.below(6) as usize,
                handler_attempts_max: 3,
                flush_interval_ms: self.flush_interval_ms,
                retry_backoff_base_ms: 0,
                deadline_penalty_ms: 0,
                ticks: Vec::new(),
                retention: Vec::new(),
            };
            let (log, store) = match self.replicated.is_some() {
                true => self.fail_over(p),
                false => (
                    Box::new(Rc::clone(&self.logs[p as usize])) as SimLog,
                    Box::new(Rc::clone(&self.stores[p as usize])) as SimStore,
                ),
            };
            let mut part = Partition::new(
                cfg,
                Arc::clone(&self.topologies),
                SimExec::new(Rc::clone(&self.stores[p as usize]), p, self.n),
                log,
                store,
                MemTransport(Rc::clone(&self.inboxes)),
                self.clock.clone(),
                Arc::clone(&self.open_trees),
            );
            match part.start() {
                Ok(()) => {
                    let durable = self.stores[p as usize].durable.borrow().position;
                    assert!(
                        part.durable_position() >= durable,
                        "{}: partition {p} restarted behind its durable position",
                        self.context()
                    );
                    if alone {
                        part.ask_rewind();
                    }
                    self.parts[p as usize] = Some(part);
                    return;
                }
                Err(_) => {
                    // A fault during recovery: this partition dies again and restarts (its
                    // queue is kept; what it sent before dying stands).
                    self.faults.borrow_mut().fired = false;
                    self.restarts += 1;
                }
            }
        }
    }

    /// Fresh local files for partition `p`, restored from its replicated log by a new host
    /// that claims it (faults off while restoring; they resume for the partition's start).
    fn fail_over(&mut self, p: u32) -> (SimLog, SimStore) {
        let rlog = Arc::clone(&self.replicated.as_ref().expect("replicated")[p as usize]);
        rlog.heal();
        let (log, store) = self.empty_locals();
        let enabled = std::mem::replace(&mut self.faults.borrow_mut().enabled, false);
        self.failovers += 1;
        // The new host judged the current owner dead (the fence decides).
        let over = current_epoch(&*rlog).expect("the log reads back without damage");
        let replication = claim_restoring(
            Arc::clone(&rlog),
            &format!("h{}", self.failovers),
            Claim::Over(over),
            &*log,
            &*store,
            SIM_RETRY,
            64, // small parts: commits span several
        )
        .unwrap_or_else(|e| panic!("{}: claim failed: {e}", self.context()));
        self.faults.borrow_mut().enabled = enabled;
        self.logs[p as usize] = Rc::clone(&log);
        self.stores[p as usize] = Rc::clone(&store);
        (
            Box::new(ReplicatedDepotLog {
                local: log,
                replication: Some(Arc::clone(&replication)),
            }),
            Box::new(ReplicatedStore {
                local: store,
                replication: Some(replication),
            }),
        )
    }

    /// A new host's local log and store: empty.
    fn empty_locals(&self) -> (Rc<MemLog>, Rc<MemStore>) {
        let log = Rc::new(MemLog {
            depots: RefCell::default(),
            keys: RefCell::default(),
            faults: Rc::clone(&self.faults),
        });
        let store = Rc::new(MemStore {
            durable: RefCell::default(),
            current: RefCell::default(),
            faults: Rc::clone(&self.faults),
        });
        (log, store)
    }

    /// A new, empty local log and store, restored from `rlog` (without claiming).
    fn restore(&self, rlog: &FaultyLog) -> (Rc<MemLog>, Rc<MemStore>) {
        let (log, store) = self.empty_locals();
        let enabled = std::mem::replace(&mut self.faults.borrow_mut().enabled, false);
        let mut restorer = Restorer::default();
        LogView::default()
            .catch_up(rlog, |e| restorer.apply(e, &*log, &*store))
            .expect("the log reads back without damage");
        restorer.finish(&*store).expect("no faults while restoring");
        self.faults.borrow_mut().enabled = enabled;
        (log, store)
    }

    /// What a process crash loses: non-durable commits and every queue.
    fn crash_process_state(&mut self) {
        for s in &self.stores {
            s.crash();
        }
        for q in self.inboxes.borrow_mut().iter_mut() {
            q.clear();
        }
    }

    fn crash_process(&mut self) {
        self.crashes += 1;
        for p in self.parts.iter_mut() {
            *p = None;
        }
        self.crash_process_state();
        for p in 0..self.n {
            self.start(p, false);
        }
    }

    fn restart_partition(&mut self, p: u32) {
        self.restarts += 1;
        self.parts[p as usize] = None;
        self.start(p, true);
    }

    fn append(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let (depot, p) = if self.rng.chance(60) {
            ("a", place(id, 0, self.n))
        } else {
            ("b", self.rng.below(u64::from(self.n)) as u32)
        };
        let ack = [AckLevel::None, AckLevel::Append, AckLevel::Full][self.rng.below(3) as usize];
        let (reply, rx) = if ack == AckLevel::None {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        self.inboxes.borrow_mut()[p as usize].push_back(Work::Append {
            depot: depot.into(),
            record: record(id),
            ack,
            reply,
            key: None,
        });
        if let Some(rx) = rx {
            self.pending.push(Pending { id, depot, rx });
        }
    }

    /// Runs one batch on partition `p`: a random number of its queued items.
    fn run(&mut self, p: u32, take_all: bool) {
        let take = if take_all {
            usize::MAX
        } else {
            1 + self.rng.below(8) as usize
        };
        let work: Vec<Work> = {
            let mut inboxes = self.inboxes.borrow_mut();
            let q = &mut inboxes[p as usize];
            let k = take.min(q.len());
            q.drain(..k).collect()
        };
        if work.is_empty() {
            return;
        }
        let part = self.parts[p as usize].as_mut().expect("started");
        if part.step(work).is_err() {
            self.fault(p);
        }
    }

    fn tick(&mut self, p: u32) {
        let part = self.parts[p as usize].as_mut().expect("started");
        if part.tick().is_err() {
            self.fault(p);
        }
    }

    /// A fault fired inside partition `p`: the process dies, or only the partition restarts.
    fn fault(&mut self, p: u32) {
        assert!(
            std::mem::take(&mut self.faults.borrow_mut().fired),
            "{}: partition {p} failed without an injected fault",
            self.context()
        );
        if self.rng.chance(50) {
            self.crash_process();
        } else {
            self.restart_partition(p);
        }
    }

    /// Answers that arrived: successes are recorded and `full` ones checked at once.
    fn poll(&mut self) {
        let mut still = Vec::new();
        for mut pend in std::mem::take(&mut self.pending) {
            match pend.rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => still.push(pend),
                Err(oneshot::error::TryRecvError::Closed) => {}
                Ok(Ok(o)) => {
                    if !o.results.is_empty() {
                        self.check_tree_visible(pend.id, pend.depot, o.partition);
                    }
                    self.acked
                        .push((pend.id, pend.depot, o.partition, o.offset));
                }
                Ok(Err(ProcessingError::Topology { .. })) => {
                    assert!(
                        pend.id.is_multiple_of(POISON) && pend.depot == "a",
                        "{}: record {} failed unexpectedly",
                        self.context(),
                        pend.id
                    );
                }
                Ok(Err(_)) => {}
            }
        }
        self.pending = still;
    }

    fn value(&self, p: u32, key: &str) -> i64 {
        self.stores[p as usize].get(key)
    }

    /// A `full` ack came: every effect of the record's tree must be visible now.
    fn check_tree_visible(&self, id: u64, depot: &str, origin: u32) {
        for (p, key) in self.expected(id, depot, origin) {
            assert_eq!(
                self.value(p, &key),
                1,
                "{}: record {id} was full-acked before `{key}` on partition {p} was visible",
                self.context()
            );
        }
    }

    /// The effects a stored record must have: (partition, key), each exactly 1.
    fn expected(&self, id: u64, depot: &str, origin: u32) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        let chain = |out: &mut Vec<(u32, String)>| {
            out.push((place(id, 1, self.n), format!("c1/{id}")));
            out.push((place(id, 2, self.n), format!("c2/{id}")));
        };
        if depot == "a" {
            out.push((origin, format!("rec2/{id}")));
            if !id.is_multiple_of(POISON) {
                out.push((origin, format!("rec/{id}")));
                chain(&mut out);
            }
        } else {
            out.push((origin, format!("rec/{id}")));
            for q in 0..self.n {
                out.push((q, format!("fan/{id}/{q}")));
            }
            chain(&mut out);
        }
        out
    }

    fn scenario(&mut self) {
        let steps = 200 + self.rng.below(400);
        for _ in 0..steps {
            match self.rng.below(100) {
                0..=29 => self.append(),
                30..=79 => {
                    let p = self.rng.below(u64::from(self.n)) as u32;
                    self.run(p, false);
                }
                80..=89 => {
                    let p = self.rng.below(u64::from(self.n)) as u32;
                    self.tick(p);
                }
                90..=97 => {
                    let ms = 1 + self.rng.below(2 * self.flush_interval_ms.max(1));
                    self.clock.0.fetch_add(ms, Ordering::Relaxed);
                }
                98 if self.rng.chance(30) => self.crash_process(),
                _ => {
                    let p = self.rng.below(u64::from(self.n)) as u32;
                    if self.rng.chance(30) {
                        self.restart_partition(p);
                    }
                }
            }
            self.poll();
        }
    }

    /// Without faults, runs until every queue is empty and every commit durable.
    fn quiesce(&mut self) {
        self.faults.borrow_mut().enabled = false;
        for round in 0.. {
            assert!(round < 10_000, "{}: did not quiesce", self.context());
            let busy: Vec<u32> = (0..self.n)
                .filter(|p| !self.inboxes.borrow()[*p as usize].is_empty())
                .collect();
            if busy.is_empty() {
                self.clock
                    .0
                    .fetch_add(self.flush_interval_ms + 1, Ordering::Relaxed);
                for p in 0..self.n {
                    self.tick(p);
                }
                if (0..self.n).all(|p| self.inboxes.borrow()[p as usize].is_empty()) {
                    break;
                }
            }
            for p in busy {
                self.run(p, true);
            }
            self.poll();
        }
        self.poll();
    }

    fn check(&self) {
        let ctx = self.context();
        // Every acked record is stored where its ack said.
        for (id, depot, p, offset) in &self.acked {
            let depots = self.logs[*p as usize].depots.borrow();
            let stored = depots
                .get(*depot)
                .and_then(|l| l.get(*offset as usize))
                .map(|r| record_id(r));
            assert_eq!(
                stored,
                Some(*id),
                "{ctx}: acked record {id} is not at {depot} {p}/{offset}"
            );
        }
        // No request is left hanging.
        assert!(
            self.pending.is_empty(),
            "{ctx}: {} requests never answered (first: record {})",
            self.pending.len(),
            self.pending[0].id
        );
        // The model: the effects every stored record implies, exactly once, and nothing else.
        let mut want: BTreeMap<(u32, String), i64> = BTreeMap::new();
        let mut stored_ids = BTreeMap::new();
        for (p, log) in self.logs.iter().enumerate() {
            for (depot, records) in log.depots.borrow().iter() {
                for r in records {
                    let id = record_id(r);
                    assert!(
                        stored_ids.insert(id, p).is_none(),
                        "{ctx}: record {id} stored twice"
                    );
                    for k in self.expected(id, depot, p as u32) {
                        want.insert(k, 1);
                    }
                }
            }
        }
        let mut got: BTreeMap<(u32, String), i64> = BTreeMap::new();
        for (p, s) in self.stores.iter().enumerate() {
            for (k, v) in &s.current.borrow().entries {
                let key = String::from_utf8(k.clone()).unwrap();
                let Value::Integer(i) = v else { continue };
                let v = i128::from(*i) as i64;
                if key.starts_with("violation/") || key.starts_with("leak/") {
                    panic!("{ctx}: partition {p} holds `{key}` = {v}");
                }
                if !(key.starts_with("out/") || key.starts_with("in/")) {
                    got.insert((p as u32, key), v);
                }
            }
        }
        if got != want {
            let wrong: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .map(|(k, v)| format!("{k:?}: want {v}, got {:?}", got.get(k)))
                .chain(
                    got.iter()
                        .filter(|(k, _)| !want.contains_key(*k))
                        .map(|(k, v)| format!("{k:?}: unexpected {v}")),
                )
                .take(10)
                .collect();
            panic!(
                "{ctx}: effects differ from the model:\n  {}",
                wrong.join("\n  ")
            );
        }
        // Poison records are dead letters of `ta` on their partition, flaky ones are not.
        for (id, p) in &stored_ids {
            let dead = self.stores[*p]
                .current
                .borrow()
                .dead
                .keys()
                .any(|(t, _, o)| {
                    t == "ta" && {
                        let depots = self.logs[*p].depots.borrow();
                        depots
                            .get("a")
                            .and_then(|l| l.get(*o as usize))
                            .map(|r| record_id(r))
                            == Some(*id)
                    }
                });
            let is_a = self.logs[*p]
                .depots
                .borrow()
                .get("a")
                .is_some_and(|l| l.iter().any(|r| record_id(r) == *id));
            assert_eq!(
                dead,
                is_a && id.is_multiple_of(POISON),
                "{ctx}: record {id}: dead letter {dead}"
            );
        }
        assert_eq!(
            self.open_trees.load(Ordering::Acquire),
            0,
            "{ctx}: event trees still alive"
        );
        // Replicated: the log alone restores exactly what the live partition holds.
        for (p, rlog) in self.replicated.iter().flatten().enumerate() {
            let (log, store) = self.restore(rlog);
            assert_eq!(
                *log.depots.borrow(),
                *self.logs[p].depots.borrow(),
                "{ctx}: partition {p}: depot log restored from the replicated log differs"
            );
            assert_eq!(
                store.current.borrow().entries,
                self.stores[p].current.borrow().entries,
                "{ctx}: partition {p}: PStates restored from the replicated log differ"
            );
        }
        let _ = FLAKY;
    }
}

/// Failovers of replicated seeds, over the whole run.
static FAILOVERS: AtomicUsize = AtomicUsize::new(0);

fn run_seed(seed: u64) {
    let mut sim = Sim::new(seed);
    sim.scenario();
    sim.quiesce();
    FAILOVERS.fetch_add(sim.failovers as usize, Ordering::Relaxed);
    for p in sim.parts.iter_mut().flatten() {
        p.make_durable().expect("no faults now");
        let _ = p.exec.take_writes();
    }
    sim.check();
}

/// The seeds to run: `SIM_SEED`, or `0..SIM_SEEDS` (default 300).
fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(300);
            (0..n).collect()
        }
    }
}

#[test]
fn partitions_keep_exactly_once_under_crashes() {
    let seeds = seeds();
    let many = seeds.len() > 10;
    for seed in seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        if let Err(e) = result {
            eprintln!("simulation failed at seed {seed}; replay with SIM_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
    if many {
        // Full hop queues (mem::SIM_HOP_QUEUE_MAX) made sources hold hops, often.
        assert!(mem::HOPS_REFUSED.load(std::sync::atomic::Ordering::Relaxed) > 100);
        // Replicated seeds saw their logs lose answers, cut entries and go down.
        assert!(mem::LOG_FAULTS.load(std::sync::atomic::Ordering::Relaxed) > 100);
        assert!(FAILOVERS.load(std::sync::atomic::Ordering::Relaxed) > 100);
    }
}

#[test]
fn cluster_ownership_keeps_one_writer_under_crashes() {
    let seeds = seeds();
    let many = seeds.len() > 10;
    let mut seen: std::collections::HashMap<&str, u64> = Default::default();
    for seed in seeds {
        match std::panic::catch_unwind(|| cluster::run_seed(seed)) {
            Ok(counts) => {
                for (k, v) in counts {
                    *seen.entry(k).or_default() += v;
                }
            }
            Err(e) => {
                eprintln!("cluster simulation failed at seed {seed}; replay with SIM_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("cluster simulation: {seen:?}");
    if many {
        for case in [
            "claim",
            "claim lost",
            "zombie fenced",
            "write in doubt",
            "retry ok",
            "crash",
        ] {
            assert!(
                seen.get(case).copied().unwrap_or(0) > 10,
                "{case}: {seen:?}"
            );
        }
    }
}
