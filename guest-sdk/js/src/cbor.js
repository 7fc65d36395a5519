// CBOR (RFC 8949) for the values that cross the host boundary, with no dependencies (the
// QuickJS runtime of a component has no TextEncoder/TextDecoder).
//
// JS -> CBOR: a safe integer (|n| <= 2^53-1) -> integer; any other number (fractions, -0,
// NaN, infinities, integers beyond 2^53) -> float64; a BigInt -> integer (beyond 64 bits: a
// bignum, tag 2/3); string -> text; boolean; null and undefined -> null; Uint8Array (and
// ArrayBuffer) -> byte string; Array and Set -> array; Map -> map with any keys; any other
// object -> map of its own enumerable string keys (properties whose value is undefined are
// skipped, like JSON.stringify); an object with toJSON() -> what toJSON returns (a Date: its
// ISO string); Tagged -> a tag. Functions and symbols cannot be encoded.
//
// CBOR -> JS: integers -> number when safe, else BigInt; floats (half, single, double) ->
// number; text -> string; bytes -> Uint8Array; arrays -> Array; a map whose keys are all text
// -> plain object, any other map -> Map; null -> null; undefined -> undefined; tags are
// dropped (content kept), except bignums (tags 2/3) which become integers; definite and
// indefinite lengths are accepted.

import { SluiceError } from "./error.js";

/** A CBOR tag to encode around a value (decoding drops tags). */
export class Tagged {
  constructor(tag, value) {
    this.tag = tag;
    this.value = value;
  }
}

/** A CBOR simple value other than false/true/null/undefined, as decoded. */
export class Simple {
  constructor(value) {
    this.value = value;
  }
}

const MAX_DEPTH = 256;
const TWO32 = 0x100000000;
const U64_END = 1n << 64n;

// ---------------------------------------------------------------------------------------
// Encoding: into one growing buffer reused by every call (the result is a copy).

let buf = new Uint8Array(512);
let view = new DataView(buf.buffer);
let pos = 0;

function grow(need) {
  let size = buf.length * 2;
  while (size < need) size *= 2;
  const next = new Uint8Array(size);
  next.set(buf.subarray(0, pos));
  buf = next;
  view = new DataView(next.buffer);
}

function head(major, n) {
  if (pos + 9 > buf.length) grow(pos + 9);
  const m = major << 5;
  if (n < 24) {
    buf[pos++] = m | n;
  } else if (n < 0x100) {
    buf[pos++] = m | 24;
    buf[pos++] = n;
  } else if (n < 0x10000) {
    buf[pos++] = m | 25;
    buf[pos++] = n >> 8;
    buf[pos++] = n & 0xff;
  } else if (n < TWO32) {
    buf[pos++] = m | 26;
    view.setUint32(pos, n);
    pos += 4;
  } else {
    buf[pos++] = m | 27;
    view.setUint32(pos, Math.floor(n / TWO32));
    view.setUint32(pos + 4, n >>> 0);
    pos += 8;
  }
}

function headBig(major, n) {
  if (pos + 9 > buf.length) grow(pos + 9);
  buf[pos++] = (major << 5) | 27;
  view.setBigUint64(pos, n);
  pos += 8;
}

function writeBigInt(v) {
  let major = 0;
  let n = v;
  if (v < 0n) {
    major = 1;
    n = -1n - v;
  }
  if (n < U64_END) {
    if (n <= 0xffffffffn) head(major, Number(n));
    else headBig(major, n);
    return;
  }
  // A bignum: tag 2 (positive) or 3 (negative) around the big-endian magnitude.
  let hex = n.toString(16);
  if (hex.length & 1) hex = "0" + hex;
  const len = hex.length >> 1;
  head(6, major === 0 ? 2 : 3);
  head(2, len);
  if (pos + len > buf.length) grow(pos + len);
  for (let i = 0; i < len; i++) buf[pos++] = parseInt(hex.substr(i * 2, 2), 16);
}

function writeFloat(v) {
  if (pos + 9 > buf.length) grow(pos + 9);
  buf[pos++] = 0xfb;
  view.setFloat64(pos, v);
  pos += 8;
}

