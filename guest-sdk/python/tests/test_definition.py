import unittest
from dataclasses import dataclass

from support import load_module_source, t

from sluice import Module, Partitioner, Schema


def names(defs):
    return [d.name for d in defs]


class Builder(unittest.TestCase):
    def test_wordcount_declares_what_the_rust_reference_declares(self):
        wc = load_module_source("modules/wordcount-py/wordcount.py", "wordcount_py_def")
        d = wc.Guest().define()
        self.assertEqual(
            d,
            t.ModuleDefinition(
                depots=[
                    t.DepotDef("words", t.Partitioner_Hash(["word"])),
                    t.DepotDef("sentences", t.Partitioner_Random()),
                ],
                pstates=[t.PstateDef("counts", "map<string, int>")],
                stream_topologies=[
                    t.StreamTopologyDef("wordcount", ["words"], "on-record", []),
                    t.StreamTopologyDef("sentences", ["sentences"], "on-record", ["count-word"]),
                ],
                microbatch_topologies=[],
                partitions_hint=None,
                queries=["top-words"],
            ),
        )
        # define is built once and answers the same every time
        self.assertIs(wc.Guest().define(), d)

    def test_probe_declares_what_the_rust_reference_declares(self):
        probe = load_module_source("modules/probe-py/probe.py", "probe_py_def")
        d = probe.Guest().define()
        self.assertEqual(
            [(x.name, x.partitioner) for x in d.depots],
            [
                ("echo", t.Partitioner_Random()),
                ("items", t.Partitioner_Hash(["key"])),
                ("fail", t.Partitioner_Direct()),
                ("fanout", t.Partitioner_Random()),
            ],
        )
        self.assertEqual(
            [(p.name, p.schema) for p in d.pstates],
            [
                ("totals", "map<string, int>"),
                ("tags", "map<string, set<string>>"),
                ("history", "map<string, list<any>>"),
                ("marks", "map<string, int>"),
                ("batches", "map<string, int>"),
            ],
        )
        self.assertEqual(
            d.stream_topologies,
            [
                t.StreamTopologyDef("echo", ["echo"], "on-record", []),
                t.StreamTopologyDef("items", ["items"], "on-record", []),
                t.StreamTopologyDef("fail", ["fail"], "on-record", []),
                t.StreamTopologyDef("fanout", ["fanout"], "on-record", ["mark"]),
            ],
        )
        self.assertEqual(
            d.microbatch_topologies, [t.StreamTopologyDef("batches", ["items"], "on-record", [])]
        )
        self.assertEqual(d.queries, ["echo", "total", "first-keys", "mark"])
        self.assertIsNone(d.partitions_hint)

    def test_schemas(self):
        self.assertEqual(str(Schema.map(Schema.string(), Schema.int())), "map<string, int>")
        self.assertEqual(str(Schema.set(Schema.bytes())), "set<bytes>")
        self.assertEqual(str(Schema.list(Schema.any()).subindexed()), "subindexed list<any>")
        rec = Schema.record({"balance": Schema.int(), "history": Schema.list(Schema.any()).subindexed()})
        self.assertEqual(str(rec), "{balance: int, history: subindexed list<any>}")
        self.assertEqual(str(Schema.record(a=Schema.bool(), b=Schema.float())), "{a: bool, b: float}")
        self.assertEqual(str(Schema.map(Schema.list(Schema.string()), Schema.float())), "map<list<string>, float>")

    def test_partitioners(self):
        self.assertEqual(Partitioner.hash("user.id")._wit, t.Partitioner_Hash(["user", "id"]))
        self.assertEqual(Partitioner.hash(["a", "b.c"])._wit, t.Partitioner_Hash(["a", "b.c"]))
        self.assertEqual(Partitioner.random()._wit, t.Partitioner_Random())
        self.assertEqual(Partitioner.direct()._wit, t.Partitioner_Direct())
        with self.assertRaises(ValueError):
            Partitioner.hash("a..b")

    def test_chained_declarations_hint_and_several_depots(self):
        m = Module(partitions_hint=8)
        m.depot("a", Partitioner.random()).depot("b", Partitioner.direct())
        m.pstate("p", "map<string, any>")
        top = m.microbatch_topology("mb", reads=["a", "b"])
        top.handler(lambda ctx, r: None)
        top.hop_handler("h1")(lambda ctx, p: None)
        d = m.definition()
        self.assertEqual(d.partitions_hint, 8)
        self.assertEqual(d.pstates, [t.PstateDef("p", "map<string, any>")])
        self.assertEqual(d.microbatch_topologies, [t.StreamTopologyDef("mb", ["a", "b"], "on-record", ["h1"])])
        self.assertEqual(d.stream_topologies, [])

    def test_mistakes_are_refused_at_declaration(self):
        m = Module()
        m.depot("d", Partitioner.random())
        with self.assertRaises(ValueError):
            m.depot("d", Partitioner.random())
        with self.assertRaises(TypeError):
            m.depot("e", "random")
        top = m.stream_topology("s", reads="d")
        with self.assertRaises(ValueError):
            m.stream_topology("s")
        with self.assertRaises(ValueError):
            m.microbatch_topology("s")

        @top.handler
        def h(ctx, r):
            pass

        with self.assertRaises(ValueError):
            top.handler(h)
        top.hop_handler("x")(h)
        with self.assertRaises(ValueError):
            top.hop_handler("x")(h)
        with self.assertRaises(ValueError):
            top.hop_handler("on-record")(h)
        m.query("q")(h)
        with self.assertRaises(ValueError):
            m.query("q")
        m.stream_topology("no-handler", reads="d")
        with self.assertRaises(ValueError):
            m.export()

    def test_nothing_is_declared_after_export(self):
        m = Module()
        m.depot("d", Partitioner.random())
        m.export()
        with self.assertRaises(RuntimeError):
            m.pstate("p", Schema.map(Schema.string(), Schema.int()))

    def test_unsupported_annotation_fails_at_declaration(self):
        m = Module()

        class Plain:
            pass

        top = m.stream_topology("s", reads="d")
        with self.assertRaises(TypeError):
            @top.handler
            def h(ctx, r: Plain):
                pass

        @dataclass
        class Ok:
            a: int

        @top.hop_handler("fine")
        def h2(ctx, r: Ok):
            pass


if __name__ == "__main__":
    unittest.main()
