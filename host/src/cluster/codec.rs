//! The bodies of `In` and `Fx` entries: a partition's appended records and its commits, as
//! CBOR (CLUSTER.md §0.4: the log holds inputs *and* effects, so a new owner restores a
//! partition without running any guest code).
//!
//! Invariant: `decode(encode(x)) == x` for every input batch and every [`Commit`] (checked
//! below, field by field). PState values travel as their own CBOR bytes, so a value nested
//! as deep as a value may be still decodes inside the commit.

use std::collections::BTreeMap;

use crate::partition::dead_letters::DeadLetter;
use crate::partition::seams::{Commit, KeyedRecord};
use crate::pstate::engine::Table;
use crate::value::{from_cbor, to_cbor, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {what} entry: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

/// One depot-log append as stored in an `In` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inputs {
    /// `(depot, record CBOR)` in append order.
    pub records: Vec<(String, Vec<u8>)>,
    /// `(index in records, idempotency key, fingerprint)`.
    pub keys: Vec<(usize, String, u64)>,
    pub time_ms: u64,
}

impl Inputs {
    /// The keys in the form [`crate::partition::seams::PartitionLog::append`] takes.
    pub fn keyed(&self) -> Vec<KeyedRecord<'_>> {
        self.keys
            .iter()
            .map(|(index, key, fingerprint)| KeyedRecord {
                index: *index,
                key,
                fingerprint: *fingerprint,
            })
            .collect()
    }
}