function writeString(s) {
  const len = s.length;
  if (len < 24) {
    // Short text: write it as ASCII behind a one-byte head, unless it is not ASCII.
    if (pos + len + 1 > buf.length) grow(pos + len + 1);
    const start = pos;
    let p = pos + 1;
    let i = 0;
    for (; i < len; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) break;
      buf[p++] = c;
    }
    if (i === len) {
      buf[start] = 0x60 | len;
      pos = p;
      return;
    }
  } else {
    let i = 0;
    while (i < len && s.charCodeAt(i) < 0x80) i++;
    if (i === len) {
      head(3, len);
      if (pos + len > buf.length) grow(pos + len);
      for (let k = 0; k < len; k++) buf[pos++] = s.charCodeAt(k);
      return;
    }
  }
  const n = utf8Length(s);
  head(3, n);
  if (pos + n > buf.length) grow(pos + n);
  for (let i = 0; i < len; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      buf[pos++] = c;
    } else if (c < 0x800) {
      buf[pos++] = 0xc0 | (c >> 6);
      buf[pos++] = 0x80 | (c & 0x3f);
    } else {
      if (c >= 0xd800 && c < 0xdc00 && i + 1 < len) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d < 0xe000) {
          i++;
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          buf[pos++] = 0xf0 | (c >> 18);
          buf[pos++] = 0x80 | ((c >> 12) & 0x3f);
          buf[pos++] = 0x80 | ((c >> 6) & 0x3f);
          buf[pos++] = 0x80 | (c & 0x3f);
          continue;
        }
      }
      if (c >= 0xd800 && c < 0xe000) c = 0xfffd; // a lone surrogate
      buf[pos++] = 0xe0 | (c >> 12);
      buf[pos++] = 0x80 | ((c >> 6) & 0x3f);
      buf[pos++] = 0x80 | (c & 0x3f);
    }
  }
}

function utf8Length(s) {
  const len = s.length;
  let n = 0;
  for (let i = 0; i < len; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < len) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

function writeBytes(b) {
  const len = b.length;
  head(2, len);
  if (pos + len > buf.length) grow(pos + len);
  buf.set(b, pos);
  pos += len;
}

function write(v, depth) {
  switch (typeof v) {
    case "number":
      if (Number.isSafeInteger(v) && (v !== 0 || 1 / v > 0)) {
        if (v >= 0) head(0, v);
        else head(1, -1 - v);
      } else {
        writeFloat(v);
      }
      return;
    case "string":
      writeString(v);
      return;
    case "boolean":
      if (pos + 1 > buf.length) grow(pos + 1);
      buf[pos++] = v ? 0xf5 : 0xf4;
      return;
    case "bigint":
      writeBigInt(v);
      return;
    case "undefined":
      if (pos + 1 > buf.length) grow(pos + 1);
      buf[pos++] = 0xf6;
      return;
    case "object":
      break;
    default:
      throw new SluiceError("encode", `cannot encode a ${typeof v} as a value`);
  }
  if (v === null) {
    if (pos + 1 > buf.length) grow(pos + 1);
    buf[pos++] = 0xf6;
    return;
  }
  if (++depth > MAX_DEPTH) {
    throw new SluiceError("encode", `value nested deeper than ${MAX_DEPTH} levels (a cycle?)`);
  }
  if (Array.isArray(v)) {
    const len = v.length;
    head(4, len);
    for (let i = 0; i < len; i++) write(v[i], depth);
    return;
  }
  if (v instanceof Uint8Array) {
    writeBytes(v);
    return;
  }
  if (v instanceof Map) {
    head(5, v.size);
    for (const [k, x] of v) {
      write(k, depth);
      write(x, depth);
    }
    return;
  }
  if (v instanceof Set) {
    head(4, v.size);
    for (const x of v) write(x, depth);
    return;
  }
  if (v instanceof ArrayBuffer) {
    writeBytes(new Uint8Array(v));
    return;
  }
  if (v instanceof Tagged) {
    head(6, v.tag);
    write(v.value, depth);
    return;
  }
  if (ArrayBuffer.isView(v)) {
    // Other typed arrays: their elements, as an array.
    const len = v.length;
    head(4, len);
    for (let i = 0; i < len; i++) write(v[i], depth);
    return;
  }
  if (typeof v.toJSON === "function") {
    write(v.toJSON(), depth);
    return;
  }
  const keys = Object.keys(v);
  let n = keys.length;
  for (let i = 0; i < keys.length; i++) if (v[keys[i]] === undefined) n--;
  head(5, n);
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i];
    const x = v[k];
    if (x === undefined) continue;
    writeString(k);
    write(x, depth);
  }
}

