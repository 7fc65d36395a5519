// The conformance modules (modules/wordcount-js, modules/probe-js) in Node, on a small
// in-memory stand-in for the host (one map per PState and partition, the navigators and
// transforms these modules use, hops run after their handler). The real check is
// `cargo test -p sluice --test modules -- conformance` on the built components.
import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

register("../testing/hooks.mjs", import.meta.url);
const { encode, decode, partitionOfKey } = await import("../src/index.js");
const host = await import("../testing/fake-host.js");

const PARTITIONS = 4;
const hex = (b) => Buffer.from(b).toString("hex");

function memoryHost(guest) {
  const def = guest.define();
  const stores = new Map(); // `${pstate}/${partition}` -> Map(hex key -> [key, value])
  const store = (p, part) => {
    const k = `${p}/${part}`;
    if (!stores.has(k)) stores.set(k, new Map());
    return stores.get(k);
  };
  let current = { partition: 0, topology: null, hops: [] };
  const sorted = (m) => [...m.values()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  function navigate(values, navs) {
    for (const n of navs) {
      const next = [];
      for (const v of values) {
        switch (n.tag) {
          case "key":
            if (v instanceof Map) {
              const e = v.get(hex(n.val));
              if (e) next.push(e[1]);
            }
            break;
          case "all":
            if (v instanceof Map) next.push(...sorted(v));
            else if (Array.isArray(v)) next.push(...v);
            break;
          case "map-vals":
            if (v instanceof Map) next.push(...sorted(v).map((e) => e[1]));
            break;
          case "map-keys":
            if (v instanceof Map) next.push(...sorted(v).map((e) => e[0]));
            break;
          case "sorted-range":
            if (v instanceof Map) {
              const entries = sorted(v).slice(0, n.val.limit ?? Infinity);
              next.push(new Map(entries.map((e) => [hex(encode(e[0])), e])));
            }
            break;
          case "count":
            next.push(v instanceof Map ? v.size : Array.isArray(v) ? v.length : 0);
            break;
          case "last":
            if (Array.isArray(v) && v.length) next.push(v[v.length - 1]);
            break;
          default:
            throw new Error(`navigator ${n.tag} not emulated`);
        }
      }
      values = next;
      if (n.tag === "count" && values.length === 0) values = [0];
    }
    return values.map((v) => (v instanceof Map ? new Map(sorted(v).map((e) => [e[0], e[1]])) : v));
  }
  host.setHost({
    select: (p, navs) => {
      const part = navs[0]?.tag === "key" ? partitionOfKey(decode(navs[0].val), PARTITIONS) : current.partition;
      return navigate([store(p, part)], navs).map(encode);
    },
    selectFrom: (p, target, navs) => {
      const parts = target.tag === "all" ? [...Array(PARTITIONS).keys()] : [target.tag === "key" ? partitionOfKey(decode(target.val), PARTITIONS) : target.val];
      return parts.map((part) => navigate([store(p, part)], navs).map(encode));
    },
    transform: (p, navs, op) => {
      assert.equal(navs.length, 1, "only top-level keys are emulated");
      const key = decode(navs[0].val);
      if (partitionOfKey(key, PARTITIONS) !== current.partition) throw host.hostError("wrong-partition", String(key));
      const s = store(p, current.partition);
      const k = hex(navs[0].val);
      const old = s.get(k)?.[1];
      const put = (v) => s.set(k, [key, v]);
      switch (op.tag) {
        case "increment": put((old ?? 0) + op.val); break;
        case "remove": s.delete(k); break;
        case "insert": put([...new Set([...(old ?? []), decode(op.val)])].sort()); break;
        case "push": put([...(old ?? []), decode(op.val)]); break;
        case "set": put(decode(op.val)); break;
        default: throw new Error(`op ${op.tag} not emulated`);
      }
    },
    hop: (target, handler, payload) => current.hops.push([target, handler, payload]),
  });
  let offset = 0;
  function run(topology, handler, partition, input, depot, batchId = null) {
    const saved = current;
    current = { partition, topology, hops: [] };
    try {
      const ctx = { depot, partition, offset: offset++, partitions: PARTITIONS, batchId };
      const out = guest.handle(topology, handler, input, ctx);
      for (const [target, h, payload] of current.hops) {
        const parts = target.tag === "all" ? [...Array(PARTITIONS).keys()] : [target.tag === "key" ? partitionOfKey(decode(target.val), PARTITIONS) : target.val];
        for (const part of parts) run(topology, h, part, payload, depot, batchId);
      }
      return out === null ? undefined : decode(out);
    } finally {
      current = saved;
    }
  }
  return {
    def,
    append(depot, record, partition) {
      const d = def.depots.find((x) => x.name === depot);
      if (partition === undefined) {
        partition = d.partitioner.tag === "hash" ? partitionOfKey(d.partitioner.val.reduce((v, f) => v[f], record), PARTITIONS) : offset % PARTITIONS;
      }
      const results = {};
      for (const t of def.streamTopologies.filter((t) => t.depots.includes(depot))) {
        const v = run(t.name, "on-record", partition, encode(record), depot);
        if (v !== undefined) results[t.name] = v;
      }
      for (const t of def.microbatchTopologies.filter((t) => t.depots.includes(depot))) {
        run(t.name, "on-record", partition, encode(record), depot, 1);
      }
      return results;
    },
    query: (name, args) => decode(guest.query(name, encode(args), PARTITIONS)),
    get: (p, key) => store(p, partitionOfKey(key, PARTITIONS)).get(hex(encode(key)))?.[1],
  };
}

function failure(f) {
  try {
    f();
  } catch (e) {
    return e;
  }
  assert.fail("expected an error");
}

test("wordcount-js declares and does what docs/conformance.md says", async () => {
  const { guest } = await import("../../../modules/wordcount-js/index.js");
  const h = memoryHost(guest);
  assert.deepStrictEqual(h.def, {
    depots: [
      { name: "words", partitioner: { tag: "hash", val: ["word"] } },
      { name: "sentences", partitioner: { tag: "random" } },
    ],
    pstates: [{ name: "counts", schema: "map<string, int>" }],
    streamTopologies: [
      { name: "wordcount", depots: ["words"], handler: "on-record", hopHandlers: [] },
      { name: "sentences", depots: ["sentences"], handler: "on-record", hopHandlers: ["count-word"] },
    ],
    microbatchTopologies: [],
    partitionsHint: null,
    queries: ["top-words"],
  });
  assert.deepStrictEqual(h.append("words", { word: "apple" }), { wordcount: 1 });
  assert.deepStrictEqual(h.append("words", { word: "apple" }), { wordcount: 2 });
  assert.deepStrictEqual(h.append("sentences", { text: "The apple and  the pear" }), {});
  assert.equal(h.get("counts", "apple"), 3);
  assert.equal(h.get("counts", "the"), 2);
  assert.equal(h.get("counts", "The"), undefined);
  assert.deepStrictEqual(h.query("top-words", { n: 3 }), [
    { word: "apple", count: 3 },
    { word: "the", count: 2 },
    { word: "and", count: 1 },
  ]);
  assert.equal(h.query("top-words", {}).length, 4);
  const e = failure(() => h.append("words", { word: 7 }));
  assert.equal(e.code, "decode");
  assert.match(e.message, /^cannot decode the record: /);
});

test("probe-js declares and does what docs/conformance.md says", async () => {
  const { guest } = await import("../../../modules/probe-js/index.js");
  const h = memoryHost(guest);
  assert.deepStrictEqual(
    h.def.depots.map((d) => [d.name, d.partitioner.tag]),
    [["echo", "random"], ["items", "hash"], ["fail", "direct"], ["fanout", "random"]],
  );
  assert.deepStrictEqual(h.def.pstates.map((p) => p.schema), [
    "map<string, int>",
    "map<string, set<string>>",
    "map<string, list<any>>",
    "map<string, int>",
    "map<string, int>",
  ]);
  assert.deepStrictEqual(h.def.microbatchTopologies, [{ name: "batches", depots: ["items"], handler: "on-record", hopHandlers: [] }]);
  assert.deepStrictEqual(h.def.queries, ["echo", "total", "first-keys", "mark"]);

  const record = { ints: [0, -1, 9007199254740993n, -(2n ** 63n), 2n ** 64n - 1n], f: [1.5, 1e300], b: new Uint8Array([0, 255]), m: new Map([[1, "one"]]) };
  const echoed = h.append("echo", record).echo;
  assert.deepStrictEqual(echoed.record, record);
  assert.equal(echoed.depot, "echo");
  assert.equal(echoed.partitions, 4);

  const item = (key, n, tag, value) => h.append("items", { key, n, tag, value }).items;
  assert.deepStrictEqual(item("k1", 5, "red", { x: 1 }), { total: 5, tags: 1, last: { x: 1 } });
  assert.deepStrictEqual(item("k1", 2, "red", [1, 2]), { total: 7, tags: 1, last: [1, 2] });
  assert.deepStrictEqual(item("k1", 0, "blue", "z"), { total: null, tags: 2, last: "z" });
  item("k2", 3, "red", null);
  item("k3", -1, "red", 1);
  assert.equal(h.get("batches", "k1"), 3);

  const e = failure(() => h.append("fail", { code: "no-such-account", message: "who?" }, 2));
  assert.deepStrictEqual(e, { code: "no-such-account", message: "who?" });

  h.append("fanout", { keys: ["a", "b", "c", "a"], n: 2 });
  h.append("fanout", { keys: ["b"], n: 5 });
  for (const [key, marks] of [["a", 4], ["b", 7], ["c", 2], ["zz", 0]]) assert.equal(h.query("mark", { key }), marks);

  const args = { n: [1, 2.5, "x", null], big: 2n ** 64n - 1n };
  assert.deepStrictEqual(h.query("echo", args), { args, partitions: 4 });
  assert.equal(h.query("total", {}), 2);
  for (let k = 0; k < 6; k++) item(`r${k}`, 1, "t", k);
  assert.equal(h.query("total", {}), 8);
  assert.deepStrictEqual(h.query("first-keys", { n: 4 }), ["k2", "k3", "r0", "r1"]);
  assert.equal(failure(() => h.query("no-such-query", {})).code, "unknown-query");
  host.setHost(null);
});
