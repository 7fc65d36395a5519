import unittest

import support  # noqa: F401

from sluice import SluiceError, partition_of_key
from sluice.partition import _encode_key, _stable_hash


def enc(k):
    out = bytearray()
    _encode_key(k, out)
    return bytes(out)


class Partitions(unittest.TestCase):
    def test_hash_matches_the_hosts_pinned_values(self):
        # The same values host/src/partition.rs and guest-sdk/src/partition.rs pin.
        self.assertEqual(_stable_hash(b""), 0xF52A15E9A9B5E89B)
        self.assertEqual(_stable_hash(b"apple"), 0xBA8E799DCEB3BCB1)
        self.assertEqual(_stable_hash(b"apple") % 8, 1)

    def test_encoding_matches_the_documented_layout(self):
        self.assertEqual(enc("ab"), bytes([0x30, 0x61, 0x62, 0, 0]))
        self.assertEqual(enc("a\0"), bytes([0x30, 0x61, 0, 0xFF, 0, 0]))
        self.assertEqual(enc(-1), bytes([0x10, 0x7F] + [0xFF] * 7))
        self.assertEqual(enc(0), bytes([0x10, 0x80] + [0] * 7))
        self.assertEqual(enc((1, "a")), bytes([0x50, 0x10, 0x80, 0, 0, 0, 0, 0, 0, 1, 0x30, 0x61, 0, 0, 0]))
        self.assertEqual(enc(None), b"\x01")
        self.assertEqual(enc(True), b"\x03")
        with self.assertRaises(SluiceError):
            partition_of_key({1: 2}, 8)
        with self.assertRaises(SluiceError):
            partition_of_key(2**64 - 1, 8)

    def test_agrees_with_the_host_on_many_keys(self):
        # The fingerprint host/src/partition.rs and the Rust SDK pin for 30,000 keys.
        acc = 0
        for i in range(10_000):
            s = "u%d" % i
            for p in (8, 7):
                for q in (partition_of_key(s, p), partition_of_key(i, p), partition_of_key((i, s), p)):
                    acc = (acc * 31 + q) & 0xFFFFFFFFFFFFFFFF
        self.assertEqual(acc, 1_065_759_859_041_447_187)


if __name__ == "__main__":
    unittest.main()
