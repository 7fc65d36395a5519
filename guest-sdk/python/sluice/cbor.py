"""CBOR (RFC 8949) in pure Python: how values cross the Sluice boundary.

Encoding (Python -> CBOR):

- ``None`` -> null, ``bool`` -> true/false (checked before ``int``: ``True`` is no integer);
- ``int`` -> a CBOR integer (major type 0/1), never a float, so i64/u64 values stay exact. CBOR
  integers span -2**64 .. 2**64-1; a Python int beyond that is refused (:class:`CBORError`): the
  host would not read a bignum back as a number. (The host answers JSON clients with integers
  below the i64 range as strings.);
- ``float`` -> float64; ``str`` -> text; ``bytes``/``bytearray``/``memoryview`` -> byte string;
- ``list``/``tuple`` (and ``set``/``frozenset``, in iteration order) -> array;
- ``dict`` (any mapping) -> map, keys of any type; a dataclass instance -> map of its fields.

Decoding (CBOR -> Python) accepts everything valid CBOR can carry: definite and indefinite
lengths, half/single/double floats (all become ``float``), tags (the tag is dropped and its content
kept; bignums, tags 2/3, become ``int``), ``undefined`` -> ``None``. Map keys must be hashable in
Python, so an array used as a key becomes a ``tuple`` and a map used as a key a :class:`FrozenDict`
(both encode back to the same CBOR). Python merges keys that compare equal (``1``, ``1.0`` and
``True``): a map holding more than one of them keeps the last.
"""

import dataclasses
import struct

__all__ = ["encode", "decode", "CBORError", "FrozenDict", "Simple"]


class CBORError(ValueError):
    """Bytes that are not one well-formed CBOR value, or a value CBOR cannot carry."""


class FrozenDict(dict):
    """A read-only, hashable ``dict``: what a CBOR map used as a map key decodes into."""

    __slots__ = ("_hash",)

    def __hash__(self):
        try:
            return self._hash
        except AttributeError:
            self._hash = h = hash(frozenset(self.items()))
            return h

    def _readonly(self, *args, **kwargs):
        raise TypeError("a FrozenDict cannot be changed")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly
    __ior__ = _readonly

    def __repr__(self):
        return "FrozenDict(%s)" % dict.__repr__(self)


class Simple(int):
    """A CBOR simple value other than false/true/null/undefined (e.g. ``simple(16)``)."""

    __slots__ = ()

    def __repr__(self):
        return "Simple(%d)" % int(self)


# ---------------------------------------------------------------------------------------------
# Encoding

_pack_d = struct.Struct(">Bd").pack
_U64 = 1 << 64
_MAX_DEPTH = 400


