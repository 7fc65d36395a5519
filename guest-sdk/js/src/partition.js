// Which partition owns a key, computed inside the module exactly as the host computes it: a
// mirror of the host's order-preserving key encoding (docs/key-encoding.md) and its stable
// hash (FNV-1a 64, then the splitmix64 finalizer), like the Rust SDK's `partition_of_key`.

import { SluiceError } from "./error.js";

const NULL = 0x01;
const FALSE = 0x02;
const TRUE = 0x03;
const INT = 0x10;
const FLOAT = 0x20;
const TEXT = 0x30;
const BYTES = 0x40;
const LIST = 0x50;

const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;
const MASK64 = (1n << 64n) - 1n;

const scratch = new DataView(new ArrayBuffer(8));

/** The host's key encoding of a JS value (as the SDK would encode it to CBOR). */
export function encodeKey(key, out = []) {
  switch (typeof key) {
    case "undefined":
      out.push(NULL);
      return out;
    case "boolean":
      out.push(key ? TRUE : FALSE);
      return out;
    case "number":
      if (Number.isSafeInteger(key) && (key !== 0 || 1 / key > 0)) return int(BigInt(key), out);
      return float(key, out);
    case "bigint":
      if (key < I64_MIN || key > I64_MAX) {
        throw new SluiceError("not-a-key", "key integer out of the i64 range");
      }
      return int(key, out);
    case "string":
      out.push(TEXT);
      return escape(utf8(key), out);
    case "object":
      break;
    default:
      throw new SluiceError("not-a-key", `a ${typeof key} cannot be a key`);
  }
  if (key === null) {
    out.push(NULL);
    return out;
  }
  if (key instanceof Uint8Array) {
    out.push(BYTES);
    return escape(key, out);
  }
  if (Array.isArray(key) || key instanceof Set) {
    out.push(LIST);
    for (const k of key) encodeKey(k, out);
    out.push(0);
    return out;
  }
  throw new SluiceError("not-a-key", "a map cannot be a key");
}

function int(i, out) {
  scratch.setBigUint64(0, BigInt.asUintN(64, i) ^ (1n << 63n));
  out.push(INT);
  for (let k = 0; k < 8; k++) out.push(scratch.getUint8(k));
  return out;
}

function float(f, out) {
  scratch.setFloat64(0, f);
  const bits = scratch.getBigUint64(0);
  const ordered = bits >> 63n === 0n ? bits ^ (1n << 63n) : ~bits & MASK64;
  scratch.setBigUint64(0, ordered);
  out.push(FLOAT);
  for (let k = 0; k < 8; k++) out.push(scratch.getUint8(k));
  return out;
}

function escape(bytes, out) {
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    out.push(b);
    if (b === 0) out.push(0xff);
  }
  out.push(0, 0);
  return out;
}

function utf8(s) {
  const out = [];
  for (const ch of s) {
    let c = ch.codePointAt(0);
    if (c >= 0xd800 && c < 0xe000) c = 0xfffd;
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
    else {
      out.push(
        0xf0 | (c >> 18),
        0x80 | ((c >> 12) & 0x3f),
        0x80 | ((c >> 6) & 0x3f),
        0x80 | (c & 0x3f),
      );
    }
  }
  return out;
}

/** The stable 64-bit hash (a BigInt) of a key's encoded bytes. */
export function stableHash(bytes) {
  // FNV-1a 64 on two 32-bit halves: h * 0x100000001b3 = h * 0x1b3 + (h << 40).
  let hi = 0xcbf29ce4;
  let lo = 0x84222325;
  for (let i = 0; i < bytes.length; i++) {
    lo = (lo ^ bytes[i]) >>> 0;
    const l = lo * 0x1b3;
    const carry = Math.floor(l / 0x100000000);
    const h = hi * 0x1b3 + carry + ((lo << 8) >>> 0);
    lo = l >>> 0;
    hi = h >>> 0;
  }
  let x = (BigInt(hi) << 32n) | BigInt(lo);
  x ^= x >> 30n;
  x = (x * 0xbf58476d1ce4e5b9n) & MASK64;
  x ^= x >> 27n;
  x = (x * 0x94d049bb133111ebn) & MASK64;
  return x ^ (x >> 31n);
}

/**
 * The partition (of `partitions`) that owns `key`: where a hop to Target.key(key) goes,
 * where a hash depot routes a record whose field is `key`, where PState entries under the
 * top-level key `key` live. Throws SluiceError("not-a-key") for maps and integers outside
 * the i64 range, like the host.
 */
export function partitionOfKey(key, partitions) {
  const p = BigInt(Math.max(1, partitions >>> 0));
  return Number(stableHash(encodeKey(key)) % p);
}
