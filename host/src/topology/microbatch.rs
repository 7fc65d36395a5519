//! The microbatch coordinator: one thread per module that has microbatch topologies.
//!
//! Each round, per topology, it *plans* batch `id`: for every partition and depot the range
//! `[end of the previous batch, current end of the depot log)`, recorded durably before anything
//! runs, so a retry after a crash runs the same records under the same id. Then:
//! 1. **run**: every partition runs the handler on its ranges in a session of its own (nothing
//!    is written yet); hops the handlers emit are routed by the coordinator to their target
//!    partitions, whose hop handlers run in the same batch, until no hop is left;
//! 2. **prepare**: every partition stores its writes for the batch durably, unapplied;
//! 3. **decide**: the coordinator records the batch as decided (durably) — the commit point;
//! 4. **apply**: every partition applies its prepared writes and records the batch id as
//!    applied, in one durable transaction (a partition that already applied it skips it);
//!    once all have, the `full` acks of the batch's records are answered (read-your-writes).
//!
//! A **replay batch** (`replay_dead_letters`) runs every partition's dead letters of the
//! topology instead of new ranges, through the same steps: its ranges are empty (start = end =
//! the previous batch's end), so the next batch starts where the last one ended; applying it
//! removes the dead letters that succeeded, in the same transaction as their effects.
//!
//! Correctness: before the decision no partition has applied anything, and a crash makes the
//! coordinator re-run the planned batch from step 1 (prepared writes of an undecided batch are
//! simply overwritten). After the decision every partition holds its prepared writes, and
//! recovery finishes step 4, which is idempotent by batch id. So each batch's effects are
//! present exactly once or not at all, on every partition, after any crash.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::Topology;
use crate::depot::log::DepotLog;
use crate::partition::work::{BatchHop, BatchStep, Work};
use crate::value::{as_i64, from_cbor, to_cbor, Value};

const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");
/// How long the coordinator waits for a partition's answer to one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Planned,
    Decided,
    Done,
}

/// One batch: id, state, and `(partition, depot, start, end)` ranges.
#[derive(Debug, Clone)]
struct Plan {
    id: u64,
    state: State,
    ranges: Vec<(u32, String, u64, u64)>,
    /// A replay batch: runs the dead letters, not the ranges.
    replay: bool,
}

/// A request to run a microbatch topology's dead letters again; answered with
/// `(handlers run, dead letters the replay left)`.
pub struct ReplayRequest {
    pub topology: String,
    pub reply: tokio::sync::oneshot::Sender<Result<(u64, u64), String>>,
}

impl Plan {
    fn encode(&self) -> Vec<u8> {
        let state = match self.state {
            State::Planned => 0,
            State::Decided => 1,
            State::Done => 2,
        };
        let ranges = self
            .ranges
            .iter()
            .map(|(p, d, s, e)| {
                Value::Array(vec![
                    Value::Integer((*p).into()),
                    Value::Text(d.clone()),
                    Value::Integer((*s).into()),
                    Value::Integer((*e).into()),
                ])
            })
            .collect();
        to_cbor(&Value::Array(vec![
            Value::Integer(self.id.into()),
            Value::Integer(state.into()),
            Value::Array(ranges),
            Value::Bool(self.replay),
        ]))
    }

    fn decode(bytes: &[u8]) -> Option<Plan> {
        let Value::Array(parts) = from_cbor(bytes).ok()? else {
            return None;
        };
        let (id, state, ranges, replay) = match parts.as_slice() {
            [id, state, Value::Array(r), Value::Bool(b)] => (id, state, r, *b),
            [id, state, Value::Array(r)] => (id, state, r, false),
            _ => return None,
        };
        let state = match as_i64(state)? {
            0 => State::Planned,
            1 => State::Decided,
            _ => State::Done,
        };
        let mut out = Vec::new();
        for r in ranges {
            let Value::Array(f) = r else { return None };
            let [p, Value::Text(d), s, e] = f.as_slice() else {
                return None;
            };
            out.push((
                as_i64(p)? as u32,
                d.clone(),
                as_i64(s)? as u64,
                as_i64(e)? as u64,
            ));
        }
        Some(Plan {
            id: as_i64(id)? as u64,
            state,
            ranges: out,
            replay,
        })
    }