def _head(out, major, n):
    """Append the initial byte(s) of an item of `major` type (shifted left by 5) with argument n."""
    if n < 24:
        out.append(major | n)
    elif n < 0x100:
        out.append(major | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(major | 25)
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(major | 26)
        out += n.to_bytes(4, "big")
    else:
        out.append(major | 27)
        out += n.to_bytes(8, "big")


def _encode(v, out, depth):
    t = type(v)
    if t is str:
        b = v.encode("utf-8")
        n = len(b)
        if n < 24:
            out.append(0x60 | n)
        else:
            _head(out, 0x60, n)
        out += b
    elif t is int:
        if 0 <= v < 24:
            out.append(v)
        elif v >= 0:
            if v >= _U64:
                raise CBORError("integer %d is beyond the CBOR range (-2**64 .. 2**64-1)" % v)
            _head(out, 0x00, v)
        else:
            m = -1 - v
            if m >= _U64:
                raise CBORError("integer %d is beyond the CBOR range (-2**64 .. 2**64-1)" % v)
            _head(out, 0x20, m)
    elif t is dict or t is FrozenDict:
        if depth > _MAX_DEPTH:
            raise CBORError("value nested deeper than %d levels" % _MAX_DEPTH)
        n = len(v)
        if n < 24:
            out.append(0xA0 | n)
        else:
            _head(out, 0xA0, n)
        depth += 1
        for k, x in v.items():
            if type(k) is str:
                b = k.encode("utf-8")
                n = len(b)
                if n < 24:
                    out.append(0x60 | n)
                else:
                    _head(out, 0x60, n)
                out += b
            else:
                _encode(k, out, depth)
            _encode(x, out, depth)
    elif t is list or t is tuple:
        if depth > _MAX_DEPTH:
            raise CBORError("value nested deeper than %d levels" % _MAX_DEPTH)
        n = len(v)
        if n < 24:
            out.append(0x80 | n)
        else:
            _head(out, 0x80, n)
        depth += 1
        for x in v:
            _encode(x, out, depth)
    elif v is None:
        out.append(0xF6)
    elif t is bool:
        out.append(0xF5 if v else 0xF4)
    elif t is float:
        out += _pack_d(0xFB, v)
    elif t is bytes or t is bytearray or t is memoryview:
        b = bytes(v)
        _head(out, 0x40, len(b))
        out += b
    else:
        _encode_other(v, out, depth)


def _encode_other(v, out, depth):
    # Subclasses and other containers: slower, rarer paths.
    if isinstance(v, bool):
        out.append(0xF5 if v else 0xF4)
    elif isinstance(v, int):
        _encode(int(v), out, depth)
    elif isinstance(v, float):
        out += _pack_d(0xFB, float(v))
    elif isinstance(v, str):
        _encode(str(v), out, depth)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        _encode(bytes(v), out, depth)
    elif isinstance(v, dict) or (hasattr(v, "keys") and hasattr(v, "__getitem__")):
        _encode({k: v[k] for k in v.keys()}, out, depth)
    elif isinstance(v, (list, tuple, set, frozenset)):
        _encode(list(v), out, depth)
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
        _encode({f.name: getattr(v, f.name) for f in dataclasses.fields(v)}, out, depth)
    else:
        raise CBORError("cannot encode a value of type %s" % type(v).__name__)


def encode(value):
    """The CBOR bytes of `value` (see the module docs for the mapping)."""
    t = type(value)
    if t is int and 0 <= value < 24:
        return _SMALL[value]
    if value is None:
        return b"\xf6"
    out = bytearray()
    try:
        _encode(value, out, 0)
    except UnicodeEncodeError as e:
        raise CBORError("cannot encode a string that is not valid Unicode: %s" % e) from None
    except RecursionError:
        raise CBORError("value nested too deeply to encode") from None
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(24)]


# ---------------------------------------------------------------------------------------------
# Decoding

_unpack_e = struct.Struct(">e").unpack_from
_unpack_f = struct.Struct(">f").unpack_from
_unpack_d = struct.Struct(">d").unpack_from
_BREAK = object()
_from_bytes = int.from_bytes


class _Truncated(Exception):
    pass


def _freeze(k):
    t = type(k)
    if t is list:
        return tuple(_freeze(x) for x in k)
    if t is dict:
        return FrozenDict((_freeze(a), _freeze(b)) for a, b in k.items())
    return k


def _arg(b, ai, i):
    """The argument of additional info `ai` (>= 24) whose bytes start at i: (value, next index)."""
    if ai == 24:
        return b[i], i + 1
    if ai == 25:
        j = i + 2
    elif ai == 26:
        j = i + 4
    elif ai == 27:
        j = i + 8
    else:
        raise CBORError("invalid additional information %d at offset %d" % (ai, i - 1))
    if j > len(b):
        raise _Truncated
    return _from_bytes(b[i:j], "big"), j


def _chunks(b, major, i):
    """The concatenated chunks of an indefinite-length byte (2) or text (3) string."""
    parts = []
    while True:
        ib = b[i]
        i += 1
        if ib == 0xFF:
            return b"".join(parts), i
        ai = ib & 31
        if ib >> 5 != major or ai == 31:
            raise CBORError("invalid chunk in an indefinite-length string at offset %d" % (i - 1))
        n, i = (ai, i) if ai < 24 else _arg(b, ai, i)
        j = i + n
        if j > len(b):
            raise _Truncated
        parts.append(b[i:j])
        i = j


