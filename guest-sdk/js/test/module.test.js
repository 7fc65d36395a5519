import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

register("../testing/hooks.mjs", import.meta.url);
const sdk = await import("../src/index.js");
const host = await import("../testing/fake-host.js");
const { Module, Partitioner, Schema, Path, Target, SluiceError, encode, decode, log } = sdk;

const hex = (b) => Buffer.from(b).toString("hex");

function wordcount() {
  const m = new Module();
  m.depot("words", Partitioner.hash("word"));
  m.depot("sentences", Partitioner.random());
  m.depot("fail", Partitioner.direct());
  m.depot("nested", Partitioner.hash("user.id"));
  m.pstate("counts", Schema.map(Schema.string(), Schema.int()));
  m.streamTopology("wordcount").reads("words").handler(() => 1);
  m.streamTopology("sentences").reads("sentences").handler(() => {}).hopHandler("count-word", () => {});
  m.microbatchTopology("batches").reads("words").reads("sentences").handler(() => {});
  m.streamTopology("hops-only").hopHandler("h", () => {});
  m.query("top-words", () => []);
  return m;
}

test("the definition builder makes the WIT module-definition", () => {
  const m = wordcount();
  assert.deepStrictEqual(m.guest.define(), {
    depots: [
      { name: "words", partitioner: { tag: "hash", val: ["word"] } },
      { name: "sentences", partitioner: { tag: "random" } },
      { name: "fail", partitioner: { tag: "direct" } },
      { name: "nested", partitioner: { tag: "hash", val: ["user", "id"] } },
    ],
    pstates: [{ name: "counts", schema: "map<string, int>" }],
    streamTopologies: [
      { name: "wordcount", depots: ["words"], handler: "on-record", hopHandlers: [] },
      { name: "sentences", depots: ["sentences"], handler: "on-record", hopHandlers: ["count-word"] },
      { name: "hops-only", depots: [], handler: "", hopHandlers: ["h"] },
    ],
    microbatchTopologies: [
      { name: "batches", depots: ["words", "sentences"], handler: "on-record", hopHandlers: [] },
    ],
    partitionsHint: null,
    queries: ["top-words"],
  });
  assert.equal(m.guest.define(), m.guest.define(), "computed once");
  assert.throws(() => m.depot("late", Partitioner.random()), TypeError, "no declarations after define");
});

test("schemas print in the host's schema language", () => {
  const s = Schema;
  assert.equal(String(s.map(s.string(), s.int())), "map<string, int>");
  assert.equal(String(s.map(s.string(), s.set(s.string()))), "map<string, set<string>>");
  assert.equal(String(s.map(s.int(), s.list(s.any()))), "map<int, list<any>>");
  assert.equal(
    String(s.map(s.string(), s.record({ name: s.string(), age: s.int(), pic: s.bytes(), ok: s.bool(), w: s.float() }))),
    "map<string, {name: string, age: int, pic: bytes, ok: bool, w: float}>",
  );
  assert.equal(String(s.map(s.string(), s.list(s.int()).subindexed())), "map<string, subindexed list<int>>");
  assert.equal(String(s.record({ a: s.optional(s.int()) })), "{a: int}");
  const m = new Module().pstate("p", s.map(s.string(), s.int())).pstate("q", "map<string, any>").partitionsHint(8);
  assert.deepStrictEqual(m.guest.define().pstates, [
    { name: "p", schema: "map<string, int>" },
    { name: "q", schema: "map<string, any>" },
  ]);
  assert.equal(m.guest.define().partitionsHint, 8);
});

test("declarations are checked when the module is built", () => {
  const m = new Module();
  assert.throws(() => m.depot("d"), TypeError);
  assert.throws(() => m.depot("", Partitioner.random()), TypeError);
  assert.throws(() => m.streamTopology("t").handler("not a function"), TypeError);
  assert.throws(() => m.streamTopology("t"), TypeError, "declared twice");
  assert.throws(() => m.streamTopology("u").hopHandler("on-record", () => {}), TypeError);
  assert.throws(() => m.query("q", () => 1, 42), TypeError, "a shape must be a schema");
});

const ctx = { depot: "words", partition: 1, offset: 7, partitions: 4, batchId: null };

