// The module builder, PState access and the `guest` export the host calls.

import * as host from "sluice:module/host@0.2.0";
import { decode, encode } from "./cbor.js";
import { SluiceError, toWitError } from "./error.js";
import { Path, Target } from "./path.js";

/** The name under which a topology's record handler is declared (the Rust SDK's too). */
export const RECORD_HANDLER = "on-record";

// ---------------------------------------------------------------------------------------
// Declarations.

/** How a depot routes an appended record to a partition. */
export const Partitioner = Object.freeze({
  /** By the stable hash of a field; nested fields are dotted ("user.id") or an array. */
  hash(field) {
    const fields = Array.isArray(field) ? field.map(String) : String(field).split(".");
    return { tag: "hash", val: fields };
  },
  /** Spread evenly over the partitions. */
  random() {
    return RANDOM;
  },
  /** The appender names the partition (`?partition=k`). */
  direct() {
    return DIRECT;
  },
});
const RANDOM = Object.freeze({ tag: "random" });
const DIRECT = Object.freeze({ tag: "direct" });

/**
 * The shape of a PState, in the host's schema language (e.g. `map<string, int>`); also the
 * shape a handler, hop handler or query can require of its input (`.handler(fn, shape)`),
 * checked by the SDK before the function runs: a mismatch fails the call with code
 * "decode", as a Rust module's typed decoding does.
 */
export class Schema {
  constructor(text, check = okAny, optional = false) {
    this.text = text;
    this.check = check;
    this.optional = optional;
  }
  toString() {
    return this.text;
  }
  static bool() {
    return BOOL;
  }
  static int() {
    return INT;
  }
  static float() {
    return FLOAT;
  }
  static string() {
    return STRING;
  }
  static bytes() {
    return BYTES;
  }
  /** Any value at all (not checked). */
  static any() {
    return ANY;
  }
  static map(key, value) {
    const [k, v] = [schemaOf(key), schemaOf(value)];
    return new Schema(`map<${k}, ${v}>`, (x) => {
      if (x instanceof Map) {
        for (const [kk, vv] of x) {
          const e = k.check(kk) || v.check(vv);
          if (e) return e;
        }
        return null;
      }
      if (!isPlainObject(x)) return expected("a map", x);
      for (const kk of Object.keys(x)) {
        const e = k.check(kk);
        if (e) return `key \`${kk}\`: ${e}`;
        const ev = v.check(x[kk]);
        if (ev) return `\`${kk}\`: ${ev}`;
      }
      return null;
    });
  }
  static set(element) {
    const e = schemaOf(element);
    return new Schema(`set<${e}>`, (x) => checkItems(e, x));
  }
  static list(element) {
    const e = schemaOf(element);
    return new Schema(`list<${e}>`, (x) => checkItems(e, x));
  }
  /**
   * A record: a map with these fixed string fields, e.g. {name: Schema.string()}. As an input
   * shape its fields are required unless Schema.optional(...); other fields are allowed.
   */
  static record(fields) {
    const entries = (fields instanceof Map ? [...fields] : Object.entries(fields)).map(([n, f]) => [
      n,
      schemaOf(f),
    ]);
    return new Schema(`{${entries.map(([n, f]) => `${n}: ${f}`).join(", ")}}`, (x) => {
      if (!isPlainObject(x)) return expected("a map", x);
      for (const [n, f] of entries) {
        const v = x[n];
        if (v === undefined || (v === null && f.optional)) {
          if (f.optional) continue;
          return `missing field \`${n}\``;
        }
        const e = f.check(v);
        if (e) return `\`${n}\`: ${e}`;
      }
      return null;
    });
  }
  /** An input field that may be absent or null (a PState record's fields always may). */
  static optional(schema) {
    const s = schemaOf(schema);
    return new Schema(s.text, s.check, true);
  }
  /**
   * This collection stored element by element: it can hold millions of elements, be
   * range-read with one seek and report its size in O(1). For the PState's value or a record
   * field, not inside another subindexed collection.
   */
  subindexed() {
    return new Schema(`subindexed ${this.text}`, this.check, this.optional);
  }
}

