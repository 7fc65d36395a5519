// Types of the Sluice guest SDK for JavaScript (src/index.js). See README.md.

/**
 * A value as it crosses the host boundary (CBOR). Decoded: integers are `number` when safe
 * (|n| <= 2^53 - 1), else `bigint`; floats `number`; bytes `Uint8Array`; a map whose keys are
 * all strings a plain object, any other map a `Map`; `undefined` only for CBOR undefined.
 */
export type Value =
  | null
  | undefined
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | Value[]
  | Map<Value, Value>
  | { [key: string]: Value };

/** Anything `encode` accepts: Values plus Set, ArrayBuffer, Tagged and objects with toJSON(). */
export type Encodable = Value | Set<Encodable> | ArrayBuffer | Tagged | { toJSON(): Encodable } | { [key: string]: Encodable | undefined } | Encodable[];

/** A handler's or query's failure: a stable code and a message for people. */
export class SluiceError extends Error {
  constructor(code: string, message?: string);
  readonly code: string;
}

/** How a depot routes an appended record to a partition (the WIT `partitioner`). */
export type PartitionerDef = { tag: "hash"; val: string[] } | { tag: "random" } | { tag: "direct" };
export const Partitioner: {
  /** By the stable hash of a field: "word", dotted "user.id", or the names as an array. */
  hash(field: string | string[]): PartitionerDef;
  /** Spread evenly over the partitions. */
  random(): PartitionerDef;
  /** The appender names the partition (`?partition=k`). */
  direct(): PartitionerDef;
};

/**
 * A PState's shape in the host's schema language (`String(schema)`), and the shape a
 * handler's, hop handler's or query's input must have (checked before the function runs; a
 * mismatch fails with code "decode").
 */
export class Schema {
  readonly text: string;
  readonly optional: boolean;
  /** null when `value` fits, else what is wrong. */
  check(value: unknown): string | null;
  toString(): string;
  static bool(): Schema;
  static int(): Schema;
  static float(): Schema;
  static string(): Schema;
  static bytes(): Schema;
  /** Any value at all. */
  static any(): Schema;
  static map(key: SchemaLike, value: SchemaLike): Schema;
  static set(element: SchemaLike): Schema;
  static list(element: SchemaLike): Schema;
  /** A record: fixed string fields. As an input shape, fields are required unless optional. */
  static record(fields: Record<string, SchemaLike> | Map<string, SchemaLike>): Schema;
  /** An input field that may be absent or null. */
  static optional(schema: SchemaLike): Schema;
  /** Stored element by element (millions of elements, O(1) count, range reads). */
  subindexed(): Schema;
}
/** A Schema, its text (not checked as an input shape), or an object of field schemas (a record). */
export type SchemaLike = Schema | string | { [field: string]: SchemaLike };

/** Where the record being handled came from (the WIT `record-ctx`). */
export interface RecordInfo {
  depot: string;
  partition: number;
  offset: number;
  partitions: number;
  /** The microbatch being processed (the same on every retry); null in stream topologies. */
  batchId: number | null;
}

/** A WIT navigator (built with Path). */
export type Navigator =
  | { tag: "key" | "must" | "null-to-val"; val: Uint8Array }
  | { tag: "all" | "map-keys" | "map-vals" | "first" | "last" | "count" }
  | { tag: "nth"; val: number }
  | { tag: "sorted-range"; val: WitKeyRange }
  | { tag: "filter"; val: [Comparison, Uint8Array] };
export interface WitKeyRange {
  start: Uint8Array | null;
  end: Uint8Array | null;
  startInclusive: boolean;
  endInclusive: boolean;
  limit: number | null;
  reverse: boolean;
}
export type Comparison = "eq" | "ne" | "lt" | "le" | "gt" | "ge";

/** Bounds of a sorted range: start inclusive, end exclusive by default; absent bounds are open. */
export interface KeyRange {
  start?: Encodable;
  end?: Encodable;
  startInclusive?: boolean;
  endInclusive?: boolean;
  limit?: number;
  reverse?: boolean;
}

/** An immutable path into a PState: `Path.key("alice").key("balance")`. */
export class Path {
  /** The empty path (the partition's whole top-level map), or these navigators. */
  constructor(navigators?: Navigator[]);
  readonly navigators: Navigator[];
  /** The map value under key `k` (a transform creates it). */
  key(k: Encodable): Path;
  /** Like key, but a transform never creates the key. */
  must(k: Encodable): Path;
  /** Every element of a list or set; every [key, value] entry of a map. */
  all(): Path;
  mapKeys(): Path;
  mapVals(): Path;
  first(): Path;
  last(): Path;
  nth(i: number): Path;
  /** The number of elements (0 when absent). */
  count(): Path;
  /** The entries of a map (as a map) or elements of a set within the range. */
  sortedRange(range?: KeyRange): Path;
  /** The value, or `v` when it is absent or null. */
  nullToVal(v: Encodable): Path;
  /** Continue only where `navigated <cmp> v`. */
  filter(cmp: Comparison, v: Encodable): Path;
  static key(k: Encodable): Path;
  static must(k: Encodable): Path;
  static all(): Path;
  static mapKeys(): Path;
  static mapVals(): Path;
  static first(): Path;
  static last(): Path;
  static nth(i: number): Path;
  static count(): Path;
  static sortedRange(range?: KeyRange): Path;
  static nullToVal(v: Encodable): Path;
  static filter(cmp: Comparison, v: Encodable): Path;
}