fn int(n: u64) -> Value {
    Value::Integer(n.into())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

pub fn encode_inputs(records: &[(&str, &[u8])], keys: &[KeyedRecord<'_>], time_ms: u64) -> Vec<u8> {
    let records = records
        .iter()
        .map(|(d, r)| Value::Array(vec![text(d), Value::Bytes(r.to_vec())]))
        .collect();
    let keys = keys
        .iter()
        .map(|k| Value::Array(vec![int(k.index as u64), text(k.key), int(k.fingerprint)]))
        .collect();
    to_cbor(&Value::Array(vec![
        Value::Array(records),
        Value::Array(keys),
        int(time_ms),
    ]))
}

pub fn decode_inputs(bytes: &[u8]) -> Result<Inputs, CodecError> {
    let d = Decoder::new("In", bytes)?;
    let mut top = d.array(d.root.clone(), 3)?;
    let time_ms = d.u64(top.pop())?;
    let keys = d.list(top.pop())?;
    let records = d.list(top.pop())?;
    let mut out = Inputs {
        time_ms,
        ..Default::default()
    };
    for r in records {
        let mut r = d.array(r, 2)?;
        let record = d.bytes(r.pop())?;
        out.records.push((d.text(r.pop())?, record));
    }
    for k in keys {
        let mut k = d.array(k, 3)?;
        let fingerprint = d.u64(k.pop())?;
        let key = d.text(k.pop())?;
        out.keys.push((d.u64(k.pop())? as usize, key, fingerprint));
    }
    Ok(out)
}

fn table_code(t: Table) -> u64 {
    match t {
        Table::Main => 0,
        Table::Sub => 1,
        Table::Size => 2,
    }
}

fn u32_map(m: &BTreeMap<u32, u64>) -> Value {
    Value::Array(
        m.iter()
            .map(|(k, v)| Value::Array(vec![int(u64::from(*k)), int(*v)]))
            .collect(),
    )
}

pub fn encode_commit(c: &Commit) -> Vec<u8> {
    let writes = c
        .writes
        .iter()
        .map(|((pstate, table, key), value)| {
            Value::Array(vec![
                text(pstate),
                int(table_code(*table)),
                Value::Bytes(key.clone()),
                value
                    .as_ref()
                    .map_or(Value::Null, |v| Value::Bytes(to_cbor(v))),
            ])
        })
        .collect();
    let offsets = c
        .offsets
        .iter()
        .map(|((t, d), o)| Value::Array(vec![text(t), text(d), int(*o)]))
        .collect();
    let dead = c
        .dead_letters
        .iter()
        .map(|l| {
            Value::Array(vec![
                text(&l.topology),
                text(&l.depot),
                int(l.offset),
                l.encode(),
            ])
        })
        .collect();
    let removed = c
        .dead_letters_remove
        .iter()
        .map(|(t, d, o)| Value::Array(vec![text(t), text(d), int(*o)]))
        .collect();
    let outbox = c
        .outbox_put
        .iter()
        .map(|(t, s, e)| Value::Array(vec![int(u64::from(*t)), int(*s), Value::Bytes(e.clone())]))
        .collect();
    to_cbor(&Value::Array(vec![
        Value::Array(writes),
        Value::Array(offsets),
        Value::Array(dead),
        Value::Array(removed),
        Value::Array(outbox),
        u32_map(&c.outbox_trim),
        u32_map(&c.hops_next),
        u32_map(&c.hops_applied),
        int(c.position),
    ]))
}

pub fn decode_commit(bytes: &[u8]) -> Result<Commit, CodecError> {
    let d = Decoder::new("Fx", bytes)?;
    let mut top = d.array(d.root.clone(), 9)?;
    let mut c = Commit {
        position: d.u64(top.pop())?,
        ..Default::default()
    };
    c.hops_applied = d.u32_map(top.pop())?;
    c.hops_next = d.u32_map(top.pop())?;
    c.outbox_trim = d.u32_map(top.pop())?;
    for e in d.list(top.pop())? {
        let mut e = d.array(e, 3)?;
        let entry = d.bytes(e.pop())?;
        let seq = d.u64(e.pop())?;
        c.outbox_put.push((d.u32(e.pop())?, seq, entry));
    }
    for r in d.list(top.pop())? {
        let mut r = d.array(r, 3)?;
        let offset = d.u64(r.pop())?;
        let depot = d.text(r.pop())?;
        c.dead_letters_remove
            .push((d.text(r.pop())?, depot, offset));
    }
    for l in d.list(top.pop())? {
        let mut l = d.array(l, 4)?;
        let stored = l.pop().unwrap_or(Value::Null);
        let offset = d.u64(l.pop())?;
        let depot = d.text(l.pop())?;
        let topology = d.text(l.pop())?;
        c.dead_letters
            .push(DeadLetter::decode(&topology, &depot, offset, &stored));
    }
    for o in d.list(top.pop())? {
        let mut o = d.array(o, 3)?;
        let offset = d.u64(o.pop())?;
        let depot = d.text(o.pop())?;
        c.offsets.insert((d.text(o.pop())?, depot), offset);
    }
    for w in d.list(top.pop())? {
        let mut w = d.array(w, 4)?;
        let value = match w.pop() {
            Some(Value::Null) => None,
            v => {
                Some(from_cbor(&d.bytes(v)?).map_err(|e| d.error(format!("a PState value: {e}")))?)
            }
        };
        let key = d.bytes(w.pop())?;
        let table = match d.u64(w.pop())? {
            0 => Table::Main,
            1 => Table::Sub,
            2 => Table::Size,
            t => return Err(d.error(format!("table {t}"))),
        };
        c.writes.insert((d.text(w.pop())?, table, key), value);
    }
    Ok(c)
}

/// Typed access to a decoded entry, with errors naming the entry kind.
struct Decoder {
    what: &'static str,
    root: Value,
}

impl Decoder {
    fn new(what: &'static str, bytes: &[u8]) -> Result<Self, CodecError> {
        let root = from_cbor(bytes).map_err(|e| CodecError {
            what,
            reason: e.to_string(),
        })?;
        Ok(Self { what, root })
    }

    fn error(&self, reason: String) -> CodecError {
        CodecError {
            what: self.what,
            reason,
        }
    }

    /// An array of exactly `n` items.
    fn array(&self, v: Value, n: usize) -> Result<Vec<Value>, CodecError> {
        match v {
            Value::Array(a) if a.len() == n => Ok(a),
            other => Err(self.error(format!("expected {n} items, found {other:?}"))),
        }
    }

    fn list(&self, v: Option<Value>) -> Result<Vec<Value>, CodecError> {
        match v {
            Some(Value::Array(a)) => Ok(a),
            other => Err(self.error(format!("expected a list, found {other:?}"))),
        }
    }

    fn u64(&self, v: Option<Value>) -> Result<u64, CodecError> {
        match v {
            Some(Value::Integer(i)) => {
                u64::try_from(i128::from(i)).map_err(|_| self.error("a negative count".into()))
            }
            other => Err(self.error(format!("expected an integer, found {other:?}"))),
        }
    }

    fn u32(&self, v: Option<Value>) -> Result<u32, CodecError> {
        u32::try_from(self.u64(v)?).map_err(|_| self.error("a partition out of range".into()))
    }

    fn text(&self, v: Option<Value>) -> Result<String, CodecError> {
        match v {
            Some(Value::Text(s)) => Ok(s),
            other => Err(self.error(format!("expected text, found {other:?}"))),
        }
    }

    fn bytes(&self, v: Option<Value>) -> Result<Vec<u8>, CodecError> {
        match v {
            Some(Value::Bytes(b)) => Ok(b),
            other => Err(self.error(format!("expected bytes, found {other:?}"))),
        }
    }

    fn u32_map(&self, v: Option<Value>) -> Result<BTreeMap<u32, u64>, CodecError> {
        let mut out = BTreeMap::new();
        for pair in self.list(v)? {
            let mut pair = self.array(pair, 2)?;
            let value = self.u64(pair.pop())?;
            out.insert(self.u32(pair.pop())?, value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::dead_letters::DeadHop;

    #[test]
    fn inputs_round_trip() {
        let records: Vec<(&str, &[u8])> = vec![("words", b"\x63cat"), ("sentences", b"")];
        let keys = vec![KeyedRecord {
            index: 1,
            key: "k-1",
            fingerprint: u64::MAX,
        }];
        let back = decode_inputs(&encode_inputs(&records, &keys, 17)).unwrap();
        assert_eq!(
            back,
            Inputs {
                records: vec![
                    ("words".into(), b"\x63cat".to_vec()),
                    ("sentences".into(), Vec::new())
                ],
                keys: vec![(1, "k-1".into(), u64::MAX)],
                time_ms: 17,
            }
        );
        assert_eq!(back.keyed(), keys);
    }

    #[test]
    fn commits_round_trip_field_by_field() {
        let mut c = Commit {
            position: 42,
            ..Default::default()
        };
        // A value as deep as values may be.
        let mut deep = Value::Integer(1.into());
        for _ in 0..crate::value::NESTING_MAX - 1 {
            deep = Value::Array(vec![deep]);
        }
        c.writes
            .insert(("counts".into(), Table::Main, b"cat".to_vec()), Some(deep));
        c.writes
            .insert(("counts".into(), Table::Sub, b"dog".to_vec()), None);
        c.writes.insert(
            ("sizes".into(), Table::Size, vec![0, 255]),
            Some(Value::Integer(3.into())),
        );
        c.offsets.insert(("wc".into(), "words".into()), 9);
        let mut letter = DeadLetter::new("wc", "words", 4, "trap", "boom", 3);
        letter.hop = Some(DeadHop {
            handler: "on-word".into(),
            payload: vec![1, 2],
            origin_depot: "sentences".into(),
            origin_offset: 8,
        });
        c.dead_letters.push(letter);
        c.dead_letters_remove.push(("wc".into(), "words".into(), 2));
        c.outbox_put.push((3, 7, vec![9, 9]));
        c.outbox_trim.insert(3, 5);
        c.hops_next.insert(3, 8);
        c.hops_applied.insert(0, 11);
        let back = decode_commit(&encode_commit(&c)).unwrap();
        assert_eq!(back.writes, c.writes);
        assert_eq!(back.offsets, c.offsets);
        assert_eq!(back.dead_letters, c.dead_letters);
        assert_eq!(back.dead_letters_remove, c.dead_letters_remove);
        assert_eq!(back.outbox_put, c.outbox_put);
        assert_eq!(back.outbox_trim, c.outbox_trim);
        assert_eq!(back.hops_next, c.hops_next);
        assert_eq!(back.hops_applied, c.hops_applied);
        assert_eq!(back.position, 42);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        assert!(decode_commit(b"\xff").is_err());
        assert!(decode_commit(&to_cbor(&Value::Array(vec![]))).is_err());
        assert!(decode_inputs(&to_cbor(&Value::Text("x".into()))).is_err());
    }
}