function okAny() {
  return null;
}

function isPlainObject(x) {
  return x !== null && typeof x === "object" && !Array.isArray(x) && !(x instanceof Map) && !(x instanceof Uint8Array);
}

function kind(x) {
  if (x === null) return "null";
  if (x === undefined) return "nothing";
  if (typeof x === "number") return Number.isInteger(x) ? `the integer ${x}` : `the float ${x}`;
  if (typeof x === "bigint") return `the integer ${x}`;
  if (typeof x === "string") return "a string";
  if (typeof x === "boolean") return `${x}`;
  if (x instanceof Uint8Array) return "bytes";
  if (Array.isArray(x)) return "an array";
  return "a map";
}

function expected(what, x) {
  return `expected ${what}, found ${kind(x)}`;
}

function checkItems(e, x) {
  if (!Array.isArray(x)) return expected("an array", x);
  for (let i = 0; i < x.length; i++) {
    const err = e.check(x[i]);
    if (err) return `[${i}]: ${err}`;
  }
  return null;
}

function schemaOf(s) {
  if (s instanceof Schema) return s;
  if (typeof s === "string") return new Schema(s);
  if (isPlainObject(s)) return Schema.record(s);
  throw new TypeError("expected a Schema (Schema.string(), Schema.map(...), ...)");
}

const BOOL = new Schema("bool", (x) => (typeof x === "boolean" ? null : expected("a boolean", x)));
const INT = new Schema("int", (x) =>
  Number.isSafeInteger(x) || typeof x === "bigint" ? null : expected("an integer", x),
);
const FLOAT = new Schema("float", (x) =>
  typeof x === "number" || typeof x === "bigint" ? null : expected("a number", x),
);
const STRING = new Schema("string", (x) => (typeof x === "string" ? null : expected("a string", x)));
const BYTES = new Schema("bytes", (x) => (x instanceof Uint8Array ? null : expected("bytes", x)));
const ANY = new Schema("any", (x) => (x === undefined ? "missing value" : null));

function checkName(what, name) {
  if (typeof name !== "string" || name === "") throw new TypeError(`${what} name must be a non-empty string`);
  return name;
}

function checkFn(what, fn) {
  if (typeof fn !== "function") throw new TypeError(`${what} must be a function`);
  return fn;
}

// A function with the shape its input must have (null: any value).
function entry(what, fn, shape) {
  return { fn: checkFn(what, fn), shape: shape === undefined || shape === null ? null : schemaOf(shape) };
}

/** A stream or microbatch topology being declared (chain its methods). */
export class Topology {
  constructor(name, microbatch) {
    this.name = name;
    this.microbatch = microbatch;
    this.depots = [];
    this.onRecord = null;
    this.hops = new Map();
  }
  /** Subscribe to a depot: the handler runs for each record appended to it. */
  reads(depot) {
    this.depots.push(checkName("depot", depot));
    return this;
  }
  /**
   * `fn(ctx, record)` runs for each record. What it returns is the ack-return value an
   * `ack=full` appender gets (`undefined`: none; anything else, `null` included, is encoded).
   * `shape` (a Schema, or an object of field schemas) is what the record must look like; a
   * record that does not fails with code "decode" without running `fn`.
   */
  handler(fn, shape) {
    this.onRecord = entry("a handler", fn, shape);
    return this;
  }
  /**
   * A handler that `ctx.hop(target, name, payload)` continues on other partitions:
   * `fn(ctx, payload)`, with the payload's `shape` as for `handler`.
   */
  hopHandler(name, fn, shape) {
    checkName("hop handler", name);
    if (name === RECORD_HANDLER) throw new TypeError(`"${RECORD_HANDLER}" is the record handler's name`);
    this.hops.set(name, entry("a hop handler", fn, shape));
    return this;
  }
  toWit() {
    return {
      name: this.name,
      depots: this.depots.slice(),
      handler: this.onRecord ? RECORD_HANDLER : "",
      hopHandlers: [...this.hops.keys()],
    };
  }
  find(handler) {
    return handler === RECORD_HANDLER ? this.onRecord : this.hops.get(handler) || null;
  }
}