/** Encodes a JS value as CBOR bytes (a fresh Uint8Array). */
export function encode(value) {
  // Re-entrant (a toJSON may encode): each call writes after what the calls it is nested in
  // have written so far, and takes only its own bytes.
  const start = pos;
  if (depthOfCalls++ === 0) pos = 0;
  const from = depthOfCalls === 1 ? 0 : start;
  try {
    write(value, 0);
    return buf.slice(from, pos);
  } finally {
    pos = depthOfCalls === 1 ? 0 : start;
    depthOfCalls--;
  }
}

let depthOfCalls = 0;

// ---------------------------------------------------------------------------------------
// Decoding.

const BREAK = Symbol("break");

const EMPTY = new Uint8Array(0);
let data = EMPTY;
let at = 0;
let dv = null; // a DataView of `data`, made when a float needs one

function view8() {
  if (dv === null) dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return dv;
}

function fail(msg) {
  throw new SluiceError("decode", `invalid CBOR: ${msg} (at byte ${at})`);
}

function need(n) {
  if (at + n > data.length) fail("unexpected end of input");
}

// The argument of a head; number when it fits 2^53, BigInt beyond; -1 for indefinite.
function arg(ai) {
  if (ai < 24) return ai;
  switch (ai) {
    case 24:
      need(1);
      return data[at++];
    case 25:
      need(2);
      at += 2;
      return (data[at - 2] << 8) | data[at - 1];
    case 26:
      need(4);
      at += 4;
      return u32(at - 4);
    case 27: {
      need(8);
      const hi = u32(at);
      const lo = u32(at + 4);
      at += 8;
      if (hi < 0x200000) return hi * TWO32 + lo;
      return (BigInt(hi) << 32n) | BigInt(lo);
    }
    case 31:
      return -1;
    default:
      return fail(`reserved additional information ${ai}`);
  }
}

function u32(i) {
  return data[i] * 0x1000000 + ((data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3]);
}

function length(ai, what) {
  const n = arg(ai);
  if (typeof n === "bigint") fail(`${what} too long`);
  return n;
}

function half(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return sign * f * 2 ** -24;
  if (e === 31) return f ? NaN : sign * Infinity;
  return sign * (1 + f / 1024) * 2 ** (e - 15);
}

