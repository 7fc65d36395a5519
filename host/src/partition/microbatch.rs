//! The partition's side of microbatches (the coordinator is `topology::microbatch`).
//!
//! A microbatch runs in a session of its own (its writes stay apart from stream writes until
//! applied); **prepare** stores them durably in `microbatch-prepared`, unapplied; **apply**
//! writes them into the PState tables and records the batch id in `microbatch-applied`, in
//! one durable transaction, at most once per id. Tables live in the partition's `pstate.redb`.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition};

use super::core::Partition;
use super::execute::handler_imports;
use super::progress::{write_dead_letters, write_position};
use super::seams::{Commit, PartitionStore};
use super::work::{BatchHop, BatchStep};
use super::worker::Channels;
use super::{Topology, TopologyKind};
use crate::depot::log::DepotLog;
use crate::pstate::engine::Table;
use crate::pstate::store::{write_entries, DeadLetter, Overlay};
use crate::pstate::{PStateStore, Session};
use crate::runtime::GuestInstance;
use crate::value::{from_cbor, to_cbor, Value};

/// Per microbatch topology: this partition's prepared (not yet applied) writes.
const MB_PREPARED: TableDefinition<&str, &[u8]> = TableDefinition::new("microbatch-prepared");
/// Per microbatch topology: the last batch id applied here.
const MB_APPLIED: TableDefinition<&str, u64> = TableDefinition::new("microbatch-applied");

/// A microbatch in progress on this partition.
struct MbState {
    id: u64,
    session: Option<Session>,
    dead: Vec<DeadLetter>,
}

/// Opens a microbatch's session, writing as the named microbatch topology.
pub type NewSession = Box<dyn Fn(&str) -> Session + Send>;

/// Microbatches in progress, by topology, and how to open a session for a new one.
#[derive(Default)]
pub struct MbStates {
    running: HashMap<String, MbState>,
    pub new_session: Option<NewSession>,
}

/// The partition as the host runs it.
pub type HostPartition = Partition<GuestInstance, Arc<DepotLog>, Arc<PStateStore>, Channels>;

