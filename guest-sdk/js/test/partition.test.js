import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

register("../testing/hooks.mjs", import.meta.url);
const { partitionOfKey, SluiceError } = await import("../src/index.js");
const { stableHash, encodeKey } = await import("../src/partition.js");

test("the hash matches the host's pinned values", () => {
  assert.equal(stableHash([]), 0xf52a15e9a9b5e89bn);
  assert.equal(stableHash([...Buffer.from("apple")]), 0xba8e799dceb3bcb1n);
});

test("the key encoding matches docs/key-encoding.md", () => {
  assert.deepStrictEqual(encodeKey("ab"), [0x30, 0x61, 0x62, 0, 0]);
  assert.deepStrictEqual(encodeKey("a\0"), [0x30, 0x61, 0, 0xff, 0, 0]);
  assert.deepStrictEqual(encodeKey(-1), [0x10, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assert.deepStrictEqual(encodeKey(0), [0x10, 0x80, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepStrictEqual(encodeKey([1, "a"]), [0x50, 0x10, 0x80, 0, 0, 0, 0, 0, 0, 1, 0x30, 0x61, 0, 0, 0]);
  assert.deepStrictEqual(encodeKey(null), [0x01]);
  assert.deepStrictEqual(encodeKey(true), [0x03]);
  assert.throws(() => partitionOfKey(new Map([[1, 2]]), 8), (e) => e instanceof SluiceError && e.code === "not-a-key");
  assert.throws(() => partitionOfKey({ a: 1 }, 8), (e) => e.code === "not-a-key");
  assert.throws(() => partitionOfKey(2n ** 64n - 1n, 8), (e) => e.code === "not-a-key");
});

test("apple lands where the host puts it", () => {
  assert.equal(stableHash([...Buffer.from("apple")]) % 8n, 1n);
  // A 4-partition wordcount on the host routes {"word": "apple"} to partition 2.
  assert.equal(partitionOfKey("apple", 4), 2);
});

// The same fingerprint the Rust SDK and host/src/partition.rs pin: where 30,000 keys
// (strings, integers, composite keys) land on 8 and 7 partitions.
test("agrees with the host on many keys", () => {
  let acc = 0n;
  for (let i = 0; i < 10000; i++) {
    const s = `u${i}`;
    for (const p of [8, 7]) {
      for (const q of [partitionOfKey(s, p), partitionOfKey(i, p), partitionOfKey([i, s], p)]) {
        acc = BigInt.asUintN(64, acc * 31n + BigInt(q));
      }
    }
  }
  assert.equal(acc, 1065759859041447187n);
});

test("every key lands in range", () => {
  for (const p of [1, 2, 3, 8, 1024]) {
    for (let i = 0; i < 1000; i++) assert.ok(partitionOfKey(`u${i}`, p) < p);
  }
});
