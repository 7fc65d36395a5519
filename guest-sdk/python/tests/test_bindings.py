"""The stand-in bindings (tests/fakewit) declare what the real generated ones declare."""

import dataclasses
import os
import unittest

import support


def shape(module):
    out = {}
    for name, c in vars(module).items():
        if isinstance(c, type) and c.__module__ == module.__name__:
            if dataclasses.is_dataclass(c):
                out[name] = [f.name for f in dataclasses.fields(c)]
            elif hasattr(c, "__members__"):
                out[name] = list(c.__members__)
    return out


FAKE_TYPES = os.path.join(support.HERE, "fakewit", "wit_world", "imports", "types.py")


@unittest.skipUnless(support.USING_REAL_BINDINGS, "set SLUICE_PY_BINDINGS to the generated bindings")
class Bindings(unittest.TestCase):
    def test_the_stand_in_matches_the_generated_types(self):
        import importlib.util

        spec = importlib.util.spec_from_file_location("fake_types", FAKE_TYPES)
        fake = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fake)
        self.assertEqual(shape(fake), shape(support.t))

    def test_the_generated_host_has_the_functions_the_sdk_calls(self):
        for name in ("select", "select_from", "transform", "hop", "log"):
            self.assertTrue(callable(getattr(support.wit_host, name)), name)


if __name__ == "__main__":
    unittest.main()
