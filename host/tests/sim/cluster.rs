//! Deterministic simulation of cluster ownership (`sluice::cluster::fence`) over the
//! in-memory model of JetStream (`cluster::log::MemoryLog`: exact expected-last-sequence,
//! dedup before the check). A seeded scheduler lets three hosts claim two partitions, write
//! small and multi-part entries, lose answers, see the log stop mid-pipeline, crash (losing
//! all memory, including writes in doubt) and pause as zombies that resume with a stale
//! owner. Checked against a model, at every step and at the end:
//! - a write answered `Ok` is stored, whole, at the answered sequence, by the epoch that was
//!   current: no write of an old epoch succeeds after a newer claim is stored;
//! - a host that claims restores every acknowledged entry, each exactly once, in order;
//! - the log reads back without damage (no entry of an old epoch after a claim; unfinished
//!   multi-part entries of a dead writer are dropped, never half-applied);
//! - at the end, a live owner's state equals a fresh restore of its log.
//!
//! `SIM_SEEDS` / `SIM_SEED` choose seeds as for the partition simulation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use sluice::cluster::fence::{ClaimError, Entry, LogView, Owner, WriteError};
use sluice::cluster::log::{
    EntryKind, LogError, MemoryLog, Mode, Outgoing, PublishFailure, ReplicatedLog, Stored,
};

use super::rng::Rng;

const HOSTS: usize = 3;
const PARTITIONS: usize = 2;
const STEPS: usize = 300;
const PART_BYTES: usize = 8;

/// A host's copy of one partition it owns: the owner and what it applied.
struct Owned {
    owner: Owner<dyn ReplicatedLog>,
    /// Entry bodies in log order (restored, then written).
    state: Vec<Vec<u8>>,
    /// The body of a write whose answer was lost.
    in_doubt: Option<Vec<u8>>,
}

#[derive(Default)]
struct Host {
    paused: bool,
    owned: BTreeMap<usize, Owned>,
}

struct ClusterSim {
    rng: Rng,
    logs: Vec<Arc<MemoryLog>>,
    hosts: Vec<Host>,
    /// Per partition: bodies acknowledged, by the sequence they were answered with.
    acked: Vec<BTreeMap<u64, Vec<u8>>>,
    next_body: u64,
    /// Counts of what happened, to show the schedule covered each case.
    pub seen: HashMap<&'static str, u64>,
}

fn restore(log: &MemoryLog, view: &mut LogView, state: &mut Vec<Vec<u8>>) {
    view.catch_up(log, |e: &Entry| {
        state.push(e.body.clone());
        Ok(())
    })
    .expect("the log reads back without damage");
}

