//! Test fixture: a stream and a microbatch topology that try to write the same PState.
//!
//! Depot `stream-incs` (`{"key": "k"}`) feeds stream topology `s`, which increments
//! `counts[key]`. Depot `batch-incs` (`{"key": "k", "into": "counts" | "batch-counts"}`)
//! feeds microbatch topology `m`, which increments the named PState. The host lets one kind
//! write a PState (the first write claims it): `m` writing `counts` after `s` did is refused
//! with `pstate-writer-conflict`, and nothing `s` wrote is clobbered.

use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, Module, Partitioner, Path, Result, Schema};

#[derive(Deserialize)]
struct Inc {
    key: String,
}

#[derive(Deserialize)]
struct BatchInc {
    key: String,
    into: String,
}

struct Mixed;

impl Module for Mixed {
    fn define(m: &mut Definition) {
        m.depot("stream-incs", Partitioner::hash("key"));
        m.depot("batch-incs", Partitioner::hash("key"));
        m.pstate("counts", Schema::map(Schema::string(), Schema::int()));
        m.pstate("batch-counts", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("s")
            .reads("stream-incs")
            .handler(stream_inc);
        m.microbatch_topology("m")
            .reads("batch-incs")
            .handler(batch_inc);
    }
}

fn stream_inc(ctx: &Ctx, r: Inc) -> Result<()> {
    ctx.pstate("counts").increment(&Path::key(&r.key), 1)
}

fn batch_inc(ctx: &Ctx, r: BatchInc) -> Result<()> {
    ctx.pstate(&r.into).increment(&Path::key(&r.key), 1)
}

sluice_sdk::export_module!(Mixed);
