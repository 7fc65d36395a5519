//! In-memory implementations of the partition seams, with crash injection at every commit
//! boundary. For the simulation test only.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use sluice::cluster::log::{
    LogError, MemoryLog, Mode, Outgoing, PublishFailure, ReplicatedLog, Stored,
};
use sluice::cluster::replicated::Retry;
use sluice::partition::hops::Hop;
use sluice::partition::seams::{
    Clock, Commit, HopTransport, KeyFound, KeyedRecord, PartitionLog, PartitionStore, Progress,
    StorageError,
};
use sluice::partition::work::PeerMessage;
use sluice::partition::Work;
use sluice::pstate::engine::Table;
use sluice::pstate::store::DeadLetter;
use sluice::value::Value;

use super::rng::Rng;

/// What an injected fault does to the operation it hits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The process dies before the operation takes effect.
    Before,
    /// The operation takes effect (as durable as asked), then the process dies.
    After,
}

/// Decides, at each commit boundary, whether a crash happens there.
pub struct Faults {
    pub rng: Rng,
    /// Chance per operation, in 1/1000.
    pub per_mille: u32,
    pub enabled: bool,
    /// Set when a fault fired; the scheduler turns it into a crash.
    pub fired: bool,
}

impl Faults {
    fn hit(&mut self) -> Option<Fault> {
        if !self.enabled || self.rng.below(1000) >= u64::from(self.per_mille) {
            return None;
        }
        self.fired = true;
        Some(if self.rng.chance(50) {
            Fault::Before
        } else {
            Fault::After
        })
    }
}

pub type SharedFaults = Rc<RefCell<Faults>>;

fn crash() -> StorageError {
    StorageError::new("simulated crash")
}

/// A depot log: durable as soon as an append returns (or, for a crash after it, anyway).
pub struct MemLog {
    pub depots: RefCell<BTreeMap<String, Vec<Vec<u8>>>>,
    /// Idempotency keys, stored with their records (never expire here).
    pub keys: RefCell<HashMap<(String, String), KeyFound>>,
    pub faults: SharedFaults,
}

impl PartitionLog for MemLog {
    fn append(
        &self,
        records: &[(&str, &[u8])],
        keys: &[KeyedRecord<'_>],
        next: &mut HashMap<String, u64>,
        _time_ms: u64,
    ) -> Result<Vec<u64>, StorageError> {
        let fault = self.faults.borrow_mut().hit();
        if fault == Some(Fault::Before) {
            return Err(crash());
        }
        let mut depots = self.depots.borrow_mut();
        let mut offsets = Vec::new();
        for (d, r) in records {
            let log = depots.entry(d.to_string()).or_default();
            offsets.push(log.len() as u64);
            log.push(r.to_vec());
            next.insert(d.to_string(), log.len() as u64);
        }
        let mut stored = self.keys.borrow_mut();
        for k in keys {
            stored.insert(
                (records[k.index].0.to_string(), k.key.to_string()),
                KeyFound {
                    offset: offsets[k.index],
                    fingerprint: k.fingerprint,
                },
            );
        }
        if fault == Some(Fault::After) {
            return Err(crash());
        }
        Ok(offsets)
    }

    fn read(
        &self,
        depot: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let depots = self.depots.borrow();
        let Some(log) = depots.get(depot) else {
            return Ok(Vec::new());
        };
        Ok(log
            .iter()
            .enumerate()
            .skip(from as usize)
            .take(limit)
            .map(|(o, r)| (o as u64, r.clone()))
            .collect())
    }

    fn find_key(&self, depot: &str, key: &str) -> Result<Option<KeyFound>, StorageError> {
        Ok(self
            .keys
            .borrow()
            .get(&(depot.to_string(), key.to_string()))
            .copied())
    }

    fn end(&self, depot: &str) -> Result<u64, StorageError> {
        Ok(self
            .depots
            .borrow()
            .get(depot)
            .map_or(0, |l| l.len() as u64))
    }
}

/// A partition's committed state.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub entries: BTreeMap<Vec<u8>, Value>,
    pub offsets: BTreeMap<(String, String), u64>,
    pub outbox: BTreeMap<(u32, u64), Vec<u8>>,
    pub hops_next: BTreeMap<u32, u64>,
    pub hops_applied: BTreeMap<u32, u64>,
    pub dead: BTreeMap<(String, String, u64), DeadLetter>,
    pub position: u64,
}

