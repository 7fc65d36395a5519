//! Test fixture for dead letters you can act on: hops that fail until a gate opens.
//!
//! Depot `gates` (`{"key": "t"}`, hash by `key`): topology `gate` opens `gates[t]` on t's
//! partition. Depot `sends` (`{"key": "k", "to": "t"}`, hash by `key`) is read by
//! - stream topology `stream`, which hops to t's partition (`land`): `land` fails with
//!   `gate-closed` unless `gates[t]` is open, else counts `landed[t]`;
//! - microbatch topology `batch`, which does the same through `land-batch` into `batched[t]`.
//!
//! So a send to a closed gate leaves a hop dead letter (stream and microbatch); once the gate
//! is open, a replay must count it exactly once.

use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, Error, HopTarget, Module, Partitioner, Path, Result, Schema};

#[derive(Deserialize)]
struct Gate {
    key: String,
}

#[derive(Deserialize)]
struct Send {
    to: String,
}

struct Letters;

impl Module for Letters {
    fn define(m: &mut Definition) {
        m.depot("gates", Partitioner::hash("key"));
        m.depot("sends", Partitioner::hash("key"));
        m.pstate("gates", Schema::map(Schema::string(), Schema::bool()));
        m.pstate("landed", Schema::map(Schema::string(), Schema::int()));
        m.pstate("batched", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("gate").reads("gates").handler(open);
        m.stream_topology("stream")
            .reads("sends")
            .handler(send)
            .hop_handler("land", land);
        m.microbatch_topology("batch")
            .reads("sends")
            .handler(send_batch)
            .hop_handler("land-batch", land_batch);
    }
}

fn open(ctx: &Ctx, g: Gate) -> Result<()> {
    ctx.pstate("gates").set(&Path::key(&g.key), &true)
}

fn send(ctx: &Ctx, s: Send) -> Result<()> {
    ctx.hop(HopTarget::Key(&s.to), "land", &s.to)
}

fn send_batch(ctx: &Ctx, s: Send) -> Result<()> {
    ctx.hop(HopTarget::Key(&s.to), "land-batch", &s.to)
}

fn gate_open(ctx: &Ctx, to: &str) -> Result<()> {
    match ctx.pstate("gates").get::<bool>(&Path::key(to))? {
        Some(true) => Ok(()),
        _ => Err(Error::new("gate-closed", format!("gate `{to}` is closed"))),
    }
}

fn land(ctx: &Ctx, to: String) -> Result<()> {
    gate_open(ctx, &to)?;
    ctx.pstate("landed").increment(&Path::key(&to), 1)
}

fn land_batch(ctx: &Ctx, to: String) -> Result<()> {
    gate_open(ctx, &to)?;
    ctx.pstate("batched").increment(&Path::key(&to), 1)
}

sluice_sdk::export_module!(Letters);
