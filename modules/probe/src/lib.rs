//! The contract probe: the conformance module every SDK implements (`docs/conformance.md`).
//!
//! It exercises what `wordcount` does not: every partitioner, sets and lists, removal, an
//! ack-return value built from several selects, the record context, guest errors, hops
//! carrying maps, a microbatch topology, and queries reading by key and from all partitions.

use ciborium::Value;
use serde::{Deserialize, Serialize};
use sluice_sdk::{
    AckReturn, Ctx, Definition, Error, HopTarget, KeyRange, Module, Partitioner, Path, QueryCtx,
    Result, Schema,
};

struct Probe;

impl Module for Probe {
    fn define(m: &mut Definition) {
        m.depot("echo", Partitioner::Random);
        m.depot("items", Partitioner::hash("key"));
        m.depot("fail", Partitioner::Direct);
        m.depot("fanout", Partitioner::Random);
        let by_key = |value| Schema::map(Schema::string(), value);
        m.pstate("totals", by_key(Schema::int()));
        m.pstate("tags", by_key(Schema::set(Schema::string())));
        m.pstate("history", by_key(Schema::list(Schema::any())));
        m.pstate("marks", by_key(Schema::int()));
        m.pstate("batches", by_key(Schema::int()));
        m.stream_topology("echo").reads("echo").handler(echo);
        m.stream_topology("items").reads("items").handler(item);
        m.stream_topology("fail").reads("fail").handler(fail);
        m.stream_topology("fanout")
            .reads("fanout")
            .handler(fanout)
            .hop_handler("mark", mark);
        m.microbatch_topology("batches")
            .reads("items")
            .handler(batch);
        m.query("echo", echo_query);
        m.query("total", total);
        m.query("first-keys", first_keys);
        m.query("mark", mark_query);
    }
}

#[derive(Serialize)]
struct Echoed {
    record: Value,
    depot: String,
    partition: u32,
    offset: u64,
    partitions: u32,
}

fn echo(ctx: &Ctx, record: Value) -> Result<AckReturn<Echoed>> {
    let r = ctx.record();
    Ok(AckReturn(Echoed {
        record,
        depot: r.depot.clone(),
        partition: r.partition,
        offset: r.offset,
        partitions: r.partitions,
    }))
}

#[derive(Deserialize)]
struct Item {
    key: String,
    n: i64,
    tag: String,
    value: Value,
}

#[derive(Serialize)]
struct ItemAck {
    total: Option<i64>,
    tags: u64,
    last: Option<Value>,
}

fn item(ctx: &Ctx, item: Item) -> Result<AckReturn<ItemAck>> {
    let key = Path::key(&item.key);
    let totals = ctx.pstate("totals");
    if item.n == 0 {
        totals.remove(&key)?;
    } else {
        totals.increment(&key, item.n)?;
    }
    ctx.pstate("tags").insert(&key, &item.tag)?;
    ctx.pstate("history").push(&key, &item.value)?;
    Ok(AckReturn(ItemAck {
        total: totals.get(&key)?,
        tags: ctx.pstate("tags").count(&key)?,
        last: ctx.pstate("history").get(&key.clone().last())?,
    }))
}

#[derive(Deserialize)]
struct Failure {
    code: String,
    message: String,
}

fn fail(_: &Ctx, f: Failure) -> Result<()> {
    Err(Error::new(f.code, f.message))
}

#[derive(Deserialize)]
struct Fanout {
    keys: Vec<String>,
    n: i64,
}

#[derive(Serialize, Deserialize)]
struct Mark {
    key: String,
    n: i64,
}

fn fanout(ctx: &Ctx, f: Fanout) -> Result<()> {
    for key in f.keys {
        let mark = Mark { key, n: f.n };
        ctx.hop(HopTarget::Key(&mark.key), "mark", &mark)?;
    }
    Ok(())
}

fn mark(ctx: &Ctx, m: Mark) -> Result<()> {
    ctx.pstate("marks").increment(&Path::key(&m.key), m.n)
}

#[derive(Deserialize)]
struct Keyed {
    key: String,
}

fn batch(ctx: &Ctx, record: Keyed) -> Result<()> {
    if ctx.record().batch_id.is_none() {
        return Err(Error::new(
            "no-batch-id",
            "a microbatch record without a batch id",
        ));
    }
    ctx.pstate("batches").increment(&Path::key(&record.key), 1)
}

#[derive(Serialize)]
struct EchoAnswer {
    args: Value,
    partitions: u32,
}

fn echo_query(q: &QueryCtx, args: Value) -> Result<EchoAnswer> {
    Ok(EchoAnswer {
        args,
        partitions: q.partitions(),
    })
}

#[derive(Deserialize)]
struct NoArgs {}

fn total(q: &QueryCtx, _: NoArgs) -> Result<i64> {
    let lists = q
        .pstate("totals")
        .select_all::<i64>(&Path::new().map_vals())?;
    Ok(lists.into_iter().flatten().sum())
}

#[derive(Deserialize)]
struct FirstKeys {
    n: u64,
}

fn first_keys(q: &QueryCtx, args: FirstKeys) -> Result<Vec<String>> {
    let path = Path::new()
        .sorted_range(KeyRange::all().limit(args.n))
        .map_keys();
    let mut keys: Vec<String> = q
        .pstate("totals")
        .select_all::<String>(&path)?
        .into_iter()
        .flatten()
        .collect();
    keys.sort();
    keys.truncate(args.n as usize);
    Ok(keys)
}

fn mark_query(q: &QueryCtx, args: Keyed) -> Result<i64> {
    let lists = q
        .pstate("marks")
        .select_from::<i64, _>(HopTarget::Key(&args.key), &Path::key(&args.key))?;
    Ok(lists.into_iter().flatten().next().unwrap_or(0))
}

sluice_sdk::export_module!(Probe);
