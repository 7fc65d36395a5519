"""Typed records: decode a value into the type a handler's parameter is annotated with.

A handler ``def count(ctx, record: Word)`` with ``Word`` a dataclass gets a ``Word``; a value that
does not fit (a missing field, a number where a string is declared) fails with the code
``decode`` before the handler runs, like the Rust SDK's serde types. Without an annotation (or
with ``Any``/``object``) the handler gets the value as decoded (dict, list, str, int, ...).

Supported annotations: ``Any``, ``object``, ``None``, ``bool``, ``int`` (not ``bool``), ``float``
(an integer is accepted and converted), ``str``, ``bytes``, ``list[T]``, ``tuple[T, ...]``,
``tuple[A, B]``, ``set[T]``, ``frozenset[T]``, ``dict[K, V]``, ``Optional[T]``, unions (the first
alternative that fits) and dataclasses (a map with string keys; unknown keys are ignored, a
missing field takes its default, an ``Optional`` one ``None``). The converter is built once, when
the handler is declared.
"""

import dataclasses
import types as _pytypes
import typing

from .cbor import FrozenDict

__all__ = ["converter", "Mismatch"]


class Mismatch(Exception):
    """A value that does not fit the declared type; `where` is the path to it."""

    def __init__(self, expected, value, where=()):
        super().__init__(expected, value, where)
        self.expected = expected
        self.value = value
        self.where = where

    def nested(self, step):
        return Mismatch(self.expected, self.value, (step,) + self.where)

    def __str__(self):
        at = "".join("[%r]" % s if isinstance(s, int) else ".%s" % s for s in self.where)
        at = ("at `%s`: " % at.lstrip(".")) if at else ""
        if self.value is _MISSING:
            return "%smissing field" % at
        return "%sexpected %s, got %s" % (at, self.expected, _describe(self.value))


_MISSING = object()


def _describe(v):
    if v is None:
        return "null"
    r = repr(v)
    if len(r) > 40:
        r = r[:37] + "..."
    name = {bool: "bool", int: "integer", float: "float", str: "string", bytes: "bytes"}.get(type(v))
    if name:
        return "%s %s" % (name, r)
    return {list: "an array", tuple: "an array", dict: "a map", FrozenDict: "a map"}.get(
        type(v), type(v).__name__
    )


def _scalar(cls, expected):
    def conv(v):
        if type(v) is cls:
            return v
        raise Mismatch(expected, v)

    return conv


def _int(v):
    if type(v) is int:
        return v
    raise Mismatch("an integer", v)


def _float(v):
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    raise Mismatch("a float", v)


def _none(v):
    if v is None:
        return v
    raise Mismatch("null", v)


_IDENTITY = None  # "no conversion": the value as decoded


def converter(annotation):
    """A function turning a decoded value into `annotation` (raising :class:`Mismatch`), or
    ``None`` when the value is used as decoded."""
    a = annotation
    if a is typing.Any or a is object:
        return _IDENTITY
    if a is None or a is type(None):
        return _none
    if a is bool:
        return _scalar(bool, "a bool")
    if a is int:
        return _int
    if a is float:
        return _float
    if a is str:
        return _scalar(str, "a string")
    if a is bytes:
        return _scalar(bytes, "bytes")
    if dataclasses.is_dataclass(a) and isinstance(a, type):
        return _dataclass(a)
    origin = typing.get_origin(a)
    args = typing.get_args(a)
    if origin is typing.Union or origin is _pytypes.UnionType:
        return _union(args)
    if origin is list or a is list:
        return _list(converter(args[0]) if args else None)
    if origin is set or origin is frozenset or a in (set, frozenset):
        return _set(converter(args[0]) if args else None, origin or a)
    if origin is tuple or a is tuple:
        return _tuple(args)
    if origin is dict or a is dict:
        return _dict(*(converter(x) for x in args) if args else (None, None))
    if isinstance(a, type):
        raise TypeError(
            "cannot decode into %s: annotate with a dataclass, int, float, str, bytes, bool, "
            "list[...], dict[...], Optional[...] or Any" % a.__name__
        )
    raise TypeError("cannot decode into the annotation %r" % (a,))


def _union(alternatives):
    convs = [converter(x) for x in alternatives]
    if any(c is None for c in convs):
        return _IDENTITY
    expected = " or ".join(getattr(x, "__name__", repr(x)) for x in alternatives)

    def conv(v):
        for c in convs:
            try:
                return c(v)
            except Mismatch:
                pass
        raise Mismatch(expected, v)

    return conv


def _list(item):
    def conv(v):
        if type(v) is not list:
            raise Mismatch("an array", v)
        if item is None:
            return v
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except Mismatch as e:
                raise e.nested(i) from None
        return out

    return conv


def _set(item, kind):
    kind = frozenset if kind is frozenset else set

    def conv(v):
        if type(v) is not list:
            raise Mismatch("an array", v)
        out = []
        for i, x in enumerate(v):
            if item is not None:
                try:
                    x = item(x)
                except Mismatch as e:
                    raise e.nested(i) from None
            out.append(x)
        try:
            return kind(out)
        except TypeError:
            raise Mismatch("an array of hashable values", v) from None

    return conv


def _tuple(args):
    if len(args) == 2 and args[1] is Ellipsis:
        each = _list(converter(args[0]))
        return lambda v: tuple(each(v))
    convs = [converter(x) for x in args]

    def conv(v):
        if type(v) is not list:
            raise Mismatch("an array", v)
        if args and len(v) != len(convs):
            raise Mismatch("an array of %d items" % len(convs), v)
        out = []
        for i, x in enumerate(v):
            c = convs[i] if convs else None
            try:
                out.append(x if c is None else c(x))
            except Mismatch as e:
                raise e.nested(i) from None
        return tuple(out)

    return conv


def _dict(key, value):
    def conv(v):
        if type(v) is not dict:
            raise Mismatch("a map", v)
        if key is None and value is None:
            return v
        out = {}
        for k, x in v.items():
            try:
                if key is not None:
                    k = key(k)
                if value is not None:
                    x = value(x)
            except Mismatch as e:
                raise e.nested(k) from None
            out[k] = x
        return out

    return conv


def _dataclass(cls):
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        ann = hints.get(f.name, typing.Any)
        conv = converter(ann)
        if f.default is not dataclasses.MISSING:
            default = (lambda d: lambda: d)(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory
        elif _accepts_none(ann):
            default = lambda: None  # noqa: E731  (an Optional field may be left out)
        else:
            default = None
        fields.append((f.name, conv, default))

    def conv(v):
        if type(v) is not dict:
            raise Mismatch("a map (%s)" % cls.__name__, v)
        kwargs = {}
        for name, c, default in fields:
            x = v.get(name, _MISSING)
            if x is _MISSING:
                if default is None:
                    raise Mismatch(None, _MISSING, (name,))
                kwargs[name] = default()
                continue
            if c is not None:
                try:
                    x = c(x)
                except Mismatch as e:
                    raise e.nested(name) from None
            kwargs[name] = x
        return cls(**kwargs)

    return conv


def _accepts_none(ann):
    if ann is None or ann is type(None):
        return True
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is _pytypes.UnionType:
        return any(x is type(None) for x in typing.get_args(ann))
    return False
