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
        ]))
    }

    fn decode(bytes: &[u8]) -> Option<Plan> {
        let Value::Array(parts) = from_cbor(bytes).ok()? else {
            return None;
        };
        let [id, state, Value::Array(ranges)] = parts.as_slice() else {
            return None;
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
}

impl Coordinator {
    pub fn open_db(path: &Path) -> Result<Database, redb::Error> {
        Ok(Database::create(path)?)
    }

    pub fn run(self) {
        while !self.stop.load(Ordering::Acquire) {
            let mut busy = false;
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
        };
        self.save(&t.name, &next)?;
        self.execute(t, &mut next)?;
        Ok(true)
    }

    /// Sends one step to some partitions and gathers their answers (and the hops they emit).
    fn step(
        &self,
        t: &Topology,
        id: u64,
        steps: Vec<(u32, BatchStep)>,
    ) -> Result<Vec<BatchHop>, String> {
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
        let mut hops = Vec::new();
        for _ in 0..n {
            let r = rx
                .recv_timeout(STEP_TIMEOUT)
                .map_err(|_| "a partition did not answer".to_string())?;
            if let Some(e) = r.error {
                return Err(format!("partition {}: {e}", r.partition));
            }
            hops.extend(r.hops);
        }
        Ok(hops)
    }

    fn execute(&self, t: &Topology, plan: &mut Plan) -> Result<(), String> {
        let all: Vec<u32> = (0..self.partitions).collect();
        let mut hops = self.step(
            t,
            plan.id,
            all.iter()
                .map(|&p| (p, BatchStep::Run(plan.ranges_of(p))))
                .collect(),
        )?;
        while !hops.is_empty() {
            let mut by_target: BTreeMap<u32, Vec<BatchHop>> = BTreeMap::new();
            for h in hops {
                by_target.entry(h.target).or_default().push(h);
            }
            hops = self.step(
                t,
                plan.id,
                by_target
                    .into_iter()
                    .map(|(p, h)| (p, BatchStep::Hops(h)))
                    .collect(),
            )?;
        }
        self.step(
            t,
            plan.id,
            all.iter().map(|&p| (p, BatchStep::Prepare)).collect(),
        )?;
        plan.state = State::Decided;
        self.save(&t.name, plan)?;
        self.apply(t, plan)
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