/**
 * A module: declare its depots, PStates, topologies and queries, then
 * `export const guest = m.guest;` (the component's `sluice:module/guest` export).
 */
export class Module {
  constructor() {
    this.depots = [];
    this.pstates = [];
    this.topologies = new Map();
    this.queries = new Map();
    this.hint = null;
    this.definition = null;
    const self = this;
    /** The `sluice:module/guest` export: `export const guest = m.guest;`. */
    this.guest = Object.freeze({
      define: () => self.define(),
      handle: (topology, handler, input, ctx) => self.handle(topology, handler, input, ctx),
      query: (name, args, partitions) => self.runQuery(name, args, partitions),
    });
  }

  /** Declare a depot with its partitioner (Partitioner.hash("word"), .random(), .direct()). */
  depot(name, partitioner) {
    this.mutable();
    if (!partitioner || typeof partitioner.tag !== "string") {
      throw new TypeError("depot needs a Partitioner (Partitioner.hash(field), .random() or .direct())");
    }
    this.depots.push({ name: checkName("depot", name), partitioner });
    return this;
  }

  /** Declare a PState with its schema (a Schema or its text). */
  pstate(name, schema) {
    this.mutable();
    this.pstates.push({ name: checkName("pstate", name), schema: String(schema) });
    return this;
  }

  /** Declare a stream topology; chain .reads(depot), .handler(fn), .hopHandler(name, fn). */
  streamTopology(name) {
    return this.topology(name, false);
  }

  /**
   * Declare a microbatch topology (chained like a stream topology): the host runs its
   * handlers on batches and commits each batch's writes atomically on all partitions;
   * `ctx.record.batchId` names the batch.
   */
  microbatchTopology(name) {
    return this.topology(name, true);
  }

  topology(name, microbatch) {
    this.mutable();
    checkName("topology", name);
    if (this.topologies.has(name)) throw new TypeError(`topology "${name}" is declared twice`);
    const t = new Topology(name, microbatch);
    this.topologies.set(name, t);
    return t;
  }

  /**
   * Declare a query topology: `fn(q, args)` answers `POST /v1/modules/{m}/queries/{name}`
   * (its return value is the result); `shape` is what the arguments must look like.
   */
  query(name, fn, shape) {
    this.mutable();
    checkName("query", name);
    this.queries.set(name, entry("a query", fn, shape));
    return this;
  }

  /** The partition count this module would like (a deploy may choose another). */
  partitionsHint(n) {
    this.mutable();
    this.hint = n >>> 0;
    return this;
  }

  mutable() {
    if (this.definition) throw new TypeError("the module is already defined: declare everything at top level");
  }

  /** The WIT module-definition (computed once). */
  define() {
    if (!this.definition) {
      const topologies = [...this.topologies.values()];
      this.definition = {
        depots: this.depots.map((d) => ({ name: d.name, partitioner: d.partitioner })),
        pstates: this.pstates.map((p) => ({ name: p.name, schema: p.schema })),
        streamTopologies: topologies.filter((t) => !t.microbatch).map((t) => t.toWit()),
        microbatchTopologies: topologies.filter((t) => t.microbatch).map((t) => t.toWit()),
        partitionsHint: this.hint,
        queries: [...this.queries.keys()],
      };
    }
    return this.definition;
  }

  handle(topology, handler, input, record) {
    const t = this.topologies.get(topology);
    const h = t ? t.find(handler) : null;
    if (!h) {
      throw { code: "unknown-handler", message: `topology \`${topology}\` has no handler \`${handler}\`` };
    }
    const value = decodeInput(input, h.shape, handler === RECORD_HANDLER ? "the record" : "the hop payload");
    CTX.record = record;
    try {
      const out = h.fn(CTX, value);
      if (out === undefined) return null;
      if (out !== null && typeof out.then === "function") {
        throw new SluiceError("guest-exception", "handlers are synchronous: a handler returned a Promise");
      }
      return encode(out);
    } catch (e) {
      throw toWitError(e);
    }
  }

