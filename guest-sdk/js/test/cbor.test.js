import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

register("../testing/hooks.mjs", import.meta.url);
const { encode, decode, Tagged, Simple, SluiceError } = await import("../src/index.js");

const hex = (b) => Buffer.from(b).toString("hex");
const bytes = (h) => new Uint8Array(Buffer.from(h.replace(/\s/g, ""), "hex"));
const enc = (v) => hex(encode(v));
const dec = (h) => decode(bytes(h));

function roundTrip(v) {
  assert.deepStrictEqual(decode(encode(v)), v);
}

test("integers encode as CBOR integers at every head size (RFC 8949 appendix A)", () => {
  const vectors = [
    [0, "00"], [1, "01"], [10, "0a"], [23, "17"], [24, "1818"], [25, "1819"], [100, "1864"],
    [255, "18ff"], [256, "190100"], [1000, "1903e8"], [65535, "19ffff"], [65536, "1a00010000"],
    [1000000, "1a000f4240"], [4294967295, "1affffffff"], [4294967296, "1b0000000100000000"],
    [1000000000000, "1b000000e8d4a51000"], [Number.MAX_SAFE_INTEGER, "1b001fffffffffffff"],
    [-1, "20"], [-10, "29"], [-24, "37"], [-25, "3818"], [-100, "3863"], [-1000, "3903e7"],
    [-4294967296, "3affffffff"], [-Number.MAX_SAFE_INTEGER, "3b001ffffffffffffe"],
  ];
  for (const [v, h] of vectors) {
    assert.equal(enc(v), h, `encode ${v}`);
    assert.equal(dec(h), v, `decode ${h}`);
  }
});

test("integers beyond 2^53 decode as BigInt and round-trip exactly", () => {
  assert.equal(dec("1b0020000000000001"), 9007199254740993n);
  assert.equal(dec("1bffffffffffffffff"), 18446744073709551615n);
  assert.equal(dec("3b7fffffffffffffff"), -9223372036854775808n);
  assert.equal(dec("3bffffffffffffffff"), -18446744073709551616n);
  assert.equal(dec("3b001fffffffffffff"), -9007199254740992n, "-2^53 is not a safe integer");
  assert.equal(enc(9007199254740993n), "1b0020000000000001");
  assert.equal(enc(18446744073709551615n), "1bffffffffffffffff");
  assert.equal(enc(-9223372036854775808n), "3b7fffffffffffffff");
  assert.equal(enc(-18446744073709551616n), "3bffffffffffffffff");
  assert.equal(enc(5n), "05", "a small BigInt is an ordinary integer");
  assert.equal(enc(-5n), "24");
  for (const v of [9007199254740993n, -9007199254740993n, 2n ** 63n, -(2n ** 63n), 2n ** 64n - 1n]) roundTrip(v);
});

test("BigInts beyond 64 bits are bignums (tags 2 and 3), decoded back to BigInt", () => {
  assert.equal(enc(18446744073709551616n), "c249010000000000000000");
  assert.equal(enc(-18446744073709551617n), "c349010000000000000000");
  roundTrip(2n ** 100n);
  roundTrip(-(2n ** 100n));
  assert.equal(dec("c249010000000000000000"), 18446744073709551616n);
  assert.equal(dec("c24101"), 1, "a small bignum is a number");
  assert.equal(dec("c34100"), -1);
  assert.equal(dec("c25f4101ff"), 1, "an indefinite-length bignum");
});

