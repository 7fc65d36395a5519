import math
import struct
import unittest

import support  # noqa: F401  (sets up the module path)
from sluice.cbor import CBORError, FrozenDict, Simple, decode, encode

I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
H = bytes.fromhex


class RoundTrips(unittest.TestCase):
    def assertRoundTrip(self, v):
        got = decode(encode(v))
        self.assertEqual(got, v)
        self.assertIs(type(got), type(v))
        return got

    def test_integers_at_the_limits(self):
        for v in [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53 + 1, I64_MAX,
                  2**63, U64_MAX, -1, -24, -25, -256, -257, -65537, -(2**32) - 1, I64_MIN,
                  -(2**64)]:
            self.assertRoundTrip(v)
        # major types 0/1, never floats
        self.assertEqual(encode(U64_MAX), H("1bffffffffffffffff"))
        self.assertEqual(encode(I64_MIN), H("3b7fffffffffffffff"))
        self.assertEqual(encode(-(2**64)), H("3bffffffffffffffff"))
        self.assertEqual(encode(9007199254740993), H("1b0020000000000001"))

    def test_integers_beyond_cbor_are_refused_but_bignums_decode(self):
        # The host would read a bignum back as its byte string, not a number: refuse to write one.
        for v in [2**64, -(2**64) - 1, 2**200]:
            with self.assertRaises(CBORError):
                encode(v)
        self.assertEqual(decode(H("c249010000000000000000")), 2**64)
        self.assertEqual(decode(H("c349010000000000000000")), -(2**64) - 1)

    def test_floats_are_float64(self):
        for v in [0.0, -0.0, 1.5, -0.25, 1e300, 5e-324, math.inf, -math.inf, 1.0]:
            self.assertRoundTrip(v)
            self.assertEqual(len(encode(v)), 9)
        self.assertEqual(encode(1.5), H("fb3ff8000000000000"))
        self.assertTrue(math.isnan(decode(encode(math.nan))))
        self.assertEqual(math.copysign(1, decode(encode(-0.0))), -1)

    def test_half_and_single_floats_decode(self):
        self.assertEqual(decode(H("f93c00")), 1.0)
        self.assertEqual(decode(H("f93e00")), 1.5)
        self.assertEqual(decode(H("f97bff")), 65504.0)
        self.assertEqual(decode(H("f90001")), 5.960464477539063e-8)
        self.assertEqual(decode(H("f9c400")), -4.0)
        self.assertEqual(decode(H("f97c00")), math.inf)
        self.assertTrue(math.isnan(decode(H("f97e00"))))
        self.assertEqual(decode(H("fa47c35000")), 100000.0)
        self.assertEqual(decode(H("fa7f7fffff")), 3.4028234663852886e38)
        self.assertEqual(decode(H("faff800000")), -math.inf)
        self.assertIs(type(decode(H("f93c00"))), float)

    def test_scalars(self):
        for v in [None, True, False, "", "a", "grüße, 世界 🎉", "x" * 1000, b"", b"\x00\xff",
                  bytes(range(256)) * 300]:
            self.assertRoundTrip(v)
        self.assertEqual(encode(True), b"\xf5")
        self.assertEqual(encode(None), b"\xf6")
        self.assertEqual(decode(b"\xf7"), None)  # undefined
        self.assertEqual(encode(bytearray(b"ab")), b"\x42ab")
        self.assertEqual(encode(memoryview(b"ab")), b"\x42ab")

    def test_collections(self):
        v = {"a": [None, False, {"b": []}], "": {}, "ints": [0, -1, U64_MAX, I64_MIN]}
        self.assertRoundTrip(v)
        self.assertEqual(encode((1, 2)), encode([1, 2]))
        self.assertEqual(decode(encode({3})), [3])
        self.assertEqual(decode(encode(frozenset())), [])

    def test_maps_with_non_string_keys(self):
        v = {1: "one", (2, 3): True, b"\x00": None, -5: 1.5, None: 0, 2.5: "f",
             FrozenDict({"k": (1,)}): "map key"}
        got = self.assertRoundTrip(v)
        self.assertIn((2, 3), got)
        # An array key decodes into a tuple, a map key into a FrozenDict, nested too.
        raw = H("a1") + encode([1, {"x": [2]}]) + encode("v")
        (key,) = decode(raw)
        self.assertEqual(key, (1, FrozenDict({"x": (2,)})))
        self.assertEqual(hash(key), hash((1, FrozenDict({"x": (2,)}))))
        self.assertEqual(encode(decode(raw)), raw)
        with self.assertRaises(TypeError):
            key[1]["y"] = 1

    def test_indefinite_lengths(self):
        self.assertEqual(decode(H("5f42010243030405ff")), b"\x01\x02\x03\x04\x05")
        self.assertEqual(decode(H("7f657374726561646d696e67ff")), "streaming")
        self.assertEqual(decode(H("9fff")), [])
        self.assertEqual(decode(H("9f018202039f0405ffff")), [1, [2, 3], [4, 5]])
        self.assertEqual(decode(H("83018202039f0405ff")), [1, [2, 3], [4, 5]])
        self.assertEqual(decode(H("bf61610161629f0203ffff")), {"a": 1, "b": [2, 3]})
        self.assertEqual(decode(H("bf6346756ef563416d7421ff")), {"Fun": True, "Amt": -2})
        self.assertEqual(decode(H("5fff")), b"")
        self.assertEqual(decode(H("7fff")), "")

    def test_tags_are_dropped_and_bignums_become_ints(self):
        self.assertEqual(decode(H("c074323031332d30332d32315432303a30343a30305a")),
                         "2013-03-21T20:04:00Z")
        self.assertEqual(decode(H("c11a514b67b0")), 1363896240)
        self.assertEqual(decode(H("d74401020304")), b"\x01\x02\x03\x04")
        self.assertEqual(decode(H("d818456449455446")), b"dIETF")
        self.assertEqual(decode(H("c249010000000000000000")), 18446744073709551616)
        self.assertEqual(decode(H("c349010000000000000000")), -18446744073709551617)
        self.assertEqual(decode(H("d9010283010203")), [1, 2, 3])  # tag 258 (set)

    def test_simple_values(self):
        self.assertEqual(decode(H("f0")), Simple(16))
        self.assertEqual(decode(H("f8ff")), Simple(255))
        self.assertIs(type(decode(H("f8ff"))), Simple)

    def test_rfc8949_appendix_a_encodings(self):
        # Values whose preferred (shortest) encoding is what `encode` writes.
        for v, hexed in [(0, "00"), (10, "0a"), (23, "17"), (24, "1818"), (100, "1864"),
                         (1000, "1903e8"), (1000000, "1a000f4240"),
                         (1000000000000, "1b000000e8d4a51000"), (-10, "29"), (-100, "3863"),
                         (-1000, "3903e7"), ("IETF", "6449455446"), ("\u00fc", "62c3bc"),
                         ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591"),
                         ([1, [2, 3], [4, 5]], "8301820203820405"),
                         (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
                         ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
                         (["a", {"b": "c"}], "826161a161626163")]:
            self.assertEqual(encode(v).hex(), hexed, v)
            self.assertEqual(decode(H(hexed)), v)

    def test_malformed_input_is_refused(self):
        for hexed in ["", "18", "1901", "62c3", "83", "8301", "a1", "a101", "ff", "0000", "1c",
                      "5f01ff", "5f6161ff", "7f4161ff", "9f", "a1ff", "bf01ff", "c2", "c201",
                      "62c328", "f801", "fc"]:
            with self.assertRaises(CBORError, msg=hexed):
                decode(H(hexed))

    def test_nesting_is_bounded(self):
        with self.assertRaises(CBORError):
            decode(b"\x81" * 100000 + b"\x00")
        deep = []
        for _ in range(100):
            deep = [deep]
        self.assertEqual(decode(encode(deep)), deep)

    def test_cannot_encode(self):
        with self.assertRaises(CBORError):
            encode(object())
        with self.assertRaises(CBORError):
            encode("\ud800")  # a lone surrogate is not Unicode text

    def test_dataclasses_and_subclasses_encode(self):
        from dataclasses import dataclass
        from enum import IntEnum

        @dataclass
        class P:
            key: str
            n: int

        class E(IntEnum):
            A = 3

        self.assertEqual(decode(encode(P("k", 2))), {"key": "k", "n": 2})
        self.assertEqual(encode(E.A), b"\x03")
        self.assertEqual(decode(encode({"x": E.A})), {"x": 3})

    def test_struct_half_precision_matches(self):
        # The codec relies on struct's 'e' format for half floats.
        self.assertEqual(struct.unpack(">e", H("3555"))[0], 0.333251953125)


if __name__ == "__main__":
    unittest.main()
