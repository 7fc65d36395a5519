//! The simulated module: native Rust handlers behind the [`Executor`] seam.
//!
//! Depot `a` (routed by the record's key) feeds topology `ta` (handler `on_a`: count the
//! record, hop to `chain1`, which counts and hops to `chain2`) and topology `tc` (`on_a2`:
//! count only); depot `b` (any partition) feeds `tb` (`on_b`: count, hop to `all` partitions'
//! `fan` and to `chain1`). Every hop of an ordered kind carries the source's per-pair
//! emission counter, which the target checks against its own: a hop lost, repeated or out of
//! order is recorded as a `violation/…` entry. Records with `id % POISON == 0` fail on `on_a`
//! permanently (a dead letter); records with `id % FLAKY == 0` trap on the first attempt of
//! every handler (their writes must roll back).

use std::collections::BTreeMap;
use std::rc::Rc;

use sluice::imports::{EmittedHop, HopDest};
use sluice::partition::seams::{Called, Executor};
use sluice::partition::{Topology, TopologyKind};
use sluice::pstate::store::Overlay;
use sluice::runtime::{GuestError, RecordCtx};
use sluice::value::{as_i64, from_cbor, to_cbor, Value};

use super::mem::{entry_key, MemStore};

pub const POISON: u64 = 37;
pub const FLAKY: u64 = 11;

pub fn topologies() -> Vec<Topology> {
    let t = |name: &str, depot: &str, handler: &str, hops: &[&str]| Topology {
        kind: TopologyKind::Stream,
        name: name.into(),
        depots: vec![depot.into()],
        handler: handler.into(),
        hop_handlers: hops.iter().map(|h| h.to_string()).collect(),
    };
    vec![
        t("ta", "a", "on_a", &["chain1", "chain2"]),
        t("tb", "b", "on_b", &["fan", "chain1", "chain2"]),
        t("tc", "a", "on_a2", &[]),
    ]
}

/// Where hop `salt` of record `id` goes.
pub fn place(id: u64, salt: u64, partitions: u32) -> u32 {
    let mut z = id
        .wrapping_mul(31)
        .wrapping_add(salt)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % u64::from(partitions)) as u32
}

pub fn record(id: u64) -> Vec<u8> {
    to_cbor(&Value::Array(vec![Value::Integer(id.into())]))
}

pub fn record_id(bytes: &[u8]) -> u64 {
    match from_cbor(bytes).expect("sim records are CBOR") {
        Value::Array(v) => as_i64(&v[0]).expect("an id") as u64,
        other => panic!("not a sim record: {other:?}"),
    }
}

pub struct SimExec {
    pub store: Rc<MemStore>,
    pub partition: u32,
    pub partitions: u32,
    batch: Overlay,
    record: Overlay,
    /// Attempts per (handler, id) in this incarnation, for the flaky records.
    attempts: BTreeMap<(String, u64), u32>,
    hops: Vec<EmittedHop>,
}

impl SimExec {
    pub fn new(store: Rc<MemStore>, partition: u32, partitions: u32) -> Self {
        Self {
            store,
            partition,
            partitions,
            batch: Overlay::new(),
            record: Overlay::new(),
            attempts: BTreeMap::new(),
            hops: Vec::new(),
        }
    }

    fn get(&self, key: &str) -> i64 {
        let k = entry_key(key);
        match self.record.get(&k).or_else(|| self.batch.get(&k)) {
            Some(Some(Value::Integer(i))) => i128::from(*i) as i64,
            Some(_) => 0,
            None => self.store.get(key),
        }
    }

    fn set(&mut self, key: &str, v: i64) {
        self.record
            .insert(entry_key(key), Some(Value::Integer(v.into())));
    }

    fn inc(&mut self, key: &str) {
        let v = self.get(key);
        self.set(key, v + 1);
    }

    /// Emits an ordered hop to `target`: `[id, source, n]` with n this pair's next counter.
    fn ordered_hop(&mut self, target: u32, handler: &str, id: u64) {
        let key = format!("out/{}/{target}", self.partition);
        let n = self.get(&key) + 1;
        self.set(&key, n);
        self.hops.push(EmittedHop {
            dest: HopDest::Partition(target),
            handler: handler.into(),
            payload: to_cbor(&Value::Array(vec![
                Value::Integer(id.into()),
                Value::Integer(self.partition.into()),
                Value::Integer(n.into()),
            ])),
        });
    }

    /// Checks an ordered hop's counter against this pair's last one.
    fn check_order(&mut self, source: u64, n: i64) {
        let key = format!("in/{source}/{}", self.partition);
        let last = self.get(&key);
        if n != last + 1 {
            self.inc(&format!(
                "violation/order/{source}->{}/expected-{}-got-{n}",
                self.partition,
                last + 1
            ));
        }
        self.set(&key, n);
    }
}

fn ints(input: &[u8]) -> Vec<i64> {
    match from_cbor(input).expect("CBOR") {
        Value::Array(v) => v.iter().map(|x| as_i64(x).expect("int")).collect(),
        other => panic!("unexpected input {other:?}"),
    }
}

impl Executor for SimExec {
    fn call(
        &mut self,
        _topology: &str,
        handler: &str,
        input: &[u8],
        ctx: RecordCtx<'_>,
    ) -> Result<Called, GuestError> {
        self.hops.clear();
        let args = ints(input);
        let id = args[0] as u64;
        let tries = self.attempts.entry((handler.to_string(), id)).or_insert(0);
        *tries += 1;
        if id.is_multiple_of(FLAKY) && *tries == 1 {
            // Writes before a failure must roll back.
            self.inc(&format!("leak/{handler}/{id}"));
            return Err(GuestError {
                code: "trap".into(),
                message: "flaky on purpose".into(),
            });
        }
        let me = self.partition;
        match handler {
            "on_a" => {
                if id.is_multiple_of(POISON) {
                    self.inc(&format!("leak/{handler}/{id}"));
                    return Err(GuestError {
                        code: "guest-error".into(),
                        message: "poison on purpose".into(),
                    });
                }
                self.inc(&format!("rec/{id}"));
                self.ordered_hop(place(id, 1, self.partitions), "chain1", id);
            }
            "on_a2" => self.inc(&format!("rec2/{id}")),
            "on_b" => {
                self.inc(&format!("rec/{id}"));
                self.hops.push(EmittedHop {
                    dest: HopDest::All,
                    handler: "fan".into(),
                    payload: to_cbor(&Value::Array(vec![Value::Integer(id.into())])),
                });
                self.ordered_hop(place(id, 1, self.partitions), "chain1", id);
            }
            "chain1" => {
                self.check_order(args[1] as u64, args[2]);
                self.inc(&format!("c1/{id}"));
                self.ordered_hop(place(id, 2, self.partitions), "chain2", id);
            }
            "chain2" => {
                self.check_order(args[1] as u64, args[2]);
                self.inc(&format!("c2/{id}"));
            }
            "fan" => self.inc(&format!("fan/{id}/{me}")),
            other => panic!("no handler {other}"),
        }
        let _ = ctx;
        Ok(Called {
            ack: Some(to_cbor(&Value::Integer(1.into()))),
            hops: std::mem::take(&mut self.hops),
        })
    }

    fn end_record(&mut self, keep: bool) {
        let record = std::mem::take(&mut self.record);
        if keep {
            self.batch.extend(record);
        }
    }

    fn take_writes(&mut self) -> Overlay {
        self.record.clear();
        std::mem::take(&mut self.batch)
    }
}