impl ClusterSim {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0xc1u64),
            logs: (0..PARTITIONS).map(|_| Arc::default()).collect(),
            hosts: (0..HOSTS).map(|_| Host::default()).collect(),
            acked: vec![BTreeMap::new(); PARTITIONS],
            next_body: 0,
            seen: HashMap::new(),
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.seen.entry(what).or_default() += 1;
    }

    fn body(&mut self) -> Vec<u8> {
        self.next_body += 1;
        // Some entries span several parts.
        let len = 8 + self.rng.below(3 * PART_BYTES as u64) as usize;
        let mut b = format!("{:08}", self.next_body).into_bytes();
        b.resize(len, b'.');
        b
    }

    /// The highest epoch stored in partition `p`'s log.
    fn stored_epoch(&self, p: usize) -> u64 {
        let mut view = LogView::default();
        let log = &self.logs[p];
        let mode = log_mode_up(log);
        view.catch_up(&**log, |_| Ok(())).expect("readable");
        log.set_mode(mode);
        view.epoch().map_or(0, |e| e.number)
    }

    fn step(&mut self) {
        let h = self.rng.below(HOSTS as u64) as usize;
        let p = self.rng.below(PARTITIONS as u64) as usize;
        match self.rng.below(100) {
            0..=39 => self.write(h, p),
            40..=49 => self.retry(h, p),
            50..=64 => self.claim(h, p),
            65..=69 => {
                self.hosts[h] = Host::default();
                self.count("crash");
            }
            70..=76 => {
                self.hosts[h].paused = !self.hosts[h].paused;
                self.count("pause/resume");
            }
            _ => self.fault(p),
        }
    }

    fn fault(&mut self, p: usize) {
        let mode = match self.rng.below(6) {
            0 => Mode::Down,
            1 => Mode::LoseAnswers,
            2 => Mode::StoreOnly(self.rng.below(3) as usize),
            _ => Mode::Up,
        };
        self.logs[p].set_mode(mode);
        self.count("log fault");
    }

    fn write(&mut self, h: usize, p: usize) {
        if self.hosts[h].paused {
            return;
        }
        let body = self.body();
        let kind = if self.rng.chance(50) {
            EntryKind::In
        } else {
            EntryKind::Fx
        };
        let Some(owned) = self.hosts[h].owned.get_mut(&p) else {
            return;
        };
        let epoch = owned.owner.epoch();
        match owned.owner.write(kind, &body) {
            Ok(seq) => {
                owned.state.push(body.clone());
                self.acknowledged(p, seq, epoch, body);
                self.count("write ok");
            }
            Err(WriteError::Unavailable(_)) => {
                if owned.in_doubt.is_none() {
                    owned.in_doubt = Some(body);
                }
                self.count("write in doubt");
            }
            Err(WriteError::Fenced { .. }) => {
                self.hosts[h].owned.remove(&p);
                self.count("zombie fenced");
            }
            Err(WriteError::Refused(why)) => panic!("refused: {why}"),
        }
    }

    fn retry(&mut self, h: usize, p: usize) {
        if self.hosts[h].paused {
            return;
        }
        let Some(owned) = self.hosts[h].owned.get_mut(&p) else {
            return;
        };
        if !owned.owner.is_uncertain() {
            return;
        }
        let epoch = owned.owner.epoch();
        match owned.owner.retry() {
            Ok(seq) => {
                let body = owned.in_doubt.take().expect("a write in doubt");
                owned.state.push(body.clone());
                self.acknowledged(p, seq, epoch, body);
                self.count("retry ok");
            }
            Err(WriteError::Unavailable(_)) => {}
            Err(WriteError::Fenced { .. }) => {
                self.hosts[h].owned.remove(&p);
                self.count("retry fenced");
            }
            Err(WriteError::Refused(why)) => panic!("refused: {why}"),
        }
    }

    /// Checks an `Ok` write against the model and records it: the log holds it, whole, at
    /// the answered sequence, as an entry of the writer's epoch (an answer to a retry may
    /// come after a later claim: the entry was stored before it, and the reader's check that
    /// no old-epoch entry follows a claim covers the rest).
    fn acknowledged(&mut self, p: usize, seq: u64, epoch: u64, body: Vec<u8>) {
        let log = &self.logs[p];
        let mode = log_mode_up(log);
        let mut found = None;
        LogView::default()
            .catch_up(&**log, |e| {
                if e.seq == seq {
                    found = Some((e.epoch, e.body.clone()));
                }
                Ok(())
            })
            .expect("the log reads back without damage");
        log.set_mode(mode);
        assert_eq!(
            found,
            Some((epoch, body.clone())),
            "partition {p}: the write acked at {seq} is not there"
        );
        assert!(
            self.acked[p].insert(seq, body).is_none(),
            "sequence {seq} answered twice"
        );
    }

    fn claim(&mut self, h: usize, p: usize) {
        if self.hosts[h].paused || self.hosts[h].owned.contains_key(&p) {
            return;
        }
        // Sometimes a rival host claims between this claimant's read and its publish.
        let rival = (self.rng.chance(30))
            .then(|| (h + 1 + self.rng.below(HOSTS as u64 - 1) as usize) % HOSTS)
            .filter(|&r| !self.hosts[r].paused && !self.hosts[r].owned.contains_key(&p));
        // The host judged the current owner dead (liveness is a hint; the fence decides).
        let over = self.stored_epoch(p);
        #[allow(clippy::arc_with_non_send_sync)] // one thread; Owner takes an Arc
        let racing = Arc::new(Racing {
            inner: Arc::clone(&self.logs[p]),
            over,
            rival: Mutex::new(rival.map(|r| format!("h{r}"))),
            rival_won: Mutex::new(None),
        });
        let log: Arc<dyn ReplicatedLog> = Arc::clone(&racing) as Arc<dyn ReplicatedLog>;
        let claimed = claim_restoring(log, &format!("h{h}"), over);
        if let (Some(r), Some(won)) = (rival, racing.rival_won.lock().unwrap().take()) {
            self.check_restored(p, &won.state);
            self.hosts[r].owned.insert(p, won);
            self.count("rival claim");
        }
        match claimed {
            Ok(owned) => {
                self.check_restored(p, &owned.state);
                self.hosts[h].owned.insert(p, owned);
                self.count("claim");
            }
            Err(ClaimError::Lost { .. }) => self.count("claim lost"),
            Err(ClaimError::View(e)) => {
                assert!(
                    !matches!(e, sluice::cluster::fence::ViewError::Damaged { .. }),
                    "{e}"
                );
                self.count("claim unavailable");
            }
        }
    }

    /// A restore holds every acknowledged body exactly once, in sequence order.
    fn check_restored(&self, p: usize, state: &[Vec<u8>]) {
        let position: HashMap<&[u8], usize> = state
            .iter()
            .enumerate()
            .map(|(i, b)| (b.as_slice(), i))
            .collect();
        assert_eq!(
            position.len(),
            state.len(),
            "partition {p}: an entry restored twice"
        );
        let mut last = None;
        for body in self.acked[p].values() {
            let at = *position
                .get(body.as_slice())
                .unwrap_or_else(|| panic!("partition {p}: acked entry {body:?} lost"));
            assert!(last < Some(at), "partition {p}: acked entries out of order");
            last = Some(at);
        }
    }

    fn finish(&mut self) {
        for log in &self.logs {
            log.set_mode(Mode::Up);
        }
        for p in 0..PARTITIONS {
            // The owner of the current epoch, if it is a live host, settles its write in
            // doubt (the log is up: the retry is answered).
            let current = format!("h{}", self.current_host(p).unwrap_or(usize::MAX));
            for h in 0..HOSTS {
                if format!("h{h}") != current {
                    continue;
                }
                let Some(owned) = self.hosts[h].owned.get_mut(&p) else {
                    continue;
                };
                if owned.owner.is_uncertain() {
                    let epoch = owned.owner.epoch();
                    let seq = owned
                        .owner
                        .retry()
                        .expect("retry settles once the log is up");
                    let body = owned.in_doubt.take().unwrap();
                    owned.state.push(body.clone());
                    self.acknowledged(p, seq, epoch, body);
                }
            }
            let mut view = LogView::default();
            let mut state = Vec::new();
            restore(&self.logs[p], &mut view, &mut state);
            self.check_restored(p, &state);
            // Acked sequences hold the acked bodies (whole entries end there).
            let mut at_seq = BTreeMap::new();
            LogView::default()
                .catch_up(&*self.logs[p], |e| {
                    at_seq.insert(e.seq, e.body.clone());
                    Ok(())
                })
                .unwrap();
            for (seq, body) in &self.acked[p] {
                assert_eq!(at_seq.get(seq), Some(body), "partition {p} at {seq}");
            }
            // The current owner holds exactly what the log holds.
            for h in 0..HOSTS {
                if format!("h{h}") != current {
                    continue;
                }
                if let Some(owned) = self.hosts[h].owned.get(&p) {
                    assert_eq!(owned.state, state, "partition {p}: owner h{h} diverged");
                    self.count("owner checked");
                }
            }
        }
    }

    /// The host of partition `p`'s current epoch.
    fn current_host(&self, p: usize) -> Option<usize> {
        let mut view = LogView::default();
        view.catch_up(&*self.logs[p], |_| Ok(())).expect("readable");
        view.epoch()
            .and_then(|e| e.host.strip_prefix('h'))
            .and_then(|h| h.parse().ok())
    }
}

