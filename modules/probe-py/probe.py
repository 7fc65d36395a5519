"""The contract probe, in Python: the `probe` conformance module (docs/conformance.md)."""

from dataclasses import dataclass
from typing import Any

from sluice import Module, Partitioner, Path, Schema, SluiceError, Target

m = Module()
m.depot("echo", Partitioner.random())
m.depot("items", Partitioner.hash("key"))
m.depot("fail", Partitioner.direct())
m.depot("fanout", Partitioner.random())
for name, value in [
    ("totals", Schema.int()),
    ("tags", Schema.set(Schema.string())),
    ("history", Schema.list(Schema.any())),
    ("marks", Schema.int()),
    ("batches", Schema.int()),
]:
    m.pstate(name, Schema.map(Schema.string(), value))


@m.stream_topology("echo", reads="echo").handler
def echo(ctx, record):
    r = ctx.record
    return {
        "record": record,
        "depot": r.depot,
        "partition": r.partition,
        "offset": r.offset,
        "partitions": r.partitions,
    }


@dataclass
class Item:
    key: str
    n: int
    tag: str
    value: Any


@m.stream_topology("items", reads="items").handler
def item(ctx, item: Item):
    key = Path.key(item.key)
    totals, tags, history = ctx.pstate("totals"), ctx.pstate("tags"), ctx.pstate("history")
    if item.n == 0:
        totals.remove(key)
    else:
        totals.increment(key, item.n)
    tags.insert(key, item.tag)
    history.push(key, item.value)
    return {"total": totals.get(key), "tags": tags.count(key), "last": history.get(key.last())}


@dataclass
class Failure:
    code: str
    message: str


@m.stream_topology("fail", reads="fail").handler
def fail(ctx, f: Failure):
    raise SluiceError(f.code, f.message)


@dataclass
class Fanout:
    keys: list[str]
    n: int


@dataclass
class Mark:
    key: str
    n: int


fanout = m.stream_topology("fanout", reads="fanout")


@fanout.handler
def fan_out(ctx, f: Fanout):
    for key in f.keys:
        ctx.hop(Target.key(key), "mark", Mark(key, f.n))


@fanout.hop_handler("mark")
def mark(ctx, mark: Mark):
    ctx.pstate("marks").increment(Path.key(mark.key), mark.n)


@dataclass
class Keyed:
    key: str


@m.microbatch_topology("batches", reads="items").handler
def batch(ctx, record: Keyed):
    if ctx.record.batch_id is None:
        raise SluiceError("no-batch-id", "a microbatch record without a batch id")
    ctx.pstate("batches").increment(Path.key(record.key), 1)


@m.query("echo")
def echo_query(q, args):
    return {"args": args, "partitions": q.partitions}


@m.query("total")
def total(q, args: dict):
    return sum(v for part in q.pstate("totals").select_all(Path.map_vals()) for v in part)


@dataclass
class FirstKeys:
    n: int


@m.query("first-keys")
def first_keys(q, args: FirstKeys):
    path = Path.sorted_range(limit=args.n).map_keys()
    keys = sorted(k for part in q.pstate("totals").select_all(path) for k in part)
    return keys[: args.n]


@m.query("mark")
def mark_query(q, args: Keyed):
    marks = q.pstate("marks").select_from(Target.key(args.key), Path.key(args.key))
    return next((v for part in marks for v in part), 0)


Guest = m.export()  # what componentize-py exports as `sluice:module/guest`