test("handle: the return value is the ack-return value; undefined is none", () => {
  const m = new Module();
  m.streamTopology("t")
    .handler((c, r) => ({ got: r, depot: c.record.depot, offset: c.record.offset }))
    .hopHandler("nothing", () => undefined)
    .hopHandler("null", () => null)
    .hopHandler("zero", () => 0);
  const out = m.guest.handle("t", "on-record", encode({ word: "apple" }), ctx);
  assert.deepStrictEqual(decode(out), { got: { word: "apple" }, depot: "words", offset: 7 });
  assert.equal(m.guest.handle("t", "nothing", encode(1), ctx), null);
  assert.equal(hex(m.guest.handle("t", "null", encode(1), ctx)), "f6");
  assert.equal(hex(m.guest.handle("t", "zero", encode(1), ctx)), "00");
});

function wit(fn) {
  try {
    fn();
  } catch (e) {
    return e;
  }
  assert.fail("expected a WIT error");
}

test("handle and query map every failure to a WIT error", () => {
  const m = new Module();
  m.streamTopology("t")
    .handler(() => {
      throw new SluiceError("no-such-account", "who?");
    })
    .hopHandler("type", () => null.x)
    .hopHandler("string", () => {
      throw "plain";
    })
    .hopHandler("custom", () => {
      class Oops extends Error {}
      throw new Oops("custom");
    })
    .hopHandler("async", async () => 1)
    .hopHandler("shaped", (c, { word }) => word, { word: Schema.string() });
  m.query("q", (q, a) => ({ a, p: q.partitions }));
  m.query("n", (q, { n = 10 }) => n, { n: Schema.optional(Schema.int()) });
  m.query("none", () => undefined);
  const g = m.guest;
  assert.deepStrictEqual(wit(() => g.handle("t", "on-record", encode(1), ctx)), { code: "no-such-account", message: "who?" });
  assert.equal(wit(() => g.handle("t", "type", encode(1), ctx)).code, "guest-exception");
  assert.match(wit(() => g.handle("t", "type", encode(1), ctx)).message, /^TypeError: /);
  assert.deepStrictEqual(wit(() => g.handle("t", "string", encode(1), ctx)), { code: "guest-exception", message: "string: plain" });
  assert.deepStrictEqual(wit(() => g.handle("t", "custom", encode(1), ctx)), { code: "guest-exception", message: "Oops: custom" });
  assert.equal(wit(() => g.handle("t", "async", encode(1), ctx)).code, "guest-exception");
  assert.deepStrictEqual(wit(() => g.handle("t", "missing", encode(1), ctx)), {
    code: "unknown-handler",
    message: "topology `t` has no handler `missing`",
  });
  assert.equal(wit(() => g.handle("nope", "on-record", encode(1), ctx)).code, "unknown-handler");
  const bad = wit(() => g.handle("t", "on-record", new Uint8Array([0x62, 0x61]), ctx));
  assert.equal(bad.code, "decode");
  assert.match(bad.message, /^cannot decode the record: invalid CBOR/);
  assert.equal(g.handle("t", "shaped", encode({ word: "w", extra: 1 }), ctx).length, 2);
  assert.deepStrictEqual(wit(() => g.handle("t", "shaped", encode({ word: 7 }), ctx)), {
    code: "decode",
    message: "cannot decode the hop payload: `word`: expected a string, found the integer 7",
  });
  assert.deepStrictEqual(wit(() => g.handle("t", "shaped", encode({}), ctx)), {
    code: "decode",
    message: "cannot decode the hop payload: missing field `word`",
  });
  assert.deepStrictEqual(wit(() => g.handle("t", "shaped", encode([1]), ctx)), {
    code: "decode",
    message: "cannot decode the hop payload: expected a map, found an array",
  });
  assert.deepStrictEqual(decode(g.query("q", encode({ x: [1n << 60n] }), 4)), { a: { x: [1n << 60n] }, p: 4 });
  assert.equal(decode(g.query("n", encode({}), 4)), 10);
  assert.equal(decode(g.query("n", encode({ n: 3 }), 4)), 3);
  assert.equal(wit(() => g.query("n", encode({ n: "x" }), 4)).code, "decode");
  assert.equal(hex(g.query("none", encode({}), 4)), "f6");
  assert.deepStrictEqual(wit(() => g.query("zzz", encode({}), 4)), { code: "unknown-query", message: "no query named `zzz`" });
  assert.equal(wit(() => g.query("q", new Uint8Array([0xff]), 4)).code, "decode");
});

