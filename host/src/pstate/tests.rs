//! Model-based tests: random transforms applied to a real PState (redb, sessions, commits,
//! rolled-back records) and to an in-memory model (one nested value per PState, driven by the
//! in-memory path engine), then random selects compared — including subindexed collections,
//! negative and large integers, empty and unicode strings. Seeds are fixed, so a failure
//! reproduces; the failing seed and step are in the message.

use std::sync::Arc;

use super::path::{self, Cmp, Navigator, Range, TransformOp};
use super::{Catalog, PStateStore, Schema, Session};
use crate::value::Value;

pub(crate) const PEOPLE: &str = "map<string, {n: int, tags: subindexed set<string>, m: subindexed map<int, string>, l: subindexed list<int>, plain: map<string, int>}>";
pub(crate) const BUCKETS: &str = "map<int, subindexed map<string, int>>";

/// xorshift64*: small, fixed, reproducible.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}
fn i(n: i64) -> Value {
    Value::Integer(n.into())
}

const STRS: &[&str] = &["", "a", "ab", "b", "é", "日本", "zz", "\u{0}x"];
const INTS: &[i64] = &[
    i64::MIN,
    -1_000_000_007,
    -2,
    -1,
    0,
    1,
    7,
    255,
    256,
    i64::MAX,
];

fn rand_str(r: &mut Rng) -> Value {
    t(STRS[r.below(STRS.len() as u64) as usize])
}
fn rand_int(r: &mut Rng) -> Value {
    i(*r.pick(INTS))
}
fn small_int(r: &mut Rng) -> i64 {
    r.below(7) as i64 - 3
}

fn rand_range(r: &mut Rng, key: fn(&mut Rng) -> Value) -> Range {
    Range {
        start: r.chance(60).then(|| key(r)),
        end: r.chance(60).then(|| key(r)),
        start_inclusive: r.chance(50),
        end_inclusive: r.chance(50),
        limit: r.chance(50).then(|| r.below(4)),
        reverse: r.chance(50),
    }
}

/// A random path into a value of `schema` (for selects).
pub(crate) fn select_path(r: &mut Rng, schema: &Schema, out: &mut Vec<Navigator>, depth: usize) {
    if depth > 4 || r.chance(15) {
        return;
    }
    let key_gen: fn(&mut Rng) -> Value = |r| {
        if r.chance(50) {
            rand_str(r)
        } else {
            rand_int(r)
        }
    };
    match schema {
        Schema::Map { key, value, .. } => {
            let kg: fn(&mut Rng) -> Value = if **key == Schema::Int {
                rand_int
            } else {
                rand_str
            };
            match r.below(9) {
                0 | 1 => {
                    out.push(Navigator::Key(kg(r)));
                    select_path(r, value, out, depth + 1);
                }
                2 => {
                    out.push(Navigator::Must(kg(r)));
                    select_path(r, value, out, depth + 1);
                }
                3 => out.push(Navigator::MapKeys),
                4 => {
                    out.push(Navigator::MapVals);
                    select_path(r, value, out, depth + 1);
                }
                5 => out.push(
                    r.pick(&[
                        Navigator::First,
                        Navigator::Last,
                        Navigator::All,
                        Navigator::Count,
                    ])
                    .clone(),
                ),
                6 => out.push(Navigator::Nth(r.below(4))),
                _ => {
                    out.push(Navigator::SortedRange(rand_range(r, kg)));
                    if r.chance(50) {
                        out.push(Navigator::MapVals);
                    }
                }
            }
        }
        Schema::Record(fields) => {
            let (name, fs) = r.pick(fields);
            out.push(Navigator::Key(t(name)));
            select_path(r, fs, out, depth + 1);
        }
        Schema::Set { .. } => match r.below(4) {
            0 => out.push(
                r.pick(&[
                    Navigator::First,
                    Navigator::Last,
                    Navigator::All,
                    Navigator::Count,
                ])
                .clone(),
            ),
            1 => out.push(Navigator::Nth(r.below(4))),
            2 => out.push(Navigator::SortedRange(rand_range(r, rand_str))),
            _ => {
                out.push(Navigator::All);
                out.push(Navigator::Filter(
                    *r.pick(&[Cmp::Eq, Cmp::Lt, Cmp::Ge]),
                    rand_str(r),
                ));
            }
        },
        Schema::List { .. } => match r.below(3) {
            0 => out.push(
                r.pick(&[
                    Navigator::First,
                    Navigator::Last,
                    Navigator::All,
                    Navigator::Count,
                ])
                .clone(),
            ),
            _ => out.push(Navigator::Nth(r.below(5))),
        },
        _ => match r.below(3) {
            0 => out.push(Navigator::NullToVal(key_gen(r))),
            1 => out.push(Navigator::Filter(
                *r.pick(&[Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Gt]),
                key_gen(r),
            )),
            _ => {}
        },
    }
}

