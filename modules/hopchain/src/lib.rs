//! Test fixture: two hop-emitting depots and a chained hop, the shape that exposed hops
//! applied twice or lost after `kill -9` (issue 12).
//!
//! Depots `left` and `right` (records `{"id": n, "key": "k7"}`, random partitioner) are read
//! by topologies `left` and `right`; both handlers hop to the key's partition (`hit`), which
//! increments `hits[key]` and hops on to the partition of `key + "#"` (`chain`), which
//! increments `chained[key + "#"]`. After any crash, `hits[k]` and `chained[k#]` must equal
//! the number of stored records with key `k`, in both depots together.

use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, HopTarget, Module, Partitioner, Path, Result, Schema};

#[derive(Deserialize)]
struct Rec {
    key: String,
}

struct Hopchain;

impl Module for Hopchain {
    fn define(m: &mut Definition) {
        m.depot("left", Partitioner::Random);
        m.depot("right", Partitioner::Random);
        m.pstate("hits", Schema::map(Schema::string(), Schema::int()));
        m.pstate("chained", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("left")
            .reads("left")
            .handler(route)
            .hop_handler("hit", hit)
            .hop_handler("chain", chain);
        m.stream_topology("right")
            .reads("right")
            .handler(route)
            .hop_handler("hit", hit)
            .hop_handler("chain", chain);
    }
}

fn route(ctx: &Ctx, r: Rec) -> Result<()> {
    ctx.hop(HopTarget::Key(&r.key), "hit", &r.key)
}

fn hit(ctx: &Ctx, key: String) -> Result<()> {
    ctx.pstate("hits").increment(&Path::key(&key), 1)?;
    let next = format!("{key}#");
    ctx.hop(HopTarget::Key(&next), "chain", &next)
}

fn chain(ctx: &Ctx, key: String) -> Result<()> {
    ctx.pstate("chained").increment(&Path::key(&key), 1)
}

sluice_sdk::export_module!(Hopchain);