test("shapes check nested values", () => {
  const s = Schema;
  const shape = s.record({
    keys: s.list(s.string()),
    tags: s.set(s.int()),
    m: s.map(s.string(), s.float()),
    b: s.bytes(),
    f: s.bool(),
    any: s.any(),
    opt: s.optional(s.string()),
  });
  const good = { keys: ["a"], tags: [1, 2n], m: { x: 1.5, y: 2 }, b: new Uint8Array(1), f: false, any: null };
  assert.equal(shape.check(good), null);
  assert.equal(shape.check({ ...good, opt: null }), null);
  assert.equal(shape.check({ ...good, keys: ["a", 1] }), "`keys`: [1]: expected a string, found the integer 1");
  assert.equal(shape.check({ ...good, tags: [1.5] }), "`tags`: [0]: expected an integer, found the float 1.5");
  assert.equal(shape.check({ ...good, m: { x: "no" } }), "`m`: `x`: expected a number, found a string");
  assert.equal(shape.check({ ...good, b: "x" }), "`b`: expected bytes, found a string");
  assert.equal(shape.check({ ...good, any: undefined }), "missing field `any`");
  assert.equal(shape.check({ ...good, opt: 3 }), "`opt`: expected a string, found the integer 3");
  assert.equal(s.map(s.int(), s.int()).check(new Map([[1, 2]])), null);
  assert.match(s.map(s.int(), s.int()).check(new Map([["a", 2]])), /expected an integer/);
});

test("PState access goes to the host with WIT navigators and ops", () => {
  const store = new Map();
  host.setHost({
    select: (p, path) => (store.has(hex(path[0].val)) ? [encode(store.get(hex(path[0].val)))] : []),
    transform: (p, path, op) => {
      const k = hex(path[0].val);
      if (op.tag === "increment") store.set(k, (store.get(k) ?? 0) + op.val);
      if (op.tag === "remove") store.delete(k);
    },
  });
  const m = new Module();
  m.streamTopology("t").handler((c, { word }) => {
    const counts = c.pstate("counts");
    counts.increment(Path.key(word), 2);
    counts.increment(Path.key(word));
    c.pstate("tags").insert(Path.key(word), "t");
    c.pstate("hist").push(Path.key(word).key("x"), [1]);
    c.pstate("m").merge(Path.key(word), { a: 1 });
    c.pstate("s").set(Path.must(word), 1.5);
    c.pstate("s").remove(Path.key("gone"));
    c.hop(Target.key(word), "h", { word });
    c.hop(Target.all(), "h", null);
    c.hop(Target.partition(3), "h", 1);
    return counts.get(Path.key(word));
  });
  const out = m.guest.handle("t", "on-record", encode({ word: "apple" }), ctx);
  assert.equal(decode(out), 3);
  const k = encode("apple");
  assert.deepStrictEqual(host.calls, [
    ["transform", "counts", [{ tag: "key", val: k }], { tag: "increment", val: 2 }],
    ["transform", "counts", [{ tag: "key", val: k }], { tag: "increment", val: 1 }],
    ["transform", "tags", [{ tag: "key", val: k }], { tag: "insert", val: encode("t") }],
    ["transform", "hist", [{ tag: "key", val: k }, { tag: "key", val: encode("x") }], { tag: "push", val: encode([1]) }],
    ["transform", "m", [{ tag: "key", val: k }], { tag: "merge", val: encode({ a: 1 }) }],
    ["transform", "s", [{ tag: "must", val: k }], { tag: "set", val: encode(1.5) }],
    ["transform", "s", [{ tag: "key", val: encode("gone") }], { tag: "remove" }],
    ["hop", { tag: "key", val: k }, "h", encode({ word: "apple" })],
    ["hop", { tag: "all" }, "h", encode(null)],
    ["hop", { tag: "partition", val: 3 }, "h", encode(1)],
    ["select", "counts", [{ tag: "key", val: k }]],
  ]);
  host.setHost(null);
});

test("increments reach the bindings as safe numbers, big BigInts in exact steps", () => {
  const steps = [];
  host.setHost({ transform: (p, path, op) => steps.push(op.val) });
  const m = new Module();
  m.streamTopology("t").handler((c, by) => c.pstate("p").increment(Path.key("k"), by));
  for (const by of [5, -5n, 9007199254740993n, -(2n ** 63n), 2n ** 63n - 1n]) {
    steps.length = 0;
    m.guest.handle("t", "on-record", encode(by), ctx);
    assert.ok(steps.every((s) => Number.isSafeInteger(s)), `${by}: ${steps}`);
    assert.equal(steps.reduce((a, s) => a + BigInt(s), 0n), BigInt(by));
  }
  assert.equal(wit(() => m.guest.handle("t", "on-record", encode(2n ** 63n), ctx)).code, "guest-exception");
  assert.equal(wit(() => m.guest.handle("t", "on-record", encode(1.5), ctx)).code, "guest-exception");
  host.setHost(null);
});

