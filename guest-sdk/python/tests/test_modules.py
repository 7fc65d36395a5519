"""The conformance modules (modules/*-py) on the fake host: the same checks as
modules/conformance_tests.rs where the fake host can answer them."""

import sys
import unittest

from support import Err, FakeHost, load_module_source

from sluice import partition_of_key


class Modules(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost(partitions=4).install()
        self.addCleanup(setattr, sys, "stdout", sys.__stdout__)
        self.addCleanup(setattr, sys, "stderr", sys.__stderr__)

    def append(self, guest, topology, record, key=None, **kw):
        p = partition_of_key(key, 4) if key is not None else kw.pop("partition", 0)
        return self.host.append(guest, topology, topology, record, partition=p, **kw)

    def test_wordcount(self):
        g = load_module_source("modules/wordcount-py/wordcount.py", "wordcount_py_mod").Guest()
        self.assertEqual(self.append(g, "wordcount", {"word": "apple"}, key="apple"), 1)
        self.assertEqual(self.append(g, "wordcount", {"word": "apple"}, key="apple"), 2)
        self.assertIsNone(self.append(g, "sentences", {"text": "The apple and  the pear"}))
        self.assertEqual(
            self.host.query(g, "top-words", {"n": 3}),
            [{"word": "apple", "count": 3}, {"word": "the", "count": 2}, {"word": "and", "count": 1}],
        )
        self.assertEqual(len(self.host.query(g, "top-words", {})), 4)
        with self.assertRaises(Err) as e:
            self.append(g, "wordcount", {"word": 7}, key=7)
        self.assertEqual(e.exception.value.code, "decode")

    def test_probe(self):
        g = load_module_source("modules/probe-py/probe.py", "probe_py_mod").Guest()
        record = {"ints": [0, -1, 2**64 - 1, -(2**63)], "pairs": {1: "one", (2, 3): True}, "b": b"\x00\xff"}
        ack = self.append(g, "echo", record, partition=3)
        self.assertEqual(ack, {"record": record, "depot": "echo", "partition": 3, "offset": 0, "partitions": 4})

        def item(k, n, tag, value):
            return self.append(g, "items", {"key": k, "n": n, "tag": tag, "value": value}, key=k)

        self.assertEqual(item("k1", 5, "red", {"x": 1}), {"total": 5, "tags": 1, "last": {"x": 1}})
        self.assertEqual(item("k1", 2, "red", [1, 2]), {"total": 7, "tags": 1, "last": [1, 2]})
        self.assertEqual(item("k1", 0, "blue", "z"), {"total": None, "tags": 2, "last": "z"})
        item("k2", 3, "red", None)
        item("k3", -1, "red", 1)

        self.append(g, "batches", {"key": "k1"}, key="k1", batch_id=9)
        with self.assertRaises(Err) as e:
            self.append(g, "batches", {"key": "k1"}, key="k1")
        self.assertEqual(e.exception.value.code, "no-batch-id")

        with self.assertRaises(Err) as e:
            self.append(g, "fail", {"code": "no-such-account", "message": "who?"}, partition=2)
        self.assertEqual((e.exception.value.code, e.exception.value.message), ("no-such-account", "who?"))

        self.append(g, "fanout", {"keys": ["a", "b", "c", "a"], "n": 2})
        self.append(g, "fanout", {"keys": ["b"], "n": 5})
        for key, marks in [("a", 4), ("b", 7), ("c", 2), ("zz", 0)]:
            self.assertEqual(self.host.query(g, "mark", {"key": key}), marks)

        args = {"n": [1, 2.5, "x", None], "big": 2**64 - 1}
        self.assertEqual(self.host.query(g, "echo", args), {"args": args, "partitions": 4})
        self.assertEqual(self.host.query(g, "total", {}), 2)
        for k in range(6):
            item("r%d" % k, 1, "t", k)
        self.assertEqual(self.host.query(g, "total", {}), 8)
        self.assertEqual(self.host.query(g, "first-keys", {"n": 4}), ["k2", "k3", "r0", "r1"])


if __name__ == "__main__":
    unittest.main()