/** Which partition(s) a hop continues on, or `selectFrom` reads (the WIT `target`). */
export type TargetDef = { tag: "key"; val: Uint8Array } | { tag: "all" } | { tag: "partition"; val: number };
export const Target: {
  /** The partition owning this key. */
  key(k: Encodable): TargetDef;
  /** Every partition of the module (including this one). */
  all(): TargetDef;
  /** This partition index. */
  partition(p: number): TargetDef;
};

/** A PState as a query sees it: read-only, on any partition. */
export class ReadPState {
  readonly name: string;
  /** Every value the path selects (in a query: on the partition owning its leading key). */
  select<T = Value>(path: Path): T[];
  /** The first value the path selects, or undefined. */
  get<T = Value>(path: Path): T | undefined;
  /** The number of elements of the collection at `path` (0 when absent). */
  count(path: Path): number;
  /** One list per target partition, in partition order (a handler may only target its own). */
  selectFrom<T = Value>(target: TargetDef, path: Path): T[][];
  /** One list per partition. */
  selectAll<T = Value>(path: Path): T[][];
  /** What the path selects on partition `p`. */
  selectPartition<T = Value>(p: number, path: Path): T[];
}

/** A PState of the current partition, in a topology handler. */
export class PState extends ReadPState {
  set(path: Path, value: Encodable): void;
  /** Add `by` (default 1) to the integer at `path` (absent counts as 0). */
  increment(path: Path, by?: number | bigint): void;
  remove(path: Path): void;
  /** Add an element to the set at `path`. */
  insert(path: Path, element: Encodable): void;
  /** Append an element to the list at `path`. */
  push(path: Path, element: Encodable): void;
  /** Set every entry of `entries` in the map at `path`. */
  merge(path: Path, entries: Encodable): void;
}

/** What a handler gets besides its record. */
export class Ctx {
  readonly record: RecordInfo;
  pstate(name: string): PState;
  /** Continue on the target partition(s) with the hop handler `handler` of this topology. */
  hop(target: TargetDef, handler: string, payload: Encodable): void;
}

/** What a query gets besides its arguments. */
export class QueryCtx {
  /** The module's partition count. */
  readonly partitions: number;
  pstate(name: string): ReadPState;
}

/** A record or hop handler; its return value (undefined: none) is the ack-return value. */
export type Handler<R = any> = (ctx: Ctx, input: R) => Encodable | void;
/** A query; its return value is the result (undefined: null). */
export type QueryFn<A = any> = (q: QueryCtx, args: A) => Encodable | void;

export class Topology {
  readonly name: string;
  /** Run for each record appended to `depot` (call once per depot). */
  reads(depot: string): this;
  /** The record handler, with the shape a record must have. */
  handler<R = any>(fn: Handler<R>, shape?: SchemaLike): this;
  /** A handler ctx.hop can continue on other partitions, with its payload's shape. */
  hopHandler<P = any>(name: string, fn: Handler<P>, shape?: SchemaLike): this;
}

/** The WIT `module-definition` that `define` returns. */
export interface ModuleDefinition {
  depots: { name: string; partitioner: PartitionerDef }[];
  pstates: { name: string; schema: string }[];
  streamTopologies: TopologyDef[];
  microbatchTopologies: TopologyDef[];
  partitionsHint: number | null;
  queries: string[];
}
export interface TopologyDef {
  name: string;
  depots: string[];
  handler: string;
  hopHandlers: string[];
}

/** The component's `sluice:module/guest` export. */
export interface Guest {
  define(): ModuleDefinition;
  handle(topology: string, handler: string, input: Uint8Array, ctx: RecordInfo): Uint8Array | null;
  query(name: string, args: Uint8Array, partitions: number): Uint8Array;
}

/** A module: declare everything at top level, then `export const guest = m.guest;`. */
export class Module {
  constructor();
  depot(name: string, partitioner: PartitionerDef): this;
  pstate(name: string, schema: Schema | string): this;
  streamTopology(name: string): Topology;
  /** Run on batches committed atomically on all partitions; ctx.record.batchId names the batch. */
  microbatchTopology(name: string): Topology;
  query<A = any>(name: string, fn: QueryFn<A>, shape?: SchemaLike): this;
  partitionsHint(n: number): this;
  /** The module-definition (computed once; no declarations after it). */
  define(): ModuleDefinition;
  /** Export it: `export const guest = m.guest;`. */
  readonly guest: Guest;
}

/** The name of every topology's record handler in the definition. */
export const RECORD_HANDLER: "on-record";

/** Lines into the host's log, tagged with the module's name (parts joined by spaces). */
export const log: {
  trace(...parts: unknown[]): void;
  debug(...parts: unknown[]): void;
  info(...parts: unknown[]): void;
  warn(...parts: unknown[]): void;
  error(...parts: unknown[]): void;
};

/** A CBOR tag around a value (for encoding; decoding drops tags). */
export class Tagged {
  constructor(tag: number, value: Encodable);
  tag: number;
  value: Encodable;
}
/** A CBOR simple value other than false/true/null/undefined, as decoded. */
export class Simple {
  constructor(value: number);
  value: number;
}
/** CBOR bytes of a value (throws SluiceError "encode" for functions, symbols, cycles). */
export function encode(value: Encodable): Uint8Array;
/** The value of CBOR bytes (throws SluiceError "decode"). */
export function decode(bytes: Uint8Array): Value;

/** The partition (of `partitions`) that owns `key`, as the host computes it. */
export function partitionOfKey(key: Encodable, partitions: number): number;