test("a host error is an SDK error carrying the host's code", () => {
  host.setHost({
    transform: () => {
      throw host.hostError("wrong-partition", "key `x` belongs to partition 2");
    },
    selectFrom: () => {
      throw host.hostError("read-only", "queries are read-only");
    },
  });
  const m = new Module();
  let caught;
  m.streamTopology("t")
    .handler((c) => c.pstate("p").set(Path.key("x"), 1))
    .hopHandler("catching", (c) => {
      try {
        c.pstate("p").remove(Path.key("x"));
      } catch (e) {
        caught = e;
      }
      return "recovered";
    });
  assert.deepStrictEqual(wit(() => m.guest.handle("t", "on-record", encode(1), ctx)), {
    code: "wrong-partition",
    message: "key `x` belongs to partition 2",
  });
  assert.equal(decode(m.guest.handle("t", "catching", encode(1), ctx)), "recovered");
  assert.ok(caught instanceof SluiceError);
  assert.equal(caught.code, "wrong-partition");
  m.query("q", (q) => q.pstate("p").selectAll(Path.all()));
  assert.equal(wit(() => m.guest.query("q", encode({}), 4)).code, "read-only");
  host.setHost(null);
});

test("queries read every partition; their PStates are read-only", () => {
  host.setHost({
    selectFrom: (p, target) => (target.tag === "all" ? [[encode(["a", 1])], [], [encode(["b", 2]), encode(["c", 3])]] : [[encode(9)]]),
    select: () => [encode(5), encode(6)],
  });
  const m = new Module();
  m.query("q", (q) => {
    const r = q.pstate("counts");
    assert.equal(typeof r.increment, "undefined");
    return {
      all: r.selectAll(Path.all()),
      one: r.selectPartition(2, Path.all()),
      key: r.selectFrom(Target.key("k"), Path.key("k")),
      sel: r.select(Path.key("k")),
      get: r.get(Path.key("k")),
      count: r.count(Path.key("k")),
    };
  });
  assert.deepStrictEqual(decode(m.guest.query("q", encode({}), 3)), {
    all: [[["a", 1]], [], [["b", 2], ["c", 3]]],
    one: [9],
    key: [[9]],
    sel: [5, 6],
    get: 5,
    count: 5,
  });
  host.setHost(null);
});

test("paths build every navigator of the WIT", () => {
  const p = Path.key("a")
    .must(1)
    .all()
    .mapKeys()
    .mapVals()
    .first()
    .last()
    .nth(3)
    .count()
    .sortedRange({ start: "b", end: "d", endInclusive: true, limit: 5, reverse: true })
    .sortedRange()
    .nullToVal(0)
    .filter("ge", 2);
  assert.deepStrictEqual(p.navigators, [
    { tag: "key", val: encode("a") },
    { tag: "must", val: encode(1) },
    { tag: "all" },
    { tag: "map-keys" },
    { tag: "map-vals" },
    { tag: "first" },
    { tag: "last" },
    { tag: "nth", val: 3 },
    { tag: "count" },
    {
      tag: "sorted-range",
      val: { start: encode("b"), end: encode("d"), startInclusive: true, endInclusive: true, limit: 5, reverse: true },
    },
    {
      tag: "sorted-range",
      val: { start: null, end: null, startInclusive: true, endInclusive: false, limit: null, reverse: false },
    },
    { tag: "null-to-val", val: encode(0) },
    { tag: "filter", val: ["ge", encode(2)] },
  ]);
  const base = Path.key("k");
  const longer = base.count();
  assert.equal(base.navigators.length, 1, "paths are immutable");
  assert.equal(longer.navigators.length, 2);
  assert.deepStrictEqual(new Path().navigators, []);
  assert.deepStrictEqual(Path.mapVals().navigators, [{ tag: "map-vals" }]);
  assert.throws(() => Path.filter("approx", 1), TypeError);
  assert.throws(() => Path.nth(-1), TypeError);
  assert.throws(() => Target.partition(-1), TypeError);
});

test("log writes to the host's log at each level", () => {
  host.setHost({});
  log.info("n =", 3, { a: 1n }, new Uint8Array(2));
  log.error(new TypeError("bad"));
  log.trace("t");
  log.debug("d");
  log.warn("w");
  assert.deepStrictEqual(host.calls, [
    ["log", "info", 'n = 3 {"a":"1"} "<2 bytes>"'],
    ["log", "error", "TypeError: bad"],
    ["log", "trace", "t"],
    ["log", "debug", "d"],
    ["log", "warn", "w"],
  ]);
  host.setHost(null);
});