test("other numbers are float64; half and single floats decode", () => {
  assert.equal(enc(1.5), "fb3ff8000000000000");
  assert.equal(enc(-0.25), "fbbfd0000000000000");
  assert.equal(enc(1e300), "fb7e37e43c8800759c");
  assert.equal(enc(2 ** 53), "fb4340000000000000", "2^53 is not a safe integer");
  assert.equal(enc(-0), "fb8000000000000000", "-0 keeps its sign");
  assert.equal(enc(Infinity), "fb7ff0000000000000");
  assert.equal(enc(NaN), "fb7ff8000000000000");
  const halves = [
    ["f90000", 0], ["f98000", -0], ["f93c00", 1], ["f93e00", 1.5], ["f97bff", 65504],
    ["f90001", 5.960464477539063e-8], ["f90400", 0.00006103515625], ["f9c400", -4],
    ["f97c00", Infinity], ["f9fc00", -Infinity],
  ];
  for (const [h, v] of halves) assert.ok(Object.is(dec(h), v), `${h} -> ${v}`);
  assert.ok(Number.isNaN(dec("f97e00")));
  assert.equal(dec("fa47c35000"), 100000);
  assert.equal(dec("fa7f7fffff"), 3.4028234663852886e38);
  assert.equal(dec("fa7f800000"), Infinity);
  assert.equal(dec("fb3ff199999999999a"), 1.1);
  roundTrip(0.1);
  roundTrip(-1e-300);
});

test("text is UTF-8: multibyte, surrogate pairs, NUL; lone surrogates become U+FFFD", () => {
  assert.equal(enc(""), "60");
  assert.equal(enc("a"), "6161");
  assert.equal(enc("\u00fc"), "62c3bc");
  assert.equal(enc("\u6c34"), "63e6b0b4");
  assert.equal(enc("\ud800\udd51"), "64f0908591");
  assert.equal(enc("\ud800"), "63efbfbd");
  assert.equal(enc("a\u0000b"), "63610062");
  for (const s of ["grüße, 世界 🎉", "x".repeat(30), "é".repeat(5000), "🎉".repeat(3000), "\u0000"]) roundTrip(s);
  assert.equal(dec("7f657374726561646d696e67ff"), "streaming", "indefinite-length text");
  assert.throws(() => dec("62c328"), (e) => e instanceof SluiceError && e.code === "decode");
  assert.throws(() => dec("63eda080"), (e) => e.code === "decode", "an encoded surrogate");
  assert.throws(() => dec("62c0af"), (e) => e.code === "decode", "an overlong encoding");
});

test("bytes are Uint8Array (and ArrayBuffer encodes as bytes)", () => {
  assert.equal(enc(new Uint8Array([0, 255, 16])), "4300ff10");
  assert.equal(enc(new Uint8Array([1, 2]).buffer), "420102");
  assert.equal(enc(Buffer.from([7])), "4107");
  assert.deepStrictEqual(dec("4300ff10"), new Uint8Array([0, 255, 16]));
  assert.deepStrictEqual(dec("5f42010243030405ff"), new Uint8Array([1, 2, 3, 4, 5]), "indefinite");
  assert.deepStrictEqual(dec("5fff"), new Uint8Array([]));
  roundTrip(new Uint8Array(300).fill(9));
});

test("arrays, objects, Maps with non-string keys, Sets", () => {
  assert.equal(enc([]), "80");
  assert.equal(enc([1, [2, 3], [4, 5]]), "8301820203820405");
  assert.equal(enc({ a: 1, b: [2, 3] }), "a26161016162820203");
  assert.equal(enc(new Map([[1, 2], [3, 4]])), "a201020304");
  assert.equal(enc(new Set(["a", "b"])), "826161" + "6162");
  assert.deepStrictEqual(dec("a26161016162820203"), { a: 1, b: [2, 3] });
  const m = dec("a201020304");
  assert.ok(m instanceof Map);
  assert.deepStrictEqual([...m], [[1, 2], [3, 4]]);
  const mixed = dec("a2616101" + "0102"); // {"a": 1, 1: 2}: one non-string key makes a Map
  assert.ok(mixed instanceof Map);
  assert.deepStrictEqual([...mixed], [["a", 1], [1, 2]]);
  const composite = new Map([[[2, 3], true], [new Uint8Array([1]), null], [null, 1.5]]);
  assert.deepStrictEqual(decode(encode(composite)), composite);
  roundTrip({ nested: { a: [null, false, { b: [] }], "": {} }, n: -7 });
  roundTrip(Array.from({ length: 1000 }, (_, i) => i));
});

