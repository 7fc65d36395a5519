// Paths into PStates, hop/select targets: thin builders over the WIT variants.

import { encode } from "./cbor.js";

const ALL = Object.freeze({ tag: "all" });
const MAP_KEYS = Object.freeze({ tag: "map-keys" });
const MAP_VALS = Object.freeze({ tag: "map-vals" });
const FIRST = Object.freeze({ tag: "first" });
const LAST = Object.freeze({ tag: "last" });
const COUNT = Object.freeze({ tag: "count" });

const COMPARISONS = new Set(["eq", "ne", "lt", "le", "gt", "ge"]);

function u64(n, what) {
  if (typeof n === "bigint") n = Number(n);
  if (!Number.isSafeInteger(n) || n < 0) throw new TypeError(`${what} must be a non-negative integer`);
  return n;
}

/**
 * A path into a PState: `Path.key("alice").key("balance")`. Immutable: every step returns a
 * new Path, so a path can be built once and reused. Each static method starts a path with
 * that navigator (`Path.all()`, `Path.mapVals()`); `new Path()` is the empty path (the
 * partition's whole top-level map).
 */
export class Path {
  constructor(navigators = []) {
    /** The WIT navigators (read by the SDK). */
    this.navigators = navigators;
  }

  _with(nav) {
    const n = this.navigators.length;
    const out = new Array(n + 1);
    for (let i = 0; i < n; i++) out[i] = this.navigators[i];
    out[n] = nav;
    return new Path(out);
  }

  /** The map value under key `k` (a transform creates it when absent). */
  key(k) {
    return this._with({ tag: "key", val: encode(k) });
  }
  /** Like `key`, but a transform never creates the key. */
  must(k) {
    return this._with({ tag: "must", val: encode(k) });
  }
  /** Every element of a list or set; every `[key, value]` entry of a map. */
  all() {
    return this._with(ALL);
  }
  mapKeys() {
    return this._with(MAP_KEYS);
  }
  mapVals() {
    return this._with(MAP_VALS);
  }
  first() {
    return this._with(FIRST);
  }
  last() {
    return this._with(LAST);
  }
  nth(i) {
    return this._with({ tag: "nth", val: u64(i, "nth") });
  }
  /** The number of elements (0 when absent). */
  count() {
    return this._with(COUNT);
  }
  /**
   * The entries of a map (as a map) or elements of a set within a key range. `start` is
   * inclusive and `end` exclusive unless `startInclusive`/`endInclusive` say otherwise;
   * absent bounds are open.
   */
  sortedRange({ start, end, startInclusive = true, endInclusive = false, limit, reverse = false } = {}) {
    return this._with({
      tag: "sorted-range",
      val: {
        start: start === undefined ? null : encode(start),
        end: end === undefined ? null : encode(end),
        startInclusive: !!startInclusive,
        endInclusive: !!endInclusive,
        limit: limit === undefined || limit === null ? null : u64(limit, "limit"),
        reverse: !!reverse,
      },
    });
  }
  /** The value, or `v` when it is absent or null. */
  nullToVal(v) {
    return this._with({ tag: "null-to-val", val: encode(v) });
  }
  /** Continue only where `navigated <cmp> v`; cmp is "eq", "ne", "lt", "le", "gt" or "ge". */
  filter(cmp, v) {
    if (!COMPARISONS.has(cmp)) throw new TypeError(`unknown comparison ${String(cmp)}`);
    return this._with({ tag: "filter", val: [cmp, encode(v)] });
  }

  static key(k) {
    return EMPTY.key(k);
  }
  static must(k) {
    return EMPTY.must(k);
  }
  static all() {
    return EMPTY.all();
  }
  static mapKeys() {
    return EMPTY.mapKeys();
  }
  static mapVals() {
    return EMPTY.mapVals();
  }
  static first() {
    return EMPTY.first();
  }
  static last() {
    return EMPTY.last();
  }
  static nth(i) {
    return EMPTY.nth(i);
  }
  static count() {
    return EMPTY.count();
  }
  static sortedRange(range) {
    return EMPTY.sortedRange(range);
  }
  static nullToVal(v) {
    return EMPTY.nullToVal(v);
  }
  static filter(cmp, v) {
    return EMPTY.filter(cmp, v);
  }
}

const EMPTY = new Path([]);

const TARGET_ALL = Object.freeze({ tag: "all" });

/** Where a hop continues, or which partitions `selectFrom` reads. */
export const Target = Object.freeze({
  /** The partition owning this key (where its PState entries live). */
  key(k) {
    return { tag: "key", val: encode(k) };
  },
  /** Every partition of the module (including this one). */
  all() {
    return TARGET_ALL;
  },
  /** This partition index. */
  partition(p) {
    if (!Number.isInteger(p) || p < 0 || p > 0xffffffff) throw new TypeError("partition must be a u32");
    return { tag: "partition", val: p };
  },
});
