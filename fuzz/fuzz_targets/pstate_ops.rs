//! The host import surface: arbitrary paths and transforms (decoded from the input, as a guest
//! could send them) against a real PState store never panic, and a failed transform leaves the
//! state unchanged.
#![no_main]
use std::sync::Arc;

use sluice::pstate::{Catalog, Cmp, Navigator, PStateStore, Range, Schema, Session, TransformOp};
use sluice::value::{as_i64, from_cbor, Value};

fn navigator(v: &Value) -> Option<Navigator> {
    let Value::Array(f) = v else { return None };
    let (tag, arg) = (
        as_i64(f.first()?)?,
        f.get(1).cloned().unwrap_or(Value::Null),
    );
    Some(match tag % 12 {
        0 => Navigator::Key(arg),
        1 => Navigator::Must(arg),
        2 => Navigator::All,
        3 => Navigator::MapKeys,
        4 => Navigator::MapVals,
        5 => Navigator::First,
        6 => Navigator::Last,
        7 => Navigator::Nth(as_i64(&arg).unwrap_or(0) as u64),
        8 => Navigator::Count,
        9 => Navigator::SortedRange(Range {
            start: Some(arg),
            limit: Some(3),
            ..Range::default()
        }),
        10 => Navigator::NullToVal(arg),
        _ => Navigator::Filter(Cmp::Lt, arg),
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(ops)) = from_cbor(data) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PStateStore::open(&dir.path().join("p.redb")).unwrap());
    let mut catalog = Catalog::default();
    let schema = "map<string, {n: int, s: subindexed set<string>, m: subindexed map<int, any>, l: subindexed list<any>}>";
    catalog
        .schemas
        .insert("p".into(), Schema::parse(schema).unwrap());
    let mut session = Session::new(store, Arc::new(catalog), 0, 1, 1000);
    for op in ops.iter().take(64) {
        let Value::Array(f) = op else { continue };
        let Some(Value::Array(path)) = f.get(1) else {
            continue;
        };
        let path: Vec<Navigator> = path.iter().take(8).filter_map(navigator).collect();
        let arg = f.get(2).cloned().unwrap_or(Value::Null);
        let kind = f.first().and_then(as_i64).unwrap_or(0);
        let t = match kind % 7 {
            0 => None,
            1 => Some(TransformOp::Set(arg)),
            2 => Some(TransformOp::Increment(as_i64(&arg).unwrap_or(1))),
            3 => Some(TransformOp::Remove),
            4 => Some(TransformOp::Insert(arg)),
            5 => Some(TransformOp::Push(arg)),
            _ => Some(TransformOp::Merge(arg)),
        };
        match t {
            None => {
                let _ = session.select("p", &path);
            }
            Some(t) => {
                let before = session.select("p", &[]);
                if session.transform("p", &path, &t).is_err() {
                    assert_eq!(
                        session.select("p", &[]),
                        before,
                        "a failed transform changed the state"
                    );
                }
            }
        }
    }
});