    fn ranges_of(&self, p: u32) -> Vec<(String, u64, u64)> {
        self.ranges
            .iter()
            .filter(|r| r.0 == p)
            .map(|(_, d, s, e)| (d.clone(), *s, *e))
            .collect()
    }
}

/// See the module docs.
pub struct Coordinator {
    pub module: Arc<str>,
    pub topologies: Vec<Topology>,
    pub partitions: u32,
    pub logs: Vec<Arc<DepotLog>>,
    pub peers: Arc<Vec<Sender<Work>>>,
    pub db: Database,
    pub interval: Duration,
    /// The most records of one depot partition one batch takes.
    pub batch_records_max: u64,
    pub stop: Arc<AtomicBool>,
    /// Held for writing while a batch is applied on the partitions; queries take it for
    /// reading while they open their snapshots, so they see a batch on all partitions or on
    /// none.
    pub apply_gate: Arc<std::sync::RwLock<()>>,
    /// Dead-letter replays asked for (`Module::replay_dead_letters`).
    pub replays: std::sync::mpsc::Receiver<ReplayRequest>,
}

impl Coordinator {
    pub fn open_db(path: &Path) -> Result<Database, redb::Error> {
        Ok(Database::create(path)?)
    }

    pub fn run(self) {
        while !self.stop.load(Ordering::Acquire) {
            let mut busy = false;
            while let Ok(r) = self.replays.try_recv() {
                busy = true;
                let answer = match self.topologies.iter().find(|t| t.name == r.topology) {
                    Some(t) => self.replay(t),
                    None => Err(format!("`{}` is not a microbatch topology", r.topology)),
                };
                let _ = r.reply.send(answer);
            }
            for t in &self.topologies {
                match self.round(t) {
                    Ok(ran) => busy |= ran,
                    Err(e) => {
                        tracing::error!(
                            module = &*self.module,
                            topology = t.name,
                            "microbatch failed, retrying: {e}"
                        );
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            if !busy {
                std::thread::sleep(self.interval);
            }
        }
    }

    fn load(&self, topology: &str) -> Result<Option<Plan>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = match txn.open_table(PLANS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let v = table.get(topology).map_err(|e| e.to_string())?;
        Ok(v.and_then(|v| Plan::decode(v.value())))
    }

    fn save(&self, topology: &str, plan: &Plan) -> Result<(), String> {
        let e = |e: redb::Error| e.to_string();
        let mut txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|x| e(x.into()))?;
        txn.open_table(PLANS)
            .map_err(|x| e(x.into()))?
            .insert(topology, plan.encode().as_slice())
            .map_err(|x| e(x.into()))?;
        txn.commit().map_err(|x| e(x.into()))
    }

    /// Finishes an interrupted batch or runs a new one; returns whether anything ran.
    fn round(&self, t: &Topology) -> Result<bool, String> {
        let mut plan = self.load(&t.name)?;
        if let Some(p) = &mut plan {
            match p.state {
                State::Planned => {
                    self.execute(t, p)?;
                    return Ok(true);
                }
                State::Decided => {
                    self.apply(t, p)?;
                    return Ok(true);
                }
                State::Done => {}
            }
        }
        let prev: BTreeMap<(u32, String), u64> = plan
            .iter()
            .flat_map(|p| p.ranges.iter().map(|(p, d, _, e)| ((*p, d.clone()), *e)))
            .collect();
        let mut ranges = Vec::new();
        let mut any = false;
        for p in 0..self.partitions {
            for d in &t.depots {
                let start = prev.get(&(p, d.clone())).copied().unwrap_or(0);
                let end = self.logs[p as usize]
                    .end_offset(d)
                    .map_err(|e| e.to_string())?;
                // A bounded batch: a backlog is taken in several batches, each of a size
                // a partition can run and prepare in one go.
                let end = end
                    .max(start)
                    .min(start.saturating_add(self.batch_records_max));
                any |= end > start;
                ranges.push((p, d.clone(), start, end));
            }
        }
        if !any {
            return Ok(false);
        }
        let mut next = Plan {
            id: plan.map_or(1, |p| p.id + 1),
            state: State::Planned,
            ranges,
            replay: false,
        };
        self.save(&t.name, &next)?;
        self.execute(t, &mut next)?;
        Ok(true)
    }

    /// Finishes an interrupted batch, then runs a replay batch; answers (handlers run, dead
    /// letters left by the replay).
    fn replay(&self, t: &Topology) -> Result<(u64, u64), String> {
        if self.load(&t.name)?.is_some_and(|p| p.state != State::Done) {
            self.round(t)?;
        }
        let plan = self.load(&t.name)?;
        let ranges = plan
            .iter()
            .flat_map(|p| p.ranges.iter().map(|(p, d, _, e)| (*p, d.clone(), *e, *e)))
            .collect();
        let mut next = Plan {
            id: plan.map_or(1, |p| p.id + 1),
            state: State::Planned,
            ranges,
            replay: true,
        };
        self.save(&t.name, &next)?;
        self.execute(t, &mut next)
    }

    /// Sends one step to some partitions and gathers their answers: the hops they emit and
    /// the sum of their counts.
    fn step(
        &self,
        t: &Topology,
        id: u64,
        steps: Vec<(u32, BatchStep)>,
    ) -> Result<(Vec<BatchHop>, u64), String> {
        let (tx, rx) = channel();
        let n = steps.len();
        for (p, step) in steps {
            self.peers[p as usize]
                .send(Work::Batch {
                    topology: t.name.clone(),
                    id,
                    step,
                    reply: tx.clone(),
                })
                .map_err(|_| format!("partition {p} is not running"))?;
        }
        let (mut hops, mut count) = (Vec::new(), 0);
        for _ in 0..n {
            let r = rx
                .recv_timeout(STEP_TIMEOUT)
                .map_err(|_| "a partition did not answer".to_string())?;
            if let Some(e) = r.error {
                return Err(format!("partition {}: {e}", r.partition));
            }
            hops.extend(r.hops);
            count += r.count;
        }
        Ok((hops, count))
    }

    /// Runs, prepares, decides and applies a planned batch; answers (handlers a replay ran
    /// that succeeded, dead letters the batch left).
    fn execute(&self, t: &Topology, plan: &mut Plan) -> Result<(u64, u64), String> {
        let all: Vec<u32> = (0..self.partitions).collect();
        let run = |p: u32| match plan.replay {
            true => BatchStep::RunDeadLetters,
            false => BatchStep::Run(plan.ranges_of(p)),
        };
        let (mut hops, ran) = self.step(t, plan.id, all.iter().map(|&p| (p, run(p))).collect())?;
        while !hops.is_empty() {
            let mut by_target: BTreeMap<u32, Vec<BatchHop>> = BTreeMap::new();
            for h in hops {
                by_target.entry(h.target).or_default().push(h);
            }
            hops = self
                .step(
                    t,
                    plan.id,
                    by_target
                        .into_iter()
                        .map(|(p, h)| (p, BatchStep::Hops(h)))
                        .collect(),
                )?
                .0;
        }
        let (_, dead) = self.step(
            t,
            plan.id,
            all.iter().map(|&p| (p, BatchStep::Prepare)).collect(),
        )?;
        plan.state = State::Decided;
        self.save(&t.name, plan)?;
        self.apply(t, plan)?;
        Ok((ran.saturating_sub(dead), dead))
    }

    fn apply(&self, t: &Topology, plan: &mut Plan) -> Result<(), String> {
        let all: Vec<u32> = (0..self.partitions).collect();
        {
            let _gate = self.apply_gate.write().expect("poisoned");
            self.step(
                t,
                plan.id,
                all.iter().map(|&p| (p, BatchStep::Apply)).collect(),
            )?;
        }
        plan.state = State::Done;
        self.save(&t.name, plan)?;
        crate::metrics::inc(
            "sluice_microbatches_total",
            &[("module", &self.module), ("topology", &t.name)],
        );
        let settle = all
            .iter()
            .map(|&p| (p, BatchStep::Settle(plan.ranges_of(p))))
            .collect();
        self.step(t, plan.id, settle)?;
        Ok(())
    }
}