test("indefinite-length arrays and maps", () => {
  assert.deepStrictEqual(dec("9fff"), []);
  assert.deepStrictEqual(dec("9f018202039f0405ffff"), [1, [2, 3], [4, 5]]);
  assert.deepStrictEqual(dec("83018202039f0405ff"), [1, [2, 3], [4, 5]]);
  assert.deepStrictEqual(dec("bf61610161629f0203ffff"), { a: 1, b: [2, 3] });
  assert.deepStrictEqual(dec("826161bf61626163ff"), ["a", { b: "c" }]);
  assert.deepStrictEqual(dec("bf6346756ef563416d7421ff"), { Fun: true, Amt: -2 });
  const m = dec("bf0102ff");
  assert.ok(m instanceof Map);
  assert.equal(m.get(1), 2);
});

test("tags are dropped, their content kept", () => {
  assert.equal(dec("c074323031332d30332d32315432303a30343a30305a"), "2013-03-21T20:04:00Z");
  assert.equal(dec("c11a514b67b0"), 1363896240);
  assert.deepStrictEqual(dec("d82076687474703a2f2f7777772e6578616d706c652e636f6d"), "http://www.example.com");
  assert.deepStrictEqual(dec("d9d9f7a0"), {}, "self-describe tag");
  assert.equal(enc(new Tagged(1, 1363896240)), "c11a514b67b0");
});

test("null, undefined, booleans, simple values", () => {
  assert.equal(enc(null), "f6");
  assert.equal(enc(undefined), "f6", "undefined encodes as null");
  assert.equal(enc([undefined]), "81f6");
  assert.equal(enc({ a: undefined, b: 1 }), "a1616201", "undefined properties are skipped");
  assert.equal(enc(true), "f5");
  assert.equal(enc(false), "f4");
  assert.equal(dec("f6"), null);
  assert.equal(dec("f7"), undefined);
  assert.equal(dec("f5"), true);
  assert.equal(dec("f4"), false);
  assert.deepStrictEqual(dec("f0"), new Simple(16));
  assert.deepStrictEqual(dec("f8ff"), new Simple(255));
});

test("objects with toJSON, __proto__ keys, typed arrays", () => {
  assert.equal(enc(new Date(0)), enc("1970-01-01T00:00:00.000Z"));
  const o = dec("a1695f5f70726f746f5f5f01"); // {"__proto__": 1}
  assert.deepStrictEqual(Object.keys(o), ["__proto__"]);
  assert.equal(Object.getPrototypeOf(o), Object.prototype);
  assert.equal(enc(o), "a1695f5f70726f746f5f5f01");
  assert.equal(enc(new Uint16Array([1, 300])), "8201190" + "12c");
});

test("what cannot be encoded or decoded is an SDK error", () => {
  const code = (c) => (e) => e instanceof SluiceError && e.code === c;
  assert.throws(() => encode(() => 1), code("encode"));
  assert.throws(() => encode({ s: Symbol("x") }), code("encode"));
  const cyclic = [];
  cyclic.push(cyclic);
  assert.throws(() => encode(cyclic), code("encode"));
  for (const h of ["", "18", "1b00", "62", "8201", "a101", "0001", "1c", "ff", "9f", "5f01ff", "7f4100ff"]) {
    assert.throws(() => dec(h), code("decode"), `decode ${JSON.stringify(h)}`);
  }
  assert.throws(() => dec("9b00000000ffffffff"), code("decode"), "a huge array length");
});

test("encoding reuses one buffer but returns independent copies", () => {
  const a = encode("first");
  const b = encode("second value that is longer");
  assert.equal(decode(a), "first");
  assert.equal(decode(b), "second value that is longer");
  const big = encode("x".repeat(100000));
  assert.equal(decode(big).length, 100000);
  assert.equal(decode(encode(1)), 1);
  const nested = { toJSON: () => ({ inner: hex(encode([1, 2])) }) };
  assert.deepStrictEqual(decode(encode([nested, 3])), [{ inner: "820102" }, 3], "re-entrant encode");
});
