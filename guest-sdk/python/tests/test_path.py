import unittest

from support import t

from sluice import Path, Target, cbor


def enc(v):
    return cbor.encode(v)


class Paths(unittest.TestCase):
    def test_every_navigator(self):
        p = (
            Path.key("a").must(1).all().map_keys().map_vals().first().last().nth(3).count()
            .sorted_range("b", "c", False, True, 5, True).null_to_val(0).filter("ge", 2.5)
        )
        self.assertEqual(
            p.navigators(),
            [
                t.Navigator_Key(enc("a")),
                t.Navigator_Must(enc(1)),
                t.Navigator_All(),
                t.Navigator_MapKeys(),
                t.Navigator_MapVals(),
                t.Navigator_First(),
                t.Navigator_Last(),
                t.Navigator_Nth(3),
                t.Navigator_Count(),
                t.Navigator_SortedRange(t.KeyRange(enc("b"), enc("c"), False, True, 5, True)),
                t.Navigator_NullToVal(enc(0)),
                t.Navigator_Filter((t.Comparison.GE, enc(2.5))),
            ],
        )

    def test_a_step_on_the_class_starts_a_path(self):
        self.assertEqual(Path.all(), Path().all())
        self.assertEqual(Path.map_vals().navigators(), [t.Navigator_MapVals()])
        self.assertEqual(
            Path.sorted_range(limit=4).navigators(),
            [t.Navigator_SortedRange(t.KeyRange(None, None, True, False, 4, False))],
        )
        self.assertEqual(Path().navigators(), [])

    def test_paths_are_immutable(self):
        key = Path.key("k")
        last = key.last()
        self.assertEqual(len(key), 1)
        self.assertEqual(len(last), 2)
        self.assertEqual(key.navigators(), [t.Navigator_Key(enc("k"))])

    def test_composite_keys_and_comparisons(self):
        self.assertEqual(Path.key(("u", 1)).navigators(), [t.Navigator_Key(enc(["u", 1]))])
        for sym, name in [("==", "EQ"), ("!=", "NE"), ("<", "LT"), ("<=", "LE"), (">", "GT"), (">=", "GE")]:
            (nav,) = Path.filter(sym, 1).navigators()
            self.assertEqual(nav.value[0], getattr(t.Comparison, name))
            self.assertEqual(Path.filter(name.lower(), 1), Path.filter(sym, 1))
        with self.assertRaises(ValueError):
            Path.filter("~", 1)

    def test_repr(self):
        self.assertEqual(repr(Path.key("a").nth(2).all()), "Path[Key('a'), Nth(2), All]")

    def test_targets(self):
        self.assertEqual(Target.key("w"), t.Target_Key(enc("w")))
        self.assertEqual(Target.all(), t.Target_All())
        self.assertEqual(Target.partition(3), t.Target_Partition(3))


if __name__ == "__main__":
    unittest.main()