function utf8(start, end) {
  if (end - start <= 24) {
    // Short ASCII text (most keys and words): build the string directly.
    let s = "";
    let i = start;
    for (; i < end; i++) {
      const b = data[i];
      if (b >= 0x80) break;
      s += String.fromCharCode(b);
    }
    if (i === end) return s;
  } else {
    let i = start;
    while (i < end && data[i] < 0x80) i++;
    if (i === end) return chars(data.subarray(start, end));
  }
  const units = [];
  let i = start;
  while (i < end) {
    const b = data[i++];
    if (b < 0x80) {
      units.push(b);
      continue;
    }
    let c;
    let extra;
    let min;
    if (b >= 0xc2 && b < 0xe0) {
      c = b & 0x1f;
      extra = 1;
      min = 0x80;
    } else if (b >= 0xe0 && b < 0xf0) {
      c = b & 0x0f;
      extra = 2;
      min = 0x800;
    } else if (b >= 0xf0 && b < 0xf5) {
      c = b & 0x07;
      extra = 3;
      min = 0x10000;
    } else {
      return fail("invalid UTF-8 in a text string");
    }
    if (i + extra > end) fail("truncated UTF-8 in a text string");
    for (let k = 0; k < extra; k++) {
      const x = data[i++];
      if ((x & 0xc0) !== 0x80) fail("invalid UTF-8 in a text string");
      c = (c << 6) | (x & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c < 0xe000)) {
      fail("invalid UTF-8 in a text string");
    }
    if (c >= 0x10000) {
      c -= 0x10000;
      units.push(0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
    } else {
      units.push(c);
    }
  }
  return chars(units);
}

function chars(units) {
  const n = units.length;
  if (n <= 4096) return String.fromCharCode.apply(null, units);
  let s = "";
  for (let i = 0; i < n; i += 4096) {
    s += String.fromCharCode.apply(null, units.slice(i, i + 4096));
  }
  return s;
}

function bigOf(bytes) {
  let n = 0n;
  for (let i = 0; i < bytes.length; i++) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);
const SAFE_MIN = -SAFE_MAX;

// Compare BigInts with BigInts only: QuickJS gets some BigInt/Number comparisons wrong
// (-(2n ** 63n) >= -(2 ** 53) is true there).
function intOf(n) {
  return n >= SAFE_MIN && n <= SAFE_MAX ? Number(n) : n;
}

function read(depth) {
  need(1);
  const ib = data[at++];
  return readMajor(ib >> 5, ib & 0x1f, depth);
}

function readMajor(major, ai, depth) {
  switch (major) {
    case 0: {
      if (ai === 31) return fail("indefinite-length integer");
      return arg(ai);
    }
    case 1: {
      if (ai === 31) return fail("indefinite-length integer");
      const n = arg(ai);
      if (typeof n === "bigint") return intOf(-1n - n);
      return n < Number.MAX_SAFE_INTEGER ? -1 - n : -1n - BigInt(n);
    }
    case 2: {
      const n = length(ai, "byte string");
      if (n === -1) return chunks(2);
      need(n);
      at += n;
      return data.slice(at - n, at);
    }
    case 3: {
      const n = length(ai, "text string");
      if (n === -1) return chunks(3);
      need(n);
      at += n;
      return utf8(at - n, at);
    }
    case 4: {
      if (depth > MAX_DEPTH) fail(`nested deeper than ${MAX_DEPTH} levels`);
      const n = length(ai, "array");
      if (n === -1) {
        const out = [];
        for (;;) {
          const x = read(depth + 1);
          if (x === BREAK) return out;
          out.push(x);
        }
      }
      if (n > data.length - at) fail("array longer than the input");
      const out = new Array(n);
      for (let i = 0; i < n; i++) out[i] = item(depth + 1);
      return out;
    }
    case 5: {
      if (depth > MAX_DEPTH) fail(`nested deeper than ${MAX_DEPTH} levels`);
      const n = length(ai, "map");
      if (n !== -1 && n > data.length - at) fail("map longer than the input");
      return map(n, depth + 1);
    }
    case 6: {
      const tag = arg(ai);
      if (tag === -1) fail("indefinite tag");
      const v = item(depth + 1);
      if ((tag === 2 || tag === 3) && v instanceof Uint8Array) {
        const n = bigOf(v);
        return intOf(tag === 2 ? n : -1n - n);
      }
      return v;
    }
    default:
      return simple(ai);
  }
}

function simple(ai) {
  switch (ai) {
    case 20:
      return false;
    case 21:
      return true;
    case 22:
      return null;
    case 23:
      return undefined;
    case 24:
      need(1);
      return new Simple(data[at++]);
    case 25:
      need(2);
      at += 2;
      return half((data[at - 2] << 8) | data[at - 1]);
    case 26:
      need(4);
      at += 4;
      return view8().getFloat32(at - 4);
    case 27:
      need(8);
      at += 8;
      return view8().getFloat64(at - 8);
    case 31:
      return BREAK;
    default:
      if (ai < 20) return new Simple(ai);
      return fail(`reserved simple value ${ai}`);
  }
}

// An item where a break is not allowed.
function item(depth) {
  const v = read(depth);
  if (v === BREAK) fail("unexpected break");
  return v;
}

function chunks(major) {
  const parts = [];
  let total = 0;
  for (;;) {
    need(1);
    const ib = data[at++];
    if (ib === 0xff) break;
    if (ib >> 5 !== major || (ib & 0x1f) === 31) fail("bad chunk in an indefinite-length string");
    const n = length(ib & 0x1f, "string chunk");
    need(n);
    parts.push(major === 2 ? data.subarray(at, at + n) : utf8(at, at + n));
    at += n;
    total += n;
  }
  if (major === 3) return parts.join("");
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function map(n, depth) {
  let obj = {};
  let m = null; // a Map once a key is not a string
  for (let i = 0; n === -1 || i < n; i++) {
    const k = read(depth);
    if (k === BREAK) {
      if (n === -1) break;
      fail("unexpected break");
    }
    const v = item(depth);
    if (m === null && typeof k === "string") {
      if (k === "__proto__") {
        Object.defineProperty(obj, k, { value: v, enumerable: true, writable: true, configurable: true });
      } else {
        obj[k] = v;
      }
    } else {
      if (m === null) {
        m = new Map();
        for (const key of Object.keys(obj)) m.set(key, obj[key]);
        obj = null;
      }
      m.set(k, v);
    }
  }
  return m === null ? obj : m;
}

/** Decodes one CBOR value that fills `bytes` exactly. Throws SluiceError("decode", ...). */
export function decode(bytes) {
  // Not re-entrant, and need not be: no user code runs while a value is decoded.
  data = bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes);
  dv = null;
  at = 0;
  const v = item(0);
  if (at !== data.length) fail(`${data.length - at} bytes after the value`);
  data = EMPTY;
  return v;
}
