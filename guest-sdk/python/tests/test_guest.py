import sys
import unittest
from dataclasses import dataclass

from support import Err, FakeHost, t

from sluice import AckReturn, Module, partition_of_key, Partitioner, Path, Schema, SluiceError, Target, cbor, log


@dataclass
class Rec:
    k: str


def key_on(partition, partitions=4):
    return next("k%d" % i for i in range(100) if partition_of_key("k%d" % i, partitions) == partition)


def key_not_on(partition, partitions=4):
    return next("k%d" % i for i in range(100) if partition_of_key("k%d" % i, partitions) != partition)


def make():
    m = Module()
    m.depot("d", Partitioner.hash("k"))
    m.pstate("p", Schema.map(Schema.string(), Schema.int()))
    top = m.stream_topology("s", reads="d")

    @top.handler
    def on(ctx, r: Rec):
        what = r.k
        if what == "none":
            return None
        if what == "null":
            return AckReturn(None)
        if what == "wrapped":
            return AckReturn({"a": 1})
        if what == "sluice-error":
            raise SluiceError("my-code", "my message")
        if what == "exception":
            raise KeyError("missing")
        if what == "exit":
            sys.exit(3)
        if what == "unencodable":
            return object()
        if what == "foreign":
            ctx.pstate("p").increment(Path.key(key_not_on(ctx.record.partition)), 1)
        if what == "print":
            print("hello", "world")
            print("partial", end="")
            print("warned", file=sys.stderr)
            log.error("an error")
            return None
        if what == "hop":
            ctx.hop(Target.partition(1), "h", {"x": [1, 2]})
            return None
        return {"record": r.k, "partition": ctx.record.partition, "batch": ctx.record.batch_id}

    @top.hop_handler("h")
    def h(ctx, payload: dict[str, list[int]]):
        ctx.pstate("p").increment(Path.key(key_on(ctx.record.partition)), sum(payload["x"]))
        return "hop-ack"

    @m.query("q")
    def q(qc, args):
        if args == "write":
            qc.pstate("p").set(Path.key("a"), 1)
        if args == "wrapped":
            return AckReturn(None)
        return {"args": args, "partitions": qc.partitions}

    return m.export()()


HOST = FakeHost(partitions=4)


def call(guest, handler, payload, topology="s", partition=0):
    ctx = t.RecordCtx("d", partition, 7, 4, None)
    HOST.partition = partition
    try:
        return guest.handle(topology, handler, cbor.encode(payload), ctx)
    finally:
        HOST.partition = None


class Dispatch(unittest.TestCase):
    def setUp(self):
        self.host = HOST.install()
        self.host.logs.clear()
        self.host.hops.clear()
        self.guest = make()
        self.guest.define()  # the first call: print() goes to the host's log from here on
        self.addCleanup(setattr, sys, "stdout", sys.__stdout__)
        self.addCleanup(setattr, sys, "stderr", sys.__stderr__)

    def error_of(self, f, *args):
        with self.assertRaises(Err) as e:
            f(*args)
        return e.exception.value.code, e.exception.value.message

    def test_ack_return_values(self):
        self.assertIsNone(call(self.guest, "on-record", {"k": "none"}))
        self.assertEqual(call(self.guest, "on-record", {"k": "null"}), b"\xf6")
        self.assertEqual(cbor.decode(call(self.guest, "on-record", {"k": "wrapped"})), {"a": 1})
        self.assertEqual(
            cbor.decode(call(self.guest, "on-record", {"k": "x"}, partition=2)),
            {"record": "x", "partition": 2, "batch": None},
        )
        self.assertIs(type(call(self.guest, "on-record", {"k": "x"})), bytes)

    def test_error_codes(self):
        e = self.error_of(call, self.guest, "on-record", {"k": "sluice-error"})
        self.assertEqual(e, ("my-code", "my message"))
        e = self.error_of(call, self.guest, "on-record", {"k": "exception"})
        self.assertEqual(e, ("guest-exception", "KeyError: 'missing'"))
        e = self.error_of(call, self.guest, "on-record", {"k": "exit"})
        self.assertEqual(e, ("guest-exception", "SystemExit: 3"))
        code, message = self.error_of(call, self.guest, "on-record", {"k": "unencodable"})
        self.assertEqual(code, "encode")
        code, message = self.error_of(call, self.guest, "on-record", {"wrong": 1})
        self.assertEqual((code, message), ("decode", "cannot decode the record: at `k`: missing field"))
        code, message = self.error_of(self.guest.handle, "s", "on-record", b"\x83\x01", t.RecordCtx("d", 0, 0, 4, None))
        self.assertEqual(code, "decode")
        self.assertTrue(message.startswith("cannot decode the record: truncated CBOR"), message)
        code, message = self.error_of(call, self.guest, "h", {"x": ["a"]})
        self.assertEqual((code, message), ("decode", "cannot decode the hop payload: at `x[0]`: expected an integer, got string 'a'"))
        code, message = self.error_of(call, self.guest, "nope", {})
        self.assertEqual((code, message), ("unknown-handler", "topology `s` has no handler `nope`"))
        code, _ = self.error_of(call, self.guest, "on-record", {}, "no-topology")
        self.assertEqual(code, "unknown-handler")
        code, message = self.error_of(self.guest.query, "nope", cbor.encode({}), 4)
        self.assertEqual((code, message), ("unknown-query", "no query named `nope`"))

    def test_host_errors_keep_the_hosts_code(self):
        code, _ = self.error_of(call, self.guest, "on-record", {"k": "foreign"})
        self.assertEqual(code, "wrong-partition")
        code, _ = self.error_of(self.guest.query, "q", cbor.encode("write"), 4)
        self.assertEqual(code, "read-only")

    def test_hops_and_hop_handlers(self):
        self.assertIsNone(call(self.guest, "on-record", {"k": "hop"}))
        ((target, name, payload),) = self.host.hops
        self.assertEqual((target, name, cbor.decode(payload)), (t.Target_Partition(1), "h", {"x": [1, 2]}))
        self.assertEqual(cbor.decode(call(self.guest, "h", {"x": [1, 2]}, partition=1)), "hop-ack")
        self.assertEqual(self.host.data[("p", 1)], {key_on(1): 3})

    def test_queries(self):
        self.assertEqual(self.host.query(self.guest, "q", {"a": [1, None]}), {"args": {"a": [1, None]}, "partitions": 4})
        self.assertEqual(self.host.query(self.guest, "q", "wrapped"), None)

    def test_print_and_log_reach_the_hosts_log(self):
        call(self.guest, "on-record", {"k": "print"})
        self.assertEqual(
            self.host.logs,
            [("INFO", "hello world"), ("WARN", "warned"), ("ERROR", "an error"), ("INFO", "partial")],
        )


if __name__ == "__main__":
    unittest.main()