def _item(b, i, depth):
    """Decode the item at i: (value, next index); _BREAK for a break code. Reading past the end
    raises IndexError or _Truncated."""
    ib = b[i]
    i += 1
    major = ib >> 5
    ai = ib & 31
    if major == 3:  # text
        if ai < 24:
            j = i + ai
        elif ai == 31:
            raw, i = _chunks(b, 3, i)
            j = None
        else:
            n, i = _arg(b, ai, i)
            j = i + n
        if j is not None:
            if j > len(b):
                raise _Truncated
            raw = b[i:j]
            i = j
        try:
            return raw.decode("utf-8"), i
        except UnicodeDecodeError:
            raise CBORError("a text string that is not valid UTF-8 before offset %d" % i) from None
    if major == 0:
        return (ai, i) if ai < 24 else _arg(b, ai, i)
    if major == 5:  # map
        if depth >= _MAX_DEPTH:
            raise CBORError("CBOR nested deeper than %d levels" % _MAX_DEPTH)
        depth += 1
        out = {}
        if ai == 31:
            n = -1
        else:
            n, i = (ai, i) if ai < 24 else _arg(b, ai, i)
            if n > len(b) - i:
                raise _Truncated
        while n:
            kb = b[i]
            if 0x60 <= kb < 0x78:  # a short text key
                j = i + 1 + (kb - 0x60)
                if j > len(b):
                    raise _Truncated
                try:
                    k = b[i + 1 : j].decode("utf-8")
                except UnicodeDecodeError:
                    raise CBORError("a text string that is not valid UTF-8 at offset %d" % i) from None
                i = j
            else:
                k, i = _item(b, i, depth)
                if k is _BREAK:
                    if n < 0:
                        return out, i
                    raise CBORError("unexpected break code at offset %d" % (i - 1))
                tk = type(k)
                if tk is list or tk is dict:
                    k = _freeze(k)
            v, i = _item(b, i, depth)
            if v is _BREAK:
                raise CBORError("a map key without a value at offset %d" % (i - 1))
            out[k] = v
            n -= 1
        return out, i
    if major == 4:  # array
        if depth >= _MAX_DEPTH:
            raise CBORError("CBOR nested deeper than %d levels" % _MAX_DEPTH)
        depth += 1
        if ai == 31:
            out = []
            while True:
                v, i = _item(b, i, depth)
                if v is _BREAK:
                    return out, i
                out.append(v)
        n, i = (ai, i) if ai < 24 else _arg(b, ai, i)
        if n > len(b) - i:
            raise _Truncated
        out = [None] * n
        for j in range(n):
            v, i = _item(b, i, depth)
            if v is _BREAK:
                raise CBORError("unexpected break code at offset %d" % (i - 1))
            out[j] = v
        return out, i
    if major == 7:
        if ai == 22 or ai == 23:
            return None, i
        if ai == 20:
            return False, i
        if ai == 21:
            return True, i
        if ai == 27:
            if i + 8 > len(b):
                raise _Truncated
            return _unpack_d(b, i)[0], i + 8
        if ai == 25:
            if i + 2 > len(b):
                raise _Truncated
            return _unpack_e(b, i)[0], i + 2
        if ai == 26:
            if i + 4 > len(b):
                raise _Truncated
            return _unpack_f(b, i)[0], i + 4
        if ai == 31:
            return _BREAK, i
        if ai < 20:
            return Simple(ai), i
        if ai == 24:
            if b[i] < 32:
                raise CBORError("a two-byte simple value below 32 at offset %d" % (i - 1))
            return Simple(b[i]), i + 1
        raise CBORError("invalid additional information %d for major type 7 at offset %d" % (ai, i - 1))
    if major == 1:
        n, i = (ai, i) if ai < 24 else _arg(b, ai, i)
        return -1 - n, i
    if major == 2:  # bytes
        if ai == 31:
            return _chunks(b, 2, i)
        n, i = (ai, i) if ai < 24 else _arg(b, ai, i)
        j = i + n
        if j > len(b):
            raise _Truncated
        return b[i:j], j
    # major 6: a tag
    tag, i = (ai, i) if ai < 24 else _arg(b, ai, i)
    if depth >= _MAX_DEPTH:
        raise CBORError("CBOR nested deeper than %d levels" % _MAX_DEPTH)
    v, i = _item(b, i, depth + 1)
    if v is _BREAK:
        raise CBORError("a tag without content at offset %d" % (i - 1))
    if tag == 2 or tag == 3:
        if type(v) is not bytes:
            raise CBORError("a bignum (tag %d) whose content is not a byte string" % tag)
        n = _from_bytes(v, "big")
        return (n if tag == 2 else -1 - n), i
    return v, i


def decode(data):
    """The one value the CBOR bytes `data` hold; :class:`CBORError` if they are not exactly one
    well-formed CBOR item."""
    if type(data) is not bytes:
        data = bytes(data)
    try:
        v, i = _item(data, 0, 0)
    except (IndexError, _Truncated):
        raise CBORError("truncated CBOR (%d bytes)" % len(data)) from None
    except RecursionError:
        raise CBORError("CBOR nested too deeply") from None
    if v is _BREAK:
        raise CBORError("unexpected break code at offset 0")
    if i != len(data):
        raise CBORError("%d trailing byte(s) after the CBOR value" % (len(data) - i))
    return v