impl State {
    fn apply(&mut self, c: &Commit) {
        for ((_, t, k), v) in &c.writes {
            assert_eq!(*t, Table::Main);
            match v {
                Some(v) => self.entries.insert(k.clone(), v.clone()),
                None => self.entries.remove(k),
            };
        }
        self.offsets
            .extend(c.offsets.iter().map(|(k, v)| (k.clone(), *v)));
        for (t, s, e) in &c.outbox_put {
            self.outbox.insert((*t, *s), e.clone());
        }
        for (t, below) in &c.outbox_trim {
            self.outbox.retain(|(tt, s), _| tt != t || s >= below);
        }
        if c.position > 0 {
            assert_eq!(c.position, self.position + 1, "commit positions are dense");
            self.position = c.position;
        }
        self.hops_next.extend(&c.hops_next);
        self.hops_applied.extend(&c.hops_applied);
        for (t, d, o) in &c.dead_letters_remove {
            self.dead.remove(&(t.clone(), d.clone(), *o));
        }
        for d in &c.dead_letters {
            self.dead
                .insert((d.topology.clone(), d.depot.clone(), d.offset), d.clone());
        }
    }
}

/// A store whose non-durable commits a process crash loses.
pub struct MemStore {
    pub durable: RefCell<State>,
    pub current: RefCell<State>,
    pub faults: SharedFaults,
}

impl MemStore {
    /// A process crash: what was not durable is gone.
    pub fn crash(&self) {
        *self.current.borrow_mut() = self.durable.borrow().clone();
    }

    pub fn get(&self, key: &str) -> i64 {
        match self.current.borrow().entries.get(key.as_bytes()) {
            Some(Value::Integer(i)) => i128::from(*i) as i64,
            _ => 0,
        }
    }
}

impl PartitionStore for MemStore {
    fn progress(&self) -> Result<Progress, StorageError> {
        let s = self.current.borrow();
        Ok(Progress {
            offsets: s.offsets.clone(),
            outbox: s
                .outbox
                .iter()
                .map(|((t, q), e)| (*t, *q, e.clone()))
                .collect(),
            hops_next: s.hops_next.clone(),
            hops_applied: s.hops_applied.clone(),
            position: s.position,
        })
    }

    fn outbox_from(&self, target: u32, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        Ok(self
            .current
            .borrow()
            .outbox
            .range((target, from)..=(target, u64::MAX))
            .map(|((_, s), e)| (*s, e.clone()))
            .collect())
    }

    fn commit(&self, c: &Commit, durable: bool) -> Result<(), StorageError> {
        let fault = self.faults.borrow_mut().hit();
        if fault == Some(Fault::Before) {
            return Err(crash());
        }
        self.current.borrow_mut().apply(c);
        if durable {
            *self.durable.borrow_mut() = self.current.borrow().clone();
        }
        if fault == Some(Fault::After) {
            return Err(crash());
        }
        Ok(())
    }

    fn dead_letters(&self, topology: &str, limit: usize) -> Result<Vec<DeadLetter>, StorageError> {
        Ok(self
            .current
            .borrow()
            .dead
            .values()
            .filter(|d| d.topology == topology)
            .take(limit)
            .cloned()
            .collect())
    }
}

/// Every partition's queue (one FIFO each, as in the host).
pub type Inboxes = Rc<RefCell<Vec<VecDeque<Work>>>>;

pub struct MemTransport(pub Inboxes);

