// Probe: the `probe` conformance module (docs/conformance.md), in JavaScript. Exercises every
// partitioner, collections, removal, record context, guest errors, hops carrying maps, a
// microbatch topology and queries reading by key and from all partitions.
import { Module, Partitioner, Path, Schema, SluiceError, Target } from "../../guest-sdk/js/src/index.js";

const { string, int, any } = Schema;
const byKey = (value) => Schema.map(string(), value);

const m = new Module();
m.depot("echo", Partitioner.random());
m.depot("items", Partitioner.hash("key"));
m.depot("fail", Partitioner.direct());
m.depot("fanout", Partitioner.random());
m.pstate("totals", byKey(int()));
m.pstate("tags", byKey(Schema.set(string())));
m.pstate("history", byKey(Schema.list(any())));
m.pstate("marks", byKey(int()));
m.pstate("batches", byKey(int()));
m.streamTopology("echo").reads("echo").handler(echo);
m.streamTopology("items").reads("items").handler(item, { key: string(), n: int(), tag: string(), value: any() });
m.streamTopology("fail").reads("fail").handler(fail, { code: string(), message: string() });
m.streamTopology("fanout")
  .reads("fanout")
  .handler(fanout, { keys: Schema.list(string()), n: int() })
  .hopHandler("mark", mark, { key: string(), n: int() });
m.microbatchTopology("batches").reads("items").handler(batch, { key: string() });
m.query("echo", (q, args) => ({ args, partitions: q.partitions }));
m.query("total", total, {});
m.query("first-keys", firstKeys, { n: int() });
m.query("mark", markQuery, { key: string() });
export const guest = m.guest;

// Any record: answered back exactly as decoded, with where it came from.
function echo(ctx, record) {
  const { depot, partition, offset, partitions } = ctx.record;
  return { record, depot, partition, offset, partitions };
}

function item(ctx, { key, n, tag, value }) {
  const [totals, tags, history] = [ctx.pstate("totals"), ctx.pstate("tags"), ctx.pstate("history")];
  const at = Path.key(key);
  if (n == 0) totals.remove(at);
  else totals.increment(at, n);
  tags.insert(at, tag);
  history.push(at, value);
  return { total: totals.get(at) ?? null, tags: tags.count(at), last: history.get(at.last()) ?? null };
}

function fail(ctx, { code, message }) {
  throw new SluiceError(code, message);
}

function fanout(ctx, { keys, n }) {
  for (const key of keys) ctx.hop(Target.key(key), "mark", { key, n });
}

function mark(ctx, { key, n }) {
  ctx.pstate("marks").increment(Path.key(key), n);
}

function batch(ctx, { key }) {
  if (ctx.record.batchId == null) throw new SluiceError("no-batch-id", "a microbatch record without a batch id");
  ctx.pstate("batches").increment(Path.key(key), 1);
}

function total(q) {
  return q.pstate("totals").selectAll(Path.mapVals()).flat().reduce((sum, v) => sum + v, 0);
}

function firstKeys(q, { n }) {
  const keys = q.pstate("totals").selectAll(Path.sortedRange({ limit: n }).mapKeys()).flat();
  return keys.sort().slice(0, n);
}

function markQuery(q, { key }) {
  return q.pstate("marks").selectFrom(Target.key(key), Path.key(key))[0][0] ?? 0;
}