fn rand_person(r: &mut Rng) -> Value {
    let mut fields = Vec::new();
    if r.chance(70) {
        fields.push((t("n"), rand_int(r)));
    }
    if r.chance(50) {
        fields.push((
            t("tags"),
            Value::Array((0..r.below(4)).map(|_| rand_str(r)).collect()),
        ));
    }
    if r.chance(50) {
        fields.push((
            t("m"),
            Value::Map(
                (0..r.below(4))
                    .map(|_| (rand_int(r), rand_str(r)))
                    .collect(),
            ),
        ));
    }
    if r.chance(50) {
        fields.push((
            t("l"),
            Value::Array((0..r.below(4)).map(|_| i(small_int(r))).collect()),
        ));
    }
    if r.chance(30) {
        fields.push((t("bogus"), i(1)));
    }
    Value::Map(fields)
}

/// A random transform on PEOPLE or BUCKETS (only shapes the stored engine supports).
pub(crate) fn rand_transform(r: &mut Rng) -> (&'static str, Vec<Navigator>, TransformOp) {
    if r.chance(25) {
        let top = Navigator::Key(i(*r.pick(&[-3, 0, 5, i64::MAX])));
        return match r.below(5) {
            0 => ("buckets", vec![top], TransformOp::Remove),
            1 => (
                "buckets",
                vec![top],
                TransformOp::Merge(Value::Map(vec![(rand_str(r), i(small_int(r)))])),
            ),
            2 => (
                "buckets",
                vec![top, Navigator::Key(rand_str(r))],
                TransformOp::Remove,
            ),
            3 => (
                "buckets",
                vec![top, Navigator::SortedRange(rand_range(r, rand_str))],
                TransformOp::Increment(1),
            ),
            _ => (
                "buckets",
                vec![top, Navigator::Key(rand_str(r))],
                TransformOp::Increment(small_int(r)),
            ),
        };
    }
    let top = if r.chance(50) {
        Navigator::Key(rand_str(r))
    } else {
        Navigator::Must(rand_str(r))
    };
    let f = |name: &str| Navigator::Key(t(name));
    match r.below(17) {
        0 => ("people", vec![top], TransformOp::Set(rand_person(r))),
        1 => ("people", vec![top], TransformOp::Remove),
        2 => (
            "people",
            vec![top, f("n")],
            TransformOp::Increment(small_int(r)),
        ),
        3 => (
            "people",
            vec![top, f("n")],
            TransformOp::Set(if r.chance(80) { rand_int(r) } else { t("oops") }),
        ),
        4 => (
            "people",
            vec![top, f("tags")],
            TransformOp::Insert(if r.chance(90) { rand_str(r) } else { i(1) }),
        ),
        5 => ("people", vec![top, f("tags")], TransformOp::Remove),
        6 => (
            "people",
            vec![
                top,
                f("tags"),
                Navigator::All,
                Navigator::Filter(Cmp::Eq, rand_str(r)),
            ],
            TransformOp::Remove,
        ),
        7 => (
            "people",
            vec![top, f("m"), Navigator::Key(rand_int(r))],
            TransformOp::Set(rand_str(r)),
        ),
        8 => (
            "people",
            vec![top, f("m"), Navigator::Key(rand_int(r))],
            TransformOp::Remove,
        ),
        9 => (
            "people",
            vec![top, f("m")],
            TransformOp::Merge(Value::Map(vec![(rand_int(r), rand_str(r))])),
        ),
        10 => (
            "people",
            vec![top, f("m"), Navigator::SortedRange(rand_range(r, rand_int))],
            TransformOp::Remove,
        ),
        11 => (
            "people",
            vec![top, f("l")],
            TransformOp::Push(i(small_int(r))),
        ),
        12 => (
            "people",
            vec![top, f("l"), Navigator::Nth(r.below(3))],
            TransformOp::Increment(1),
        ),
        13 => (
            "people",
            vec![top, f("plain"), Navigator::Key(rand_str(r))],
            TransformOp::Increment(small_int(r)),
        ),
        14 => ("people", vec![top, f("plain")], TransformOp::Remove),
        15 => (
            "people",
            vec![top, f("m")],
            TransformOp::Set(Value::Map(vec![(rand_int(r), rand_str(r))])),
        ),
        _ => ("people", vec![top, f("l")], TransformOp::Remove),
    }
}

