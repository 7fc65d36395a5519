//! Key-value with subindexed maps: depot `puts` (records `{"key": "k", "field": 5,
//! "value": "v"}`, hash-partitioned by `key`; `"value": null` removes the field), PState `kv`
//! (`map<string, subindexed map<int, string>>`: each key holds a sorted map that may grow to
//! millions of fields, range-read with one seek), and a stream topology applying the puts. The
//! handler answers with the key's field count (O(1), from the subindex). Query `counts`
//! (`{"keys": ["a", "b"]}`): each key's field count, in order, each read where the key lives.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_sdk::{
    AckReturn, Ctx, Definition, Depot, Module, PStateDef, Partitioner, QueryCtx, Result, Subindexed,
};

#[derive(Deserialize)]
struct Put {
    key: String,
    field: i64,
    value: Option<String>,
}

const PUTS: Depot<Put> = Depot::new("puts");
// The same puts, but the appender names the partition (`?partition=k`); a put whose key lives
// elsewhere fails with `wrong-partition`.
const DIRECT_PUTS: Depot<Put> = Depot::new("direct-puts");
const KV: PStateDef<String, Subindexed<BTreeMap<i64, String>>> = PStateDef::new("kv");

struct Kv;

impl Module for Kv {
    fn define(m: &mut Definition) {
        m.depot(PUTS, Partitioner::hash("key"));
        m.depot(DIRECT_PUTS, Partitioner::Direct);
        m.pstate_of(KV);
        m.stream_topology("apply")
            .on(PUTS, apply)
            .on(DIRECT_PUTS, apply);
        m.query("counts", counts);
    }
}

#[derive(Deserialize)]
struct Keys {
    keys: Vec<String>,
}

fn counts(q: &QueryCtx, args: Keys) -> Result<Vec<u64>> {
    let kv = q.pstate(KV);
    args.keys.iter().map(|k| kv.count(k)).collect()
}

fn apply(ctx: &Ctx, put: Put) -> Result<AckReturn<u64>> {
    let kv = ctx.pstate(KV);
    match &put.value {
        Some(v) => kv.set_entry(&put.key, &put.field, v)?,
        None => kv.remove_entry(&put.key, &put.field)?,
    }
    Ok(AckReturn(kv.count(&put.key)?))
}

sluice_sdk::export_module!(Kv);
