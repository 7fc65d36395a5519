"""Test support: puts the SDK and a `wit_world` on the module path, and a fake host.

`wit_world` is the stand-in in tests/fakewit unless SLUICE_PY_BINDINGS names a directory of real
bindings (`componentize-py -d wit -w module bindings DIR`; scripts/build-python-modules.sh makes
target/python/bindings). Either way the host functions are replaced by a `FakeHost`: PStates in
Python dicts on N partitions (routed with `partition_of_key`, like the host), enough of the
navigators and transforms for the SDK's and the conformance modules' tests. It is not the host:
the conformance tests on a real host are the authority.
"""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(SDK))
BINDINGS = os.environ.get("SLUICE_PY_BINDINGS") or os.path.join(HERE, "fakewit")

for p in (SDK, BINDINGS):
    if p not in sys.path:
        sys.path.insert(0, p)

from componentize_py_types import Err  # noqa: E402
from wit_world.imports import host as wit_host  # noqa: E402
from wit_world.imports import types as t  # noqa: E402

import sluice  # noqa: E402
from sluice import cbor  # noqa: E402
from sluice.partition import _encode_key, partition_of_key  # noqa: E402

USING_REAL_BINDINGS = BINDINGS != os.path.join(HERE, "fakewit")


def load_module_source(relative_path, name):
    """Import a module's app file (e.g. modules/wordcount-py/wordcount.py) under `name`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relative_path))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def _order(k):
    out = bytearray()
    _encode_key(k, out)
    return bytes(out)


_ABSENT = object()


class FakeHost:
    """An in-memory stand-in for the host's `sluice:module/host` (see the module docs)."""

    def __init__(self, partitions=4):
        self.partitions = partitions
        self.data = {}  # (pstate, partition) -> {key: value}
        self.sets = set()  # (pstate) names whose values are sets (set by the test)
        self.logs = []
        self.hops = []
        self.partition = None  # the current partition in a handler; None in a query
        self.transforms = []

    def install(self):
        for name in ("select", "select_from", "transform", "hop", "log"):
            setattr(wit_host, name, getattr(self, name))
        return self

    # -- navigation ----------------------------------------------------------------------------

    def _table(self, pstate, partition):
        return self.data.setdefault((pstate, partition), {})

    def _leading_partition(self, path):
        if path and isinstance(path[0], (t.Navigator_Key, t.Navigator_Must)):
            return partition_of_key(cbor.decode(path[0].value), self.partitions)
        return 0

    def _nav(self, values, nav):
        out = []
        for v in values:
            if isinstance(nav, (t.Navigator_Key, t.Navigator_Must)):
                k = cbor.decode(nav.value)
                if isinstance(v, dict) and k in v:
                    out.append(v[k])
            elif isinstance(nav, t.Navigator_All):
                if isinstance(v, dict):
                    out += [[k, v[k]] for k in sorted(v, key=_order)]
                elif isinstance(v, list):
                    out += v
            elif isinstance(nav, t.Navigator_MapKeys):
                out += sorted(v, key=_order) if isinstance(v, dict) else []
            elif isinstance(nav, t.Navigator_MapVals):
                out += [v[k] for k in sorted(v, key=_order)] if isinstance(v, dict) else []
            elif isinstance(nav, (t.Navigator_First, t.Navigator_Last, t.Navigator_Nth)):
                items = self._nav([v], t.Navigator_All())
                i = 0 if isinstance(nav, t.Navigator_First) else -1
                if isinstance(nav, t.Navigator_Nth):
                    i = nav.value
                if -len(items) <= i < len(items):
                    out.append(items[i])
            elif isinstance(nav, t.Navigator_Count):
                out.append(len(v) if isinstance(v, (list, dict)) else 0)
            elif isinstance(nav, t.Navigator_SortedRange):
                out.append(self._range(v, nav.value))
            elif isinstance(nav, t.Navigator_NullToVal):
                out.append(cbor.decode(nav.value) if v is None or v is _ABSENT else v)
            elif isinstance(nav, t.Navigator_Filter):
                c, operand = nav.value
                a, b = _order(v), _order(cbor.decode(operand))
                ok = {
                    "EQ": a == b,
                    "NE": a != b,
                    "LT": a < b,
                    "LE": a <= b,
                    "GT": a > b,
                    "GE": a >= b,
                }[c.name]
                if ok:
                    out.append(v)
            else:
                raise AssertionError("navigator %r" % (nav,))
        if not values and isinstance(nav, t.Navigator_Count):
            out.append(0)
        return out

    def _range(self, v, r):
        keys = sorted(v, key=_order) if isinstance(v, dict) else sorted(v or [], key=_order)
        lo = None if r.start is None else _order(cbor.decode(r.start))
        hi = None if r.end is None else _order(cbor.decode(r.end))
        picked = []
        for k in reversed(keys) if r.reverse else keys:
            o = _order(k)
            if lo is not None and (o < lo or (o == lo and not r.start_inclusive)):
                continue
            if hi is not None and (o > hi or (o == hi and not r.end_inclusive)):
                continue
            picked.append(k)
            if r.limit is not None and len(picked) >= r.limit:
                break
        return {k: v[k] for k in picked} if isinstance(v, dict) else picked

    def _select(self, pstate, partition, path):
        values = [self._table(pstate, partition)]
        for nav in path:
            values = self._nav(values, nav)
        return [cbor.encode(v) for v in values]

    # -- the host functions --------------------------------------------------------------------

    def select(self, pstate, path):
        assert isinstance(path, list)
        p = self.partition if self.partition is not None else self._leading_partition(path)
        return self._select(pstate, p, path)

    def select_from(self, pstate, target, path):
        if isinstance(target, t.Target_All):
            parts = list(range(self.partitions))
        elif isinstance(target, t.Target_Partition):
            parts = [target.value]
        else:
            parts = [partition_of_key(cbor.decode(target.value), self.partitions)]
        if self.partition is not None and parts != [self.partition]:
            raise Err(t.Error("wrong-partition", "a handler reads only its own partition"))
        return [self._select(pstate, p, path) for p in parts]

    def transform(self, pstate, path, op):
        assert isinstance(path, list) and path
        if self.partition is None:
            raise Err(t.Error("read-only", "a query cannot write"))
        keys = []
        for nav in path:
            if not isinstance(nav, (t.Navigator_Key, t.Navigator_Must)):
                raise AssertionError("the fake host transforms only key paths")
            keys.append(cbor.decode(nav.value))
        if partition_of_key(keys[0], self.partitions) != self.partition:
            raise Err(t.Error("wrong-partition", "key %r is not on partition %d" % (keys[0], self.partition)))
        self.transforms.append((pstate, keys, type(op).__name__))
        node = self._table(pstate, self.partition)
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        k = keys[-1]
        if isinstance(op, t.TransformOp_Remove):
            node.pop(k, None)
        elif isinstance(op, t.TransformOp_Set):
            node[k] = cbor.decode(op.value)
        elif isinstance(op, t.TransformOp_Increment):
            node[k] = node.get(k, 0) + op.value
        elif isinstance(op, t.TransformOp_Insert):
            s = node.setdefault(k, [])
            e = cbor.decode(op.value)
            if e not in s:
                s.append(e)
                s.sort(key=_order)
        elif isinstance(op, t.TransformOp_Push):
            node.setdefault(k, []).append(cbor.decode(op.value))
        elif isinstance(op, t.TransformOp_Merge):
            node.setdefault(k, {}).update(cbor.decode(op.value))
        else:
            raise AssertionError(op)

    def hop(self, target, handler, payload):
        assert type(payload) is bytes
        self.hops.append((target, handler, payload))

    def log(self, level, message):
        self.logs.append((level.name, message))

    # -- driving a guest -----------------------------------------------------------------------

    def append(self, guest, topology, depot, record, partition=None, batch_id=None):
        """Run `topology`'s record handler for `record` and then every hop it sends; the
        record handler's answer (raw, decoded if it is bytes)."""
        if partition is None:
            partition = 0
        ack = self._run(guest, topology, "on-record", cbor.encode(record), partition, depot, batch_id)
        return None if ack is None else cbor.decode(ack)

    def _run(self, guest, topology, handler, payload, partition, depot, batch_id):
        self.partition = partition
        ctx = t.RecordCtx(depot, partition, 0, self.partitions, batch_id)
        before = len(self.hops)
        try:
            ack = guest.handle(topology, handler, payload, ctx)
        finally:
            self.partition = None
        sent, self.hops[before:] = self.hops[before:], []
        for target, name, body in sent:
            if isinstance(target, t.Target_Key):
                parts = [partition_of_key(cbor.decode(target.value), self.partitions)]
            elif isinstance(target, t.Target_Partition):
                parts = [target.value]
            else:
                parts = list(range(self.partitions))
            for p in parts:
                self._run(guest, topology, name, body, p, depot, batch_id)
        return ack

    def query(self, guest, name, args):
        return cbor.decode(guest.query(name, cbor.encode(args), self.partitions))