  runQuery(name, args, partitions) {
    const q = this.queries.get(name);
    if (!q) throw { code: "unknown-query", message: `no query named \`${name}\`` };
    const value = decodeInput(args, q.shape, "the query arguments");
    QCTX.partitions = partitions;
    try {
      const out = q.fn(QCTX, value);
      if (out !== null && typeof out === "object" && typeof out.then === "function") {
        throw new SluiceError("guest-exception", "queries are synchronous: a query returned a Promise");
      }
      return encode(out === undefined ? null : out);
    } catch (e) {
      throw toWitError(e);
    }
  }
}

function decodeInput(bytes, shape, what) {
  let value;
  try {
    value = decode(bytes);
  } catch (e) {
    throw { code: "decode", message: `cannot decode ${what}: ${e.message}` };
  }
  if (shape !== null) {
    const e = shape.check(value);
    if (e) throw { code: "decode", message: `cannot decode ${what}: ${e}` };
  }
  return value;
}

// ---------------------------------------------------------------------------------------
// PState access.

function hostError(e) {
  const p = e !== null && typeof e === "object" ? e.payload : undefined;
  if (p && typeof p.code === "string") return new SluiceError(p.code, p.message);
  return e;
}

function navs(path) {
  if (!(path instanceof Path)) throw new TypeError("expected a Path (Path.key(k), Path.all(), ...)");
  return path.navigators;
}

function decodeAll(values) {
  const out = new Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = decode(values[i]);
  return out;
}

/** A PState as a query sees it: read-only, on any partition. */
export class ReadPState {
  constructor(name) {
    this.name = name;
  }
  /**
   * Every value the path selects (in a handler: on the current partition; in a query: on the
   * partition owning the path's leading key).
   */
  select(path) {
    let values;
    try {
      values = host.select(this.name, navs(path));
    } catch (e) {
      throw hostError(e);
    }
    return decodeAll(values);
  }
  /** The first value the path selects, or undefined when it selects nothing. */
  get(path) {
    let values;
    try {
      values = host.select(this.name, navs(path));
    } catch (e) {
      throw hostError(e);
    }
    return values.length === 0 ? undefined : decode(values[0]);
  }
  /** The number of elements of the collection at `path` (0 when absent). */
  count(path) {
    const n = this.get(path.count());
    return n === undefined ? 0 : n;
  }
  /**
   * What the path selects on each partition `target` names (Target.key(k), Target.all(),
   * Target.partition(p)): one list per partition, in partition order. In a query the host
   * reads them in parallel; in a handler only the current partition can be targeted.
   */
  selectFrom(target, path) {
    let lists;
    try {
      lists = host.selectFrom(this.name, target, navs(path));
    } catch (e) {
      throw hostError(e);
    }
    const out = new Array(lists.length);
    for (let i = 0; i < lists.length; i++) out[i] = decodeAll(lists[i]);
    return out;
  }
  /** What the path selects on every partition: one list per partition. */
  selectAll(path) {
    return this.selectFrom(Target.all(), path);
  }
  /** What the path selects on partition `p`. */
  selectPartition(p, path) {
    const lists = this.selectFrom(Target.partition(p), path);
    return lists.length ? lists[0] : [];
  }
}

function transform(name, path, op) {
  try {
    host.transform(name, navs(path), op);
  } catch (e) {
    throw hostError(e);
  }
}

const REMOVE = Object.freeze({ tag: "remove" });
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;
const SAFE_BIG = BigInt(Number.MAX_SAFE_INTEGER);
const STEP = 2 ** 52;
const STEP_BIG = 1n << 52n;

