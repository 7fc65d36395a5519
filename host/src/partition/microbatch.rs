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
use super::dead_letters::DeadHop;
use super::execute::handler_imports;
use super::progress::{write_dead_letters, write_position};
use super::seams::{Commit, PartitionLog, PartitionStore};
use super::work::{BatchHop, BatchStep};
use super::worker::Channels;
use super::{Topology, TopologyKind};
use crate::cluster::replicated::{HostLog, HostStore};
use crate::pstate::engine::Table;
use crate::pstate::store::{write_entries, DeadLetter, Overlay};
use crate::pstate::{PStateStore, Session};
use crate::runtime::GuestInstance;
use crate::value::{as_i64, from_cbor, to_cbor, Value};

/// Per microbatch topology: this partition's prepared (not yet applied) writes.
const MB_PREPARED: TableDefinition<&str, &[u8]> = TableDefinition::new("microbatch-prepared");
/// Per microbatch topology: the last batch id applied here.
const MB_APPLIED: TableDefinition<&str, u64> = TableDefinition::new("microbatch-applied");

/// A microbatch in progress on this partition.
struct MbState {
    id: u64,
    session: Option<Session>,
    dead: Vec<DeadLetter>,
    /// Dead letters this batch runs again (a replay batch): removed when it applies.
    replaying: Vec<(String, String, u64)>,
}

/// Opens a microbatch's session, writing as the named microbatch topology.
pub type NewSession = Box<dyn Fn(&str) -> Session + Send>;

/// Microbatches in progress, by topology, and how to open a session for a new one.
#[derive(Default)]
pub struct MbStates {
    running: HashMap<String, MbState>,
    pub new_session: Option<NewSession>,
}

impl MbStates {
    /// Whether a batch of `topology` was run here and not applied yet.
    pub fn is_running(&self, topology: &str) -> bool {
        self.running.contains_key(topology)
    }
}

/// The partition as the host runs it.
/// Its seams are the local files, behind the partition's replicated log on a cluster (where
/// microbatches are refused: their steps below write the local store only).
pub type HostPartition = Partition<GuestInstance, HostLog, HostStore, Channels>;

impl HostPartition {
    /// Carries out one microbatch step on this partition; answers the hops to route and a
    /// count (handlers a replay runs, or dead letters a prepare holds; 0 otherwise).
    pub fn batch_step(
        &mut self,
        topology: &str,
        id: u64,
        step: BatchStep,
    ) -> Result<(Vec<BatchHop>, u64), String> {
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
                        replaying: Vec::new(),
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
                Ok((self.batch_run(&t, id, work)?, 0))
            }
            BatchStep::RunDeadLetters => self.batch_replay(&t, id),
            BatchStep::Hops(hops) => {
                let work = hops
                    .into_iter()
                    .map(|h| (h.depot, h.offset, h.handler, h.payload))
                    .collect();
                Ok((self.batch_run(&t, id, work)?, 0))
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
                let dead = (&st.dead[..], &st.replaying[..]);
                prepare_microbatch(&self.store.local, topology, id, &entries, dead)
                    .map_err(|e| e.to_string())?;
                Ok((Vec::new(), st.dead.len() as u64))
            }
            BatchStep::Apply => {
                let position = self.position + 1;
                let applied = apply_microbatch(&self.store.local, topology, id, position)
                    .map_err(|e| e.to_string())?;
                if let Some(entries) = applied {
                    self.position = position;
                    self.store
                        .local
                        .changes()
                        .published(&self.store.local, position, &entries);
                }
                self.mb.running.remove(topology);
                Ok((Vec::new(), 0))
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
                Ok((Vec::new(), 0))
            }
        }
    }

    /// Starts a replay batch: runs this partition's dead letters of `t` again (a depot record
    /// read from the log, a batch hop from its kept payload), in a batch of their own.
    fn batch_replay(&mut self, t: &Topology, id: u64) -> Result<(Vec<BatchHop>, u64), String> {
        let session = self
            .mb
            .new_session
            .as_ref()
            .map(|f| f(&t.name))
            .ok_or("this partition cannot run microbatches")?;
        // A bounded batch: more dead letters than a batch takes need more replays.
        let letters = self
            .store
            .dead_letters(&t.name, self.cfg.batch_records_max)
            .map_err(|e| e.to_string())?;
        let mut work = Vec::new();
        let mut replaying = Vec::new();
        for d in letters {
            let input = match &d.hop {
                Some(h) => Some((
                    Arc::from(h.origin_depot.as_str()),
                    h.origin_offset,
                    h.handler.clone(),
                    h.payload.clone(),
                )),
                None => self
                    .log
                    .read(&d.depot, d.offset, 1)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|(o, _)| *o == d.offset)
                    .map(|(o, r)| (Arc::from(d.depot.as_str()), o, t.handler.clone(), r)),
            };
            if let Some(w) = input {
                work.push(w);
                replaying.push(d.key());
            }
        }
        let ran = work.len() as u64;
        self.mb.running.insert(
            t.name.clone(),
            MbState {
                id,
                session: Some(session),
                dead: Vec::new(),
                replaying,
            },
        );
        Ok((self.batch_run(t, id, work)?, ran))
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
                Err((error, attempts)) => {
                    let (code, error) = (&error.code, format!("batch {id}: {}", error.message));
                    let dead = if handler == t.handler {
                        DeadLetter::new(&t.name, &depot, offset, code, &error, attempts)
                    } else {
                        // A batch hop: keyed by batch and arrival (unique on this
                        // partition), the hop itself kept for a replay.
                        let mut d = DeadLetter::new(
                            &t.name,
                            &format!("batch-hop:{handler}:batch-{id}"),
                            st.dead.len() as u64,
                            code,
                            &error,
                            attempts,
                        );
                        d.hop = Some(DeadHop {
                            handler: handler.clone(),
                            payload: input.clone(),
                            origin_depot: depot.to_string(),
                            origin_offset: offset,
                        });
                        d
                    };
                    st.dead.push(dead);
                }
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
    dead: (&[DeadLetter], &[(String, String, u64)]),
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
        let Some((pid, entries, (dead_letters, replayed))) =
            prepared.as_deref().and_then(decode_prepared)
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
        write_dead_letters(txn, &dead_letters, &replayed)?;
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

