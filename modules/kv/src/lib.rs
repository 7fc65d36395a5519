//! Key-value with subindexed maps: depot `puts` (records `{"key": "k", "field": 5,
//! "value": "v"}`, hash-partitioned by `key`; `"value": null` removes the field), PState `kv`
//! (`map<string, subindexed map<int, string>>`: each key holds a sorted map that may grow to
//! millions of fields, range-read with one seek), and a stream topology applying the puts. The
//! handler answers with the key's field count (O(1), from the subindex).

use serde::Deserialize;
use sluice_sdk::{AckReturn, Ctx, Definition, Module, Partitioner, Path, Result, Schema};

#[derive(Deserialize)]
struct Put {
    key: String,
    field: i64,
    value: Option<String>,
}

struct Kv;

impl Module for Kv {
    fn define(m: &mut Definition) {
        m.depot("puts", Partitioner::hash("key"));
        // The same puts, but the appender names the partition (`?partition=k`); a put whose
        // key lives elsewhere fails with `wrong-partition`.
        m.depot("direct-puts", Partitioner::Direct);
        m.pstate(
            "kv",
            Schema::map(
                Schema::string(),
                Schema::map(Schema::int(), Schema::string()).subindexed(),
            ),
        );
        m.stream_topology("apply")
            .reads("puts")
            .reads("direct-puts")
            .handler(apply);
    }
}

fn apply(ctx: &Ctx, put: Put) -> Result<AckReturn<u64>> {
    let kv = ctx.pstate("kv");
    let path = Path::key(&put.key).then_key(&put.field);
    match &put.value {
        Some(v) => kv.set(&path, v)?,
        None => kv.remove(&path)?,
    }
    Ok(AckReturn(kv.count(&Path::key(&put.key))?))
}

sluice_sdk::export_module!(Kv);
