//! Test fixture for depot retention: depot `events` (`{"key": "k"}`, hash by `key`) keeps the
//! newest 100 records of each partition, and those of the last minute; topology `count`
//! counts events per key in `counts`. An event with `"fail": true` is refused by the handler
//! (a dead letter, which retention must keep).

use serde::Deserialize;
use sluice_sdk::{
    Ctx, Definition, Depot, Error, Module, PStateDef, Partitioner, Result, Retention,
};

#[derive(Deserialize)]
struct Event {
    key: String,
    #[serde(default)]
    fail: bool,
}

const EVENTS: Depot<Event> = Depot::new("events");
const COUNTS: PStateDef<String, i64> = PStateDef::new("counts");

struct Retained;

impl Module for Retained {
    fn define(m: &mut Definition) {
        m.depot(EVENTS, Partitioner::hash("key"));
        m.retention(EVENTS, Retention::records(100).and_max_age_ms(60_000));
        m.pstate_of(COUNTS);
        m.stream_topology("count").on(EVENTS, count);
    }
}

fn count(ctx: &Ctx, e: Event) -> Result<()> {
    if e.fail {
        return Err(Error::new(
            "refused",
            format!("event of `{}` asked to fail", e.key),
        ));
    }
    ctx.pstate(COUNTS).increment(&e.key, 1)
}

sluice_sdk::export_module!(Retained);
