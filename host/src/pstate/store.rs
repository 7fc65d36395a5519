//! The PState store: one redb file per (module, partition) holding that partition's PState
//! entries, each topology's processed offsets, and its dead letters.
//!
//! Tables: `pstate/<name>`, `pstate/<name>/sub` and `pstate/<name>/size` hold the PState's
//! entries, subindexed elements and collection sizes as laid out in [`super::engine`] (keys in
//! the order-preserving encoding, values as CBOR); `offsets` maps `"<topology>/<depot>"` to the next depot offset that topology
//! has not yet finished; `dead-letters` maps `(topology, depot, offset)` to the failure.
//! Invariant: entries and offsets change only together, in one [`Batch`] commit, so the offsets
//! always describe exactly the records the entries reflect, in every committed state including
//! the one a crash falls back to (the depot log is the write-ahead log that replays the rest).

use std::collections::BTreeMap;
use std::path::Path;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};

use super::engine::Table;
use super::path::EncodedRange;
use crate::value::{from_cbor, to_cbor, Value};

const OFFSETS: TableDefinition<&str, u64> = TableDefinition::new("offsets");
/// Hops this partition sent and the target has not yet confirmed: seq → entry (CBOR).
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Per source partition, the highest hop seq applied here.
const HOPS_IN: TableDefinition<u32, u64> = TableDefinition::new("hops-in");
/// Counters: `hop-seq` is the next hop seq this partition assigns.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Per microbatch topology: this partition's prepared (not yet applied) writes.
const MB_PREPARED: TableDefinition<&str, &[u8]> = TableDefinition::new("microbatch-prepared");
/// Per microbatch topology: the last batch id applied here.
const MB_APPLIED: TableDefinition<&str, u64> = TableDefinition::new("microbatch-applied");
const DEAD_LETTERS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("dead-letters");

type EntryTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// The redb table holding one of a PState's tables (see [`super::engine`]).
pub fn table_name(pstate: &str, t: Table) -> String {
    match t {
        Table::Main => format!("pstate/{pstate}"),
        Table::Sub => format!("pstate/{pstate}/sub"),
        Table::Size => format!("pstate/{pstate}/size"),
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

fn offsets_key(topology: &str, depot: &str) -> String {
    format!("{topology}/{depot}")
}

/// A record a topology gave up on, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topology: String,
    pub depot: String,
    pub offset: u64,
    pub error_code: String,
    pub error: String,
    pub attempts: u32,
}

impl DeadLetter {
    pub fn new(
        topology: &str,
        depot: &str,
        offset: u64,
        code: &str,
        error: &str,
        attempts: u32,
    ) -> Self {
        Self {
            topology: topology.to_string(),
            depot: depot.to_string(),
            offset,
            error_code: code.to_string(),
            error: error.to_string(),
            attempts,
        }
    }
}

/// Writes not yet committed: `(pstate, table, key)` to the new value; `None` removes it.
pub type Overlay = BTreeMap<(String, Table, Vec<u8>), Option<Value>>;

/// Everything one partition-worker batch commits at once.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Overlay,
    /// `(topology, depot)` to the new processed offset.
    pub offsets: BTreeMap<(String, String), u64>,
    pub dead_letters: Vec<DeadLetter>,
    /// Dead letters resolved by a replay: (topology, depot, offset).
    pub dead_letters_remove: Vec<(String, String, u64)>,
    /// Hops sent by this batch: seq → entry (CBOR).
    pub outbox_put: Vec<(u64, Vec<u8>)>,
    /// Hops the targets confirmed.
    pub outbox_remove: Vec<u64>,
    /// Source partition → highest hop seq applied.
    pub hops_in: BTreeMap<u32, u64>,
    /// The next hop seq, when it moved.
    pub hop_seq: Option<u64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.offsets.is_empty()
            && self.dead_letters.is_empty()
            && self.dead_letters_remove.is_empty()
            && self.outbox_put.is_empty()
            && self.outbox_remove.is_empty()
            && self.hops_in.is_empty()
            && self.hop_seq.is_none()
    }
}

/// What a partition's hop bookkeeping holds at start.
#[derive(Debug, Default)]
pub struct HopState {
    pub outbox: Vec<(u64, Vec<u8>)>,
    pub hops_in: BTreeMap<u32, u64>,
    pub hop_seq: u64,
}

/// One partition's PState store.
pub struct PStateStore {
    db: Database,
}