/// Hops one simulated queue takes: small, so sources hold hops often.
pub const SIM_HOP_QUEUE_MAX: usize = 3;

/// Hops refused by a full queue, over the whole run (the test checks holding happened).
pub static HOPS_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl HopTransport for MemTransport {
    fn send(&self, target: u32, message: PeerMessage) {
        self.0.borrow_mut()[target as usize].push_back(Work::Peer(message));
    }

    fn offer(&self, target: u32, hop: Hop) -> Result<(), Hop> {
        let mut inboxes = self.0.borrow_mut();
        let q = &mut inboxes[target as usize];
        let queued = q
            .iter()
            .filter(|w| matches!(w, Work::Peer(PeerMessage::Hop(_))))
            .count();
        if queued >= SIM_HOP_QUEUE_MAX {
            HOPS_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(hop);
        }
        q.push_back(Work::Peer(PeerMessage::Hop(hop)));
        Ok(())
    }
}

/// Simulated time, advanced by the scheduler.
#[derive(Default)]
pub struct SimClock(pub std::sync::atomic::AtomicU64);

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub fn entry_key(key: &str) -> (String, Table, Vec<u8>) {
    ("sim".to_string(), Table::Main, key.as_bytes().to_vec())
}

/// The partition log in replicated seeds: the in-memory model of JetStream, with the sim's
/// faults (an answer lost, retried into one entry; the log down past the retries, which
/// poisons the partition's seams and counts as a fault: the partition fails over).
pub struct FaultyLog {
    pub inner: MemoryLog,
    pub faults: SharedFaults,
    down_for: std::cell::Cell<u32>,
    /// The last publish had a fault injected: its retry gets none (so a retried write
    /// settles, and only an outage fails a partition over).
    faulted: std::cell::Cell<bool>,
}

/// Faults the replicated logs injected, over the whole run (the test checks they happened).
pub static LOG_FAULTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Retries of a write in doubt in the simulation (no pauses: time is simulated).
pub const SIM_RETRY: Retry = Retry {
    attempts: 2,
    within: std::time::Duration::MAX,
    pause: std::time::Duration::ZERO,
};

impl FaultyLog {
    pub fn new(faults: SharedFaults) -> Self {
        Self {
            inner: MemoryLog::default(),
            faults,
            down_for: std::cell::Cell::new(0),
            faulted: std::cell::Cell::new(false),
        }
    }

    /// The log answers again (a failover found it up).
    pub fn heal(&self) {
        self.down_for.set(0);
        self.inner.set_mode(Mode::Up);
    }
}

impl ReplicatedLog for FaultyLog {
    fn publish(&self, expected_last: u64, entries: &[Outgoing]) -> Result<(), PublishFailure> {
        let mut f = self.faults.borrow_mut();
        if self.down_for.get() > 0 {
            self.down_for.set(self.down_for.get() - 1);
            return Err(PublishFailure {
                stored: 0,
                error: LogError::Unavailable("simulated outage".into()),
            });
        }
        let quiet = !f.enabled || self.faulted.get();
        let mode = if quiet || f.rng.below(1000) >= u64::from(f.per_mille) {
            Mode::Up
        } else if f.rng.chance(50) {
            Mode::LoseAnswers
        } else if f.rng.chance(40) {
            // The first part stored, the rest not, no answer (a multi-part entry cut).
            Mode::StoreOnly(1)
        } else {
            // Down for the write and every retry: the partition fails over.
            f.fired = true;
            self.down_for.set(SIM_RETRY.attempts);
            Mode::Down
        };
        drop(f);
        if mode != Mode::Up {
            LOG_FAULTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.faulted.set(mode != Mode::Up);
        self.inner.set_mode(mode);
        let result = self.inner.publish(expected_last, entries);
        self.inner.set_mode(Mode::Up);
        result
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Stored>, LogError> {
        self.inner.read(from, max)
    }

    fn last_seq(&self) -> Result<u64, LogError> {
        self.inner.last_seq()
    }
}