/** A PState of the current partition, in a topology handler: read and write. */
export class PState extends ReadPState {
  /** Set the value at `path` (creating intermediate maps). */
  set(path, value) {
    transform(this.name, path, { tag: "set", val: encode(value) });
  }
  /** Add `by` (default 1; a safe integer or a BigInt) to the integer at `path` (absent: 0). */
  increment(path, by = 1) {
    if (typeof by === "bigint") {
      // The bindings take s64 as a JS number (exact to 2^53; a BigInt traps): a larger
      // BigInt goes as several exact steps (the partial sums lie between the old and the new
      // value, so they overflow only if the result does).
      if (by < I64_MIN || by > I64_MAX) throw new RangeError("increment out of the i64 range");
      while (by > SAFE_BIG) {
        transform(this.name, path, { tag: "increment", val: STEP });
        by -= STEP_BIG;
      }
      while (by < -SAFE_BIG) {
        transform(this.name, path, { tag: "increment", val: -STEP });
        by += STEP_BIG;
      }
      by = Number(by);
    } else if (!Number.isSafeInteger(by)) {
      throw new TypeError(`increment needs an integer, not ${String(by)}`);
    }
    transform(this.name, path, { tag: "increment", val: by });
  }
  /** Remove the value at `path`. */
  remove(path) {
    transform(this.name, path, REMOVE);
  }
  /** Add `element` to the set at `path`. */
  insert(path, element) {
    transform(this.name, path, { tag: "insert", val: encode(element) });
  }
  /** Append `element` to the list at `path`. */
  push(path, element) {
    transform(this.name, path, { tag: "push", val: encode(element) });
  }
  /** Set every entry of `entries` (a map or object) in the map at `path`. */
  merge(path, entries) {
    transform(this.name, path, { tag: "merge", val: encode(entries) });
  }
}

// ---------------------------------------------------------------------------------------
// Contexts (one of each, reused by every call).

/** What a handler gets besides its record. */
export class Ctx {
  constructor() {
    /** {depot, partition, offset, partitions, batchId} of the record being handled. */
    this.record = null;
    this.handles = new Map();
  }
  /** The PState `name` of the current partition (read and write). */
  pstate(name) {
    let p = this.handles.get(name);
    if (!p) {
      p = new PState(name);
      this.handles.set(name, p);
    }
    return p;
  }
  /**
   * Continue this record's event tree with the hop handler `handler` of the current topology
   * on the target partition(s), carrying `payload`. Sent only if the current handler succeeds,
   * after its writes commit; a `full` ack waits for it.
   */
  hop(target, handler, payload) {
    if (!target || typeof target.tag !== "string") {
      throw new TypeError("hop needs a Target (Target.key(k), Target.all(), Target.partition(p))");
    }
    const bytes = encode(payload);
    try {
      host.hop(target, handler, bytes);
    } catch (e) {
      throw hostError(e);
    }
  }
}

/** What a query gets besides its arguments. */
export class QueryCtx {
  constructor() {
    /** The module's partition count. */
    this.partitions = 0;
    this.handles = new Map();
  }
  /** A read-only handle on the PState `name`, on any partition. */
  pstate(name) {
    let p = this.handles.get(name);
    if (!p) {
      p = new ReadPState(name);
      this.handles.set(name, p);
    }
    return p;
  }
}

const CTX = new Ctx();
const QCTX = new QueryCtx();

// ---------------------------------------------------------------------------------------
// Logging.

function logAt(level) {
  return (...parts) => host.log(level, format(parts));
}

function format(parts) {
  let s = "";
  for (let i = 0; i < parts.length; i++) {
    if (i) s += " ";
    const p = parts[i];
    s += typeof p === "string" ? p : show(p);
  }
  return s;
}

function show(v) {
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  if (typeof v !== "object" || v === null) return String(v);
  try {
    return JSON.stringify(v, (_, x) =>
      typeof x === "bigint" ? x.toString() : x instanceof Uint8Array ? `<${x.length} bytes>` : x,
    );
  } catch {
    return String(v);
  }
}

/** Lines into the host's log, tagged with the module's name: log.info("x =", x). */
export const log = Object.freeze({
  trace: logAt("trace"),
  debug: logAt("debug"),
  info: logAt("info"),
  warn: logAt("warn"),
  error: logAt("error"),
});
