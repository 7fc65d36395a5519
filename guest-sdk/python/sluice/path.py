"""Paths into a PState partition, and where hops and `select_from` go."""

from . import cbor
from ._wit import types as _t
from .errors import SluiceError

__all__ = ["Path", "Target", "HopTarget"]


def _enc(v):
    try:
        return cbor.encode(v)
    except cbor.CBORError as e:
        raise SluiceError("encode", "cannot encode a path value: %s" % e) from None


_COMPARISONS = {
    "eq": _t.Comparison.EQ,
    "==": _t.Comparison.EQ,
    "ne": _t.Comparison.NE,
    "!=": _t.Comparison.NE,
    "lt": _t.Comparison.LT,
    "<": _t.Comparison.LT,
    "le": _t.Comparison.LE,
    "<=": _t.Comparison.LE,
    "gt": _t.Comparison.GT,
    ">": _t.Comparison.GT,
    "ge": _t.Comparison.GE,
    ">=": _t.Comparison.GE,
}

_ALL = _t.Navigator_All()
_MAP_KEYS = _t.Navigator_MapKeys()
_MAP_VALS = _t.Navigator_MapVals()
_FIRST = _t.Navigator_First()
_LAST = _t.Navigator_Last()
_COUNT = _t.Navigator_Count()


class _starts_or_extends:
    """A method usable on the class (``Path.key("a")`` starts a path) and on a path
    (``Path.key("a").key("b")`` extends it)."""

    def __init__(self, f):
        self.f = f
        self.__doc__ = f.__doc__
        self.__name__ = f.__name__

    def __get__(self, obj, cls=None):
        return self.f.__get__(_EMPTY if obj is None else obj)


class Path:
    """A path into a PState: a sequence of navigators, applied left to right.

    Paths are immutable; every step returns a new path, so one can be shared::

        key = Path.key("alice")            # the value under the top-level key "alice"
        key.key("balance")                 # ... then its "balance" field
        key.last()                         # ... or the last element of the list there
        Path().all()                       # every [key, value] entry of the partition
        Path.map_vals()                    # every value (a step on the class starts a path)

    The top-level key picks the partition: a handler may only write keys of its own partition.
    """

    __slots__ = ("_navs",)

    def __init__(self, navigators=()):
        # A list, never changed once built: the host calls take it as it is.
        self._navs = list(navigators)

    def _then(self, nav):
        p = Path.__new__(Path)
        p._navs = self._navs + [nav]
        return p

    @_starts_or_extends
    def key(self, k):
        """The value under key `k` of a map (absent: nothing; a transform creates it)."""
        return self._then(_t.Navigator_Key(_enc(k)))

    @_starts_or_extends
    def must(self, k):
        """Like :meth:`key`, but a transform never creates the key."""
        return self._then(_t.Navigator_Must(_enc(k)))

    @_starts_or_extends
    def all(self):
        """Every element of a list or set; every ``[key, value]`` entry of a map."""
        return self._then(_ALL)

    @_starts_or_extends
    def map_keys(self):
        """Every key of a map."""
        return self._then(_MAP_KEYS)

    @_starts_or_extends
    def map_vals(self):
        """Every value of a map."""
        return self._then(_MAP_VALS)

    @_starts_or_extends
    def first(self):
        """The first element (or entry)."""
        return self._then(_FIRST)

    @_starts_or_extends
    def last(self):
        """The last element (or entry)."""
        return self._then(_LAST)

    @_starts_or_extends
    def nth(self, i):
        """The element at index `i` (from 0)."""
        return self._then(_t.Navigator_Nth(int(i)))

    @_starts_or_extends
    def count(self):
        """The number of elements (0 when absent)."""
        return self._then(_COUNT)

    @_starts_or_extends
    def sorted_range(
        self,
        start=None,
        end=None,
        start_inclusive=True,
        end_inclusive=False,
        limit=None,
        reverse=False,
    ):
        """The entries of a map (as a map) or elements of a set within ``[start, end)`` in key
        order; ``None`` leaves that end open. `limit` caps how many, `reverse` starts at the
        highest key."""
        return self._then(
            _t.Navigator_SortedRange(
                _t.KeyRange(
                    None if start is None else _enc(start),
                    None if end is None else _enc(end),
                    bool(start_inclusive),
                    bool(end_inclusive),
                    None if limit is None else int(limit),
                    bool(reverse),
                )
            )
        )

    @_starts_or_extends
    def null_to_val(self, v):
        """The value, or `v` when it is absent or null."""
        return self._then(_t.Navigator_NullToVal(_enc(v)))

    @_starts_or_extends
    def filter(self, cmp, v):
        """Continue only when ``navigated <cmp> v``; `cmp` is one of ``"eq" "ne" "lt" "le" "gt"
        "ge"`` (or ``"==" "!=" "<" "<=" ">" ">="``)."""
        c = _COMPARISONS.get(cmp) if isinstance(cmp, str) else cmp
        if c is None:
            raise ValueError("unknown comparison %r (use eq, ne, lt, le, gt or ge)" % (cmp,))
        return self._then(_t.Navigator_Filter((c, _enc(v))))

    def navigators(self):
        """The path as the WIT navigators the host takes (a new list)."""
        return list(self._navs)

    def __len__(self):
        return len(self._navs)

    def __eq__(self, other):
        return isinstance(other, Path) and self._navs == other._navs

    def __hash__(self):
        return hash(len(self._navs))

    def __repr__(self):
        steps = []
        for n in self._navs:
            name = type(n).__name__.split("_", 1)[1]
            v = getattr(n, "value", None)
            if isinstance(v, bytes):
                steps.append("%s(%r)" % (name, cbor.decode(v)))
            elif v is not None:
                steps.append("%s(%r)" % (name, v))
            else:
                steps.append(name)
        return "Path[%s]" % ", ".join(steps)


_EMPTY = Path()
_TARGET_ALL = _t.Target_All()


class Target:
    """Which partition(s) a hop continues on, or a query's ``select_from`` reads."""

    __slots__ = ()

    @staticmethod
    def key(k):
        """The partition owning key `k` (where its PState entries live)."""
        return _t.Target_Key(_enc(k))

    @staticmethod
    def all():
        """Every partition of the module (including this one)."""
        return _TARGET_ALL

    @staticmethod
    def partition(p):
        """Partition number `p`."""
        return _t.Target_Partition(int(p))


HopTarget = Target