impl PStateStore {
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        Ok(Self { db })
    }

    /// A snapshot of the last commit; never blocks the writer.
    pub fn begin_read(&self) -> Result<ReadTransaction, redb::Error> {
        Ok(self.db.begin_read()?)
    }

    /// The value under `key` in one table of `pstate`, in `snapshot`.
    pub fn get(
        snapshot: &ReadTransaction,
        pstate: &str,
        t: Table,
        key: &[u8],
    ) -> Result<Option<Value>, redb::Error> {
        let name = table_name(pstate, t);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        let table = match snapshot.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(key)? {
            Some(v) => Ok(Some(from_cbor(v.value()).map_err(|e| {
                redb::Error::Corrupted(format!("PState {pstate} holds an undecodable value: {e}"))
            })?)),
            None => Ok(None),
        }
    }

    /// Entries of one table whose key is `prefix ‖ suffix` with `suffix` in `range`, in key
    /// order (or reversed), at most `limit`, as `(suffix, value)`.
    pub fn scan(
        snapshot: &ReadTransaction,
        pstate: &str,
        t: Table,
        prefix: &[u8],
        range: &EncodedRange,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, redb::Error> {
        let name = table_name(pstate, t);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        let table = match snapshot.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let lo = match &range.start {
            Some((s, _)) => [prefix, s].concat(),
            None => prefix.to_vec(),
        };
        let hi = match &range.end {
            Some((e, _)) => Some([prefix, e].concat()),
            None => successor(prefix),
        };
        let iter = match &hi {
            Some(hi) => table.range::<&[u8]>(lo.as_slice()..=hi.as_slice())?,
            None => table.range::<&[u8]>(lo.as_slice()..)?,
        };
        let mut out = Vec::new();
        type Item<'a> = Result<
            (
                redb::AccessGuard<'a, &'static [u8]>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >;
        let mut push = |item: Item| -> Result<bool, redb::Error> {
            let (k, v) = item?;
            let k = k.value();
            if !k.starts_with(prefix) || !range.contains(&k[prefix.len()..]) {
                return Ok(true);
            }
            let v = from_cbor(v.value()).map_err(|e| {
                redb::Error::Corrupted(format!("PState {pstate} holds an undecodable value: {e}"))
            })?;
            out.push((k[prefix.len()..].to_vec(), v));
            Ok(out.len() < limit)
        };
        if reverse {
            for item in iter.rev() {
                if !push(item)? {
                    break;
                }
            }
        } else {
            for item in iter {
                if !push(item)? {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The next offset of `depot` that `topology` has not finished (0 when it has none).
    pub fn processed_offset(&self, topology: &str, depot: &str) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(OFFSETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(table
            .get(offsets_key(topology, depot).as_str())?
            .map_or(0, |v| v.value()))
    }

    /// The outbox, the applied-hop watermarks and the hop counter.
    pub fn hop_state(&self) -> Result<HopState, redb::Error> {
        let txn = self.db.begin_read()?;
        let mut st = HopState::default();
        match txn.open_table(OUTBOX) {
            Ok(t) => {
                for item in t.iter()? {
                    let (k, v) = item?;
                    st.outbox.push((k.value(), v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match txn.open_table(HOPS_IN) {
            Ok(t) => {
                for item in t.iter()? {
                    let (k, v) = item?;
                    st.hops_in.insert(k.value(), v.value());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match txn.open_table(META) {
            Ok(t) => st.hop_seq = t.get("hop-seq")?.map_or(0, |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(st)
    }

    /// Commits a batch in one transaction. `durable` fsyncs it (and every earlier commit);
    /// otherwise it is visible at once but survives a crash only once a later durable commit
    /// happened — which is safe because the depot log replays whatever a crash dropped.
    pub fn commit(&self, batch: Batch, durable: bool) -> Result<(), redb::Error> {
        if batch.is_empty() && !durable {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        write_batch(&txn, &batch)?;
        txn.commit()?;
        Ok(())
    }

    /// Phase one of a microbatch commit: stores this partition's writes for batch `id` of
    /// `topology` durably, without applying them.
    pub fn prepare_microbatch(
        &self,
        topology: &str,
        id: u64,
        entries: &Overlay,
        dead: &[DeadLetter],
    ) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(MB_PREPARED)?
            .insert(topology, encode_prepared(id, entries, dead).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Phase two: applies the prepared writes of batch `id` (once: a batch already applied is
    /// skipped) and records `id` as applied, in one durable transaction. Returns whether it
    /// applied anything.
    pub fn apply_microbatch(&self, topology: &str, id: u64) -> Result<bool, redb::Error> {
        if self.microbatch_applied(topology)? >= id {
            return Ok(false);
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
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
        let batch = Batch {
            entries,
            dead_letters,
            ..Batch::default()
        };
        write_batch(&txn, &batch)?;
        txn.open_table(MB_APPLIED)?.insert(topology, id)?;
        txn.open_table(MB_PREPARED)?.remove(topology)?;
        txn.commit()?;
        Ok(true)
    }

    /// The last microbatch of `topology` applied on this partition (0: none).
    pub fn microbatch_applied(&self, topology: &str) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        match txn.open_table(MB_APPLIED) {
            Ok(t) => Ok(t.get(topology)?.map_or(0, |v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `limit` dead letters of `topology`, oldest offsets first.
    pub fn dead_letters(
        &self,
        topology: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(DEAD_LETTERS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in table.range((topology, "", 0u64)..)? {
            let (k, v) = item?;
            let (t, depot, offset) = k.value();
            if t != topology || out.len() >= limit {
                break;
            }
            let v = from_cbor(v.value()).unwrap_or(Value::Null);
            let field = |name: &str| match &v {
                Value::Map(es) => es
                    .iter()
                    .find(|(k, _)| *k == Value::Text(name.into()))
                    .map(|(_, v)| v.clone()),
                _ => None,
            };
            out.push(DeadLetter {
                topology: t.to_string(),
                depot: depot.to_string(),
                offset,
                error_code: match field("code") {
                    Some(Value::Text(s)) => s,
                    _ => String::new(),
                },
                error: match field("error") {
                    Some(Value::Text(s)) => s,
                    _ => String::new(),
                },
                attempts: field("attempts")
                    .and_then(|v| crate::value::as_i64(&v))
                    .unwrap_or(0) as u32,
            });
        }
        Ok(out)
    }
}

/// Writes a batch's changes into an open write transaction.
fn write_batch(txn: &redb::WriteTransaction, batch: &Batch) -> Result<(), redb::Error> {
    {
        let mut current: Option<((String, Table), EntryTable)> = None;
        for ((pstate, t, key), value) in &batch.entries {
            if current
                .as_ref()
                .is_none_or(|((n, tt), _)| n != pstate || tt != t)
            {
                let name = table_name(pstate, *t);
                let table = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name))?;
                current = Some(((pstate.clone(), *t), table));
            }
            let (_, table) = current.as_mut().expect("opened above");
            match value {
                Some(v) => {
                    table.insert(key.as_slice(), to_cbor(v).as_slice())?;
                }
                None => {
                    table.remove(key.as_slice())?;
                }
            }
        }
        drop(current);
        let mut offsets = txn.open_table(OFFSETS)?;
        for ((topology, depot), offset) in &batch.offsets {
            offsets.insert(offsets_key(topology, depot).as_str(), *offset)?;
        }
        if !batch.outbox_put.is_empty() || !batch.outbox_remove.is_empty() {
            let mut outbox = txn.open_table(OUTBOX)?;
            for (seq, entry) in &batch.outbox_put {
                outbox.insert(*seq, entry.as_slice())?;
            }
            for seq in &batch.outbox_remove {
                outbox.remove(*seq)?;
            }
        }
        if !batch.hops_in.is_empty() {
            let mut hops_in = txn.open_table(HOPS_IN)?;
            for (source, seq) in &batch.hops_in {
                hops_in.insert(*source, *seq)?;
            }
        }
        if let Some(seq) = batch.hop_seq {
            txn.open_table(META)?.insert("hop-seq", seq)?;
        }
        let mut dead = txn.open_table(DEAD_LETTERS)?;
        for (topology, depot, offset) in &batch.dead_letters_remove {
            dead.remove((topology.as_str(), depot.as_str(), *offset))?;
        }
        for d in &batch.dead_letters {
            let v = Value::Map(vec![
                (
                    Value::Text("code".into()),
                    Value::Text(d.error_code.clone()),
                ),
                (Value::Text("error".into()), Value::Text(d.error.clone())),
                (
                    Value::Text("attempts".into()),
                    Value::Integer(d.attempts.into()),
                ),
            ]);
            dead.insert(
                (d.topology.as_str(), d.depot.as_str(), d.offset),
                to_cbor(&v).as_slice(),
            )?;
        }
    }
    Ok(())
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