/// Claims with a fresh view, restoring the state from the log.
fn claim_restoring(
    log: Arc<dyn ReplicatedLog>,
    host: &str,
    over: u64,
) -> Result<Owned, ClaimError> {
    let mut view = LogView::default();
    let mut state = Vec::new();
    let owner = Owner::claim(log, host, &mut view, over, |e| {
        state.push(e.body.clone());
        Ok(())
    })?;
    Ok(Owned {
        owner: owner.with_part_bytes(PART_BYTES),
        state,
        in_doubt: None,
    })
}

/// A log through which a rival host claims just before the next publish (the interleaving a
/// sequential schedule cannot otherwise reach: two claimants that read the same tail).
struct Racing {
    inner: Arc<MemoryLog>,
    over: u64,
    rival: Mutex<Option<String>>,
    rival_won: Mutex<Option<Owned>>,
}

impl ReplicatedLog for Racing {
    fn publish(&self, expected_last: u64, entries: &[Outgoing]) -> Result<(), PublishFailure> {
        if let Some(rival) = self.rival.lock().unwrap().take() {
            let inner: Arc<dyn ReplicatedLog> = Arc::clone(&self.inner) as _;
            *self.rival_won.lock().unwrap() = claim_restoring(inner, &rival, self.over).ok();
        }
        self.inner.publish(expected_last, entries)
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Stored>, LogError> {
        self.inner.read(from, max)
    }

    fn last_seq(&self) -> Result<u64, LogError> {
        self.inner.last_seq()
    }
}

/// Sets the log up for a checker's read; answers the mode to put back.
fn log_mode_up(log: &MemoryLog) -> Mode {
    let mode = log.mode();
    log.set_mode(Mode::Up);
    mode
}

pub fn run_seed(seed: u64) -> HashMap<&'static str, u64> {
    let mut sim = ClusterSim::new(seed);
    for _ in 0..STEPS {
        sim.step();
    }
    sim.finish();
    sim.seen
}