/// The model: one top-level map per PState, transformed like the host does per entry.
fn model_transform(
    model: &mut Value,
    schema: &Schema,
    path: &[Navigator],
    op: &TransformOp,
) -> Result<(), String> {
    let Value::Map(entries) = model else {
        unreachable!()
    };
    let (top, rest) = path.split_first().unwrap();
    let (Navigator::Key(k) | Navigator::Must(k)) = top else {
        unreachable!()
    };
    let pos = path::find(entries, k).unwrap();
    if matches!(top, Navigator::Must(_)) && pos.is_err() {
        return Ok(());
    }
    let old = pos.ok().map(|p| entries[p].1.clone());
    let new = path::transform(old, rest, op, 1).map_err(|e| e.to_string())?;
    let (_, value_schema) = schema.as_top_level().unwrap();
    let new = new
        .map(|v| value_schema.normalize(v, "model"))
        .transpose()
        .map_err(|e| e.to_string())?;
    match (pos, new) {
        (Ok(p), Some(v)) => entries[p].1 = v,
        (Ok(p), None) => {
            entries.remove(p);
        }
        (Err(p), Some(v)) => entries.insert(p, (k.clone(), v)),
        (Err(_), None) => {}
    }
    Ok(())
}

#[test]
fn stored_pstates_match_the_in_memory_model() {
    const SEEDS: u64 = 12;
    const STEPS: usize = 400;
    for seed in 1..=SEEDS {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(PStateStore::open(&dir.path().join("pstate.redb")).unwrap());
        let mut catalog = Catalog::default();
        catalog
            .schemas
            .insert("people".into(), Schema::parse(PEOPLE).unwrap());
        catalog
            .schemas
            .insert("buckets".into(), Schema::parse(BUCKETS).unwrap());
        let catalog = Arc::new(catalog);
        let mut session = Session::new(Arc::clone(&store), Arc::clone(&catalog), 0, 1, 10_000);
        let mut models = std::collections::BTreeMap::from([
            ("people", Value::Map(vec![])),
            ("buckets", Value::Map(vec![])),
        ]);
        let mut record_start = models.clone();
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for step in 0..STEPS {
            let ctx = format!("seed {seed} step {step}");
            let (pstate, path, op) = rand_transform(&mut r);
            let schema = catalog.schema(pstate).unwrap();
            let model = models.get_mut(pstate).unwrap();
            let expected = model_transform(model, schema, &path, &op);
            let got = session.transform(pstate, &path, &op);
            if std::env::var_os("SLUICE_MODEL_TRACE").is_some() {
                eprintln!(
                    "{ctx}: {pstate} {path:?} {op:?} -> {got:?}; model {:?}",
                    models[pstate]
                );
            }
            assert_eq!(
                expected.is_ok(),
                got.is_ok(),
                "{ctx}: transform {path:?} {op:?}: model {expected:?}, store {got:?}"
            );
            // Records end (kept or rolled back) and batches commit at random points.
            if r.chance(20) {
                let keep = r.chance(75);
                if std::env::var_os("SLUICE_MODEL_TRACE").is_some() {
                    eprintln!("{ctx}: end record keep={keep}");
                }
                session.end_record(keep);
                if keep {
                    record_start = models.clone();
                } else {
                    models = record_start.clone();
                }
            }
            if r.chance(8) {
                if std::env::var_os("SLUICE_MODEL_TRACE").is_some() {
                    eprintln!("{ctx}: commit");
                }
                session.end_record(true);
                record_start = models.clone();
                store
                    .commit_writes(&session.take_writes(), r.chance(50))
                    .unwrap();
            }
            for _ in 0..3 {
                let pstate = *r.pick(&["people", "buckets"]);
                let schema = catalog.schema(pstate).unwrap();
                let mut path = Vec::new();
                select_path(&mut r, schema, &mut path, 0);
                let mut expected = Vec::new();
                let e = path::select(models.get(pstate), &path, 0, &mut expected, 10_000);
                let got = session.select(pstate, &path);
                match (e, got) {
                    (Ok(()), Ok(got)) => {
                        assert_eq!(got, expected, "{ctx}: select {pstate} {path:?}")
                    }
                    (Err(_), Err(_)) => {}
                    (e, g) => panic!(
                        "{ctx}: select {pstate} {path:?}: model {e:?} / {expected:?}, store {g:?}"
                    ),
                }
            }
        }
        // Everything committed reads back the same from a fresh snapshot.
        session.end_record(true);
        store.commit_writes(&session.take_writes(), true).unwrap();
        for pstate in ["people", "buckets"] {
            let all = super::select_committed(&store, &catalog, pstate, &[], 10_000).unwrap();
            assert_eq!(
                all,
                vec![models[pstate].clone()],
                "seed {seed}: final {pstate}"
            );
        }
    }
}

