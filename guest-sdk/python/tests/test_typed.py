import unittest
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import support  # noqa: F401

from sluice.typed import Mismatch, converter


@dataclass
class Inner:
    x: int


@dataclass
class Rec:
    key: str
    n: int
    value: Any
    inner: Inner
    tags: list[str] = field(default_factory=list)
    note: Optional[str] = None
    maybe: Optional[int] = None
    weight: float = 1.0


class Typed(unittest.TestCase):
    def test_dataclass(self):
        c = converter(Rec)
        r = c({"key": "k", "n": 2, "value": [1], "inner": {"x": 3}, "extra": "ignored", "weight": 2})
        self.assertEqual(r, Rec("k", 2, [1], Inner(3), [], None, None, 2.0))
        self.assertIs(type(r.weight), float)

    def test_mismatches_name_the_field(self):
        c = converter(Rec)
        base = {"key": "k", "n": 2, "value": None, "inner": {"x": 3}}
        for change, message in [
            ({"key": 7}, "at `key`: expected a string, got integer 7"),
            ({"n": True}, "at `n`: expected an integer, got bool True"),
            ({"n": 1.0}, "at `n`: expected an integer, got float 1.0"),
            ({"inner": {"x": "3"}}, "at `inner.x`: expected an integer, got string '3'"),
            ({"tags": ["a", 2]}, "at `tags[1]`: expected a string, got integer 2"),
            ({"inner": [1]}, "at `inner`: expected a map (Inner), got an array"),
        ]:
            with self.assertRaises(Mismatch) as e:
                c({**base, **change})
            self.assertEqual(str(e.exception), message)
        for missing in ["key", "value", "inner"]:
            d = dict(base)
            del d[missing]
            with self.assertRaises(Mismatch) as e:
                c(d)
            self.assertEqual(str(e.exception), "at `%s`: missing field" % missing)
        with self.assertRaises(Mismatch) as e:
            c([1])
        self.assertEqual(str(e.exception), "expected a map (Rec), got an array")

    def test_plain_types(self):
        self.assertIsNone(converter(Any))
        self.assertIsNone(converter(object))
        self.assertEqual(converter(str)("s"), "s")
        self.assertEqual(converter(dict[str, int])({"a": 1}), {"a": 1})
        self.assertEqual(converter(dict)({1: 2}), {1: 2})
        self.assertEqual(converter(tuple[str, int])(["a", 1]), ("a", 1))
        self.assertEqual(converter(tuple[int, ...])([1, 2]), (1, 2))
        self.assertEqual(converter(set[str])(["a", "a"]), {"a"})
        self.assertEqual(converter(bytes)(b"x"), b"x")
        self.assertEqual(converter(Union[int, str])("x"), "x")
        self.assertEqual(converter(int | None)(None), None)
        self.assertEqual(converter(list)([1, "a"]), [1, "a"])
        for ann, bad in [(int, "1"), (str, None), (bytes, "x"), (bool, 1), (list[int], {}),
                         (dict[str, int], {"a": "b"}), (tuple[int, int], [1]), (None, 0),
                         (Union[int, str], 1.5)]:
            with self.assertRaises(Mismatch, msg=repr(ann)):
                converter(ann)(bad)

    def test_unsupported(self):
        class Plain:
            pass

        with self.assertRaises(TypeError):
            converter(Plain)


if __name__ == "__main__":
    unittest.main()