/// Dead letters a prepared batch adds, and those (replayed) it removes.
type PreparedDead = (Vec<DeadLetter>, Vec<(String, String, u64)>);

fn encode_key((topology, depot, offset): &(String, String, u64)) -> Value {
    Value::Array(vec![
        Value::Text(topology.clone()),
        Value::Text(depot.clone()),
        Value::Integer((*offset).into()),
    ])
}

fn decode_key(v: &Value) -> Option<(String, String, u64)> {
    let Value::Array(f) = v else { return None };
    match f.as_slice() {
        [Value::Text(t), Value::Text(d), o] => Some((t.clone(), d.clone(), as_i64(o)? as u64)),
        _ => None,
    }
}

fn encode_prepared(
    id: u64,
    entries: &Overlay,
    (dead, replayed): (&[DeadLetter], &[(String, String, u64)]),
) -> Vec<u8> {
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
        .map(|d| Value::Array(vec![encode_key(&d.key()), d.encode()]))
        .collect();
    to_cbor(&Value::Array(vec![
        Value::Integer(id.into()),
        Value::Array(entries),
        Value::Array(dead),
        Value::Array(replayed.iter().map(encode_key).collect()),
    ]))
}

fn decode_prepared(bytes: &[u8]) -> Option<(u64, Overlay, PreparedDead)> {
    let Value::Array(parts) = from_cbor(bytes).ok()? else {
        return None;
    };
    let (id, entries, dead, replayed) = match parts.as_slice() {
        [id, Value::Array(e), Value::Array(d), Value::Array(r)] => (id, e, d, &r[..]),
        // Written before replays existed.
        [id, Value::Array(e), Value::Array(d)] => (id, e, d, &[][..]),
        _ => return None,
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
        dls.push(match f.as_slice() {
            [key, v] => {
                let (t, d, o) = decode_key(key)?;
                DeadLetter::decode(&t, &d, o, v)
            }
            // Written before dead letters kept their hops.
            [tp, dp, off, code, err, att] => DeadLetter::new(
                &text(tp)?,
                &text(dp)?,
                as_i64(off)? as u64,
                &text(code)?,
                &text(err)?,
                as_i64(att)? as u32,
            ),
            _ => return None,
        });
    }
    let replayed = replayed
        .iter()
        .map(decode_key)
        .collect::<Option<Vec<_>>>()?;
    Some((as_i64(id)? as u64, overlay, (dls, replayed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_batches_keep_dead_hops_and_the_replayed_keys() {
        let mut overlay = Overlay::new();
        overlay.insert(
            ("p".into(), Table::Main, vec![1]),
            Some(Value::Integer(3.into())),
        );
        let mut d = DeadLetter::new("b", "batch-hop:h:batch-4", 0, "guest-error", "no", 1);
        d.hop = Some(DeadHop {
            handler: "h".into(),
            payload: vec![0xf6],
            origin_depot: "sends".into(),
            origin_offset: 9,
        });
        let replayed = vec![("b".to_string(), "sends".to_string(), 2)];
        let bytes = encode_prepared(4, &overlay, (&[d.clone()], &replayed));
        let (id, back, (dead, removed)) = decode_prepared(&bytes).unwrap();
        assert_eq!((id, back, dead, removed), (4, overlay, vec![d], replayed));
        // A batch prepared by the previous version (three parts, six-field dead letters).
        let old = to_cbor(&Value::Array(vec![
            Value::Integer(5.into()),
            Value::Array(vec![]),
            Value::Array(vec![Value::Array(vec![
                Value::Text("b".into()),
                Value::Text("sends".into()),
                Value::Integer(1.into()),
                Value::Text("trap".into()),
                Value::Text("boom".into()),
                Value::Integer(1.into()),
            ])]),
        ]));
        let (id, _, (dead, removed)) = decode_prepared(&old).unwrap();
        assert_eq!(
            (id, dead.len(), dead[0].offset, removed.len()),
            (5, 1, 1, 0)
        );
    }
}