#[test]
fn a_global_pstate_is_written_only_on_the_global_partition_whatever_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PStateStore::open(&dir.path().join("pstate.redb")).unwrap());
    let mut catalog = Catalog::default();
    catalog
        .schemas
        .insert("totals".into(), Schema::parse("map<string, int>").unwrap());
    catalog.globals.insert("totals".into());
    let catalog = Arc::new(catalog);
    // Keys owned by every partition of 4 (under the partitioned rule) are written on 0.
    let keys: Vec<Value> = (0..16).map(|i| Value::Text(format!("k{i}"))).collect();
    let owners: std::collections::BTreeSet<u32> = keys
        .iter()
        .map(|k| super::partition_of_key(k, 4).unwrap())
        .collect();
    assert_eq!(owners.len(), 4, "the keys spread over every partition");
    let mut home = Session::new(Arc::clone(&store), Arc::clone(&catalog), 0, 4, 10_000);
    for k in &keys {
        home.transform(
            "totals",
            &[Navigator::Key(k.clone())],
            &TransformOp::Increment(1),
        )
        .unwrap();
    }
    assert_eq!(
        home.select("totals", &[Navigator::Key(keys[3].clone())])
            .unwrap(),
        vec![Value::Integer(1.into())]
    );
    // Elsewhere every access is refused, even for a key that partition would own.
    let mut other = Session::new(Arc::clone(&store), Arc::clone(&catalog), 2, 4, 10_000);
    let own_key = keys
        .iter()
        .find(|k| super::partition_of_key(k, 4).unwrap() == 2)
        .unwrap();
    let e = other
        .transform(
            "totals",
            &[Navigator::Key(own_key.clone())],
            &TransformOp::Increment(1),
        )
        .unwrap_err();
    assert_eq!(e.code, "wrong-partition");
    assert!(
        e.message.contains("is global: it lives on partition 0"),
        "{}",
        e.message
    );
    let e = other.select("totals", &[Navigator::All]).unwrap_err();
    assert_eq!(e.code, "wrong-partition");
    // Readers route every path of it to partition 0.
    assert_eq!(
        catalog.home_partition("totals", &[Navigator::Key(own_key.clone())], 4),
        Ok(Some(0))
    );
    assert_eq!(
        catalog.home_partition("totals", &[Navigator::All], 4),
        Ok(Some(0))
    );
}