impl HostPartition {
    /// Carries out one microbatch step on this partition.
    pub fn batch_step(
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
                let session = self
                    .mb
                    .new_session
                    .as_ref()
                    .map(|f| f(topology))
                    .ok_or("this partition cannot run microbatches")?;
                self.mb.running.insert(
                    topology.to_string(),
                    MbState {
                        id,
                        session: Some(session),
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
                                (end - from).min(self.cfg.batch_records_max as u64) as usize,
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
                    .running
                    .get_mut(topology)
                    .filter(|s| s.id == id)
                    .ok_or("prepare of a batch this partition did not run")?;
                let mut session = st.session.take().ok_or("batch prepared twice")?;
                let entries = session.take_writes();
                prepare_microbatch(&self.store, topology, id, &entries, &st.dead)
                    .map_err(|e| e.to_string())?;
                Ok(Vec::new())
            }
            BatchStep::Apply => {
                let position = self.position + 1;
                let applied = apply_microbatch(&self.store, topology, id, position)
                    .map_err(|e| e.to_string())?;
                if let Some(entries) = applied {
                    self.position = position;
                    self.store
                        .changes()
                        .published(&self.store, position, &entries);
                }
                self.mb.running.remove(topology);
                Ok(Vec::new())
            }
            BatchStep::Settle(ranges) => {
                // The batch's progress, for lag metrics only (the batch itself is recorded
                // as applied by `Apply`; recovery never reads these offsets for microbatches).
                let mut progress = Commit::default();
                for (d, _, e) in &ranges {
                    let o = progress
                        .offsets
                        .entry((topology.to_string(), d.clone()))
                        .or_insert(0);
                    *o = (*o).max(*e);
                }
                if !progress.offsets.is_empty() {
                    self.store
                        .commit(&progress, false)
                        .map_err(|e| e.to_string())?;
                    self.flush.dirty = true;
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
            .running
            .remove(&t.name)
            .filter(|s| s.id == id)
            .ok_or("hops for a batch this partition is not running")?;
        let session = st.session.take().ok_or("hops after prepare")?;
        let stream_session = handler_imports(&mut self.exec)
            .session_mut()
            .replace(session);
        let mut out = Vec::new();
        for (depot, offset, handler, input) in work {
            let ctx = self.ctx(&depot, offset, Some(id));
            match self.run_handler(t, &handler, &input, ctx) {
                Ok((_, emitted)) => {
                    for e in emitted {
                        for target in self.targets(&e.dest) {
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
        let session = std::mem::replace(
            handler_imports(&mut self.exec).session_mut(),
            stream_session,
        );
        if let Some(e) = handler_imports(&mut self.exec).take_storage_fault() {
            return Err(format!("batch {id}: a read failed: {e}"));
        }
        st.session = session;
        self.mb.running.insert(t.name.clone(), st);
        Ok(out)
    }
}

/// Phase one of a microbatch commit: stores this partition's writes for batch `id` of
/// `topology` durably, without applying them.
fn prepare_microbatch(
    store: &PStateStore,
    topology: &str,
    id: u64,
    entries: &Overlay,
    dead: &[DeadLetter],
) -> Result<(), redb::Error> {
    store.write(true, |txn| {
        txn.open_table(MB_PREPARED)?
            .insert(topology, encode_prepared(id, entries, dead).as_slice())?;
        Ok(())
    })
}

/// Phase two: applies the prepared writes of batch `id` (once: a batch already applied is
/// skipped) and records `id` as applied, in one durable transaction that is the partition's
/// commit at `position`. Returns the writes applied (`None`: applied before).
fn apply_microbatch(
    store: &PStateStore,
    topology: &str,
    id: u64,
    position: u64,
) -> Result<Option<Overlay>, redb::Error> {
    if microbatch_applied(store, topology)? >= id {
        return Ok(None);
    }
    let mut applied = None;
    store.write(true, |txn| {
        let prepared = {
            let t = txn.open_table(MB_PREPARED)?;
            let v = t.get(topology)?.map(|v| v.value().to_vec());
            v
        };
        let Some((pid, entries, dead_letters)) = prepared.as_deref().and_then(decode_prepared)
        else {
            return Err(redb::Error::Corrupted(format!(
                "microbatch {id} of `{topology}` was decided but this partition has no prepared writes"
            )));
        };
        if pid != id {
            return Err(redb::Error::Corrupted(format!(
                "microbatch {id} of `{topology}` was decided but this partition prepared batch {pid}"
            )));
        }
        write_entries(txn, &entries)?;
        write_dead_letters(txn, &dead_letters, &[])?;
        write_position(txn, position)?;
        txn.open_table(MB_APPLIED)?.insert(topology, id)?;
        txn.open_table(MB_PREPARED)?.remove(topology)?;
        applied = Some(entries);
        Ok(())
    })?;
    Ok(applied)
}

/// The last microbatch of `topology` applied on this partition (0: none).
fn microbatch_applied(store: &PStateStore, topology: &str) -> Result<u64, redb::Error> {
    let txn = store.begin_read()?;
    match txn.open_table(MB_APPLIED) {
        Ok(t) => Ok(t.get(topology)?.map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn tag(table: Table) -> i64 {
    match table {
        Table::Main => 0,
        Table::Sub => 1,
        Table::Size => 2,
    }
}

fn untag(n: i64) -> Option<Table> {
    match n {
        0 => Some(Table::Main),
        1 => Some(Table::Sub),
        2 => Some(Table::Size),
        _ => None,
    }
}

fn encode_prepared(id: u64, entries: &Overlay, dead: &[DeadLetter]) -> Vec<u8> {
    let t = |s: &str| Value::Text(s.to_string());
    let entries = entries
        .iter()
        .map(|((pstate, table, key), v)| {
            Value::Array(vec![
                t(pstate),
                Value::Integer(tag(*table).into()),
                Value::Bytes(key.clone()),
                Value::Array(v.iter().cloned().collect()),
            ])
        })
        .collect();
    let dead = dead
        .iter()
        .map(|d| {
            Value::Array(vec![
                t(&d.topology),
                t(&d.depot),
                Value::Integer(d.offset.into()),
                t(&d.error_code),
                t(&d.error),
                Value::Integer(d.attempts.into()),
            ])
        })
        .collect();
    to_cbor(&Value::Array(vec![
        Value::Integer(id.into()),
        Value::Array(entries),
        Value::Array(dead),
    ]))
}

fn decode_prepared(bytes: &[u8]) -> Option<(u64, Overlay, Vec<DeadLetter>)> {
    use crate::value::as_i64;
    let Value::Array(parts) = from_cbor(bytes).ok()? else {
        return None;
    };
    let [id, Value::Array(entries), Value::Array(dead)] = parts.as_slice() else {
        return None;
    };
    let text = |v: &Value| match v {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    };
    let mut overlay = Overlay::new();
    for e in entries {
        let Value::Array(f) = e else { return None };
        let [p, tb, Value::Bytes(k), Value::Array(v)] = f.as_slice() else {
            return None;
        };
        overlay.insert(
            (text(p)?, untag(as_i64(tb)?)?, k.clone()),
            v.first().cloned(),
        );
    }
    let mut dls = Vec::new();
    for d in dead {
        let Value::Array(f) = d else { return None };
        let [tp, dp, off, code, err, att] = f.as_slice() else {
            return None;
        };
        dls.push(DeadLetter {
            topology: text(tp)?,
            depot: text(dp)?,
            offset: as_i64(off)? as u64,
            error_code: text(code)?,
            error: text(err)?,
            attempts: as_i64(att)? as u32,
        });
    }
    Some((as_i64(id)? as u64, overlay, dls))
}
