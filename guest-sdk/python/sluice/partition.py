"""Which partition owns a key, computed in the module exactly as the host computes it.

A mirror of the Rust SDK's ``partition_of_key`` (``guest-sdk/src/partition.rs``): the host's
order-preserving key encoding (``docs/key-encoding.md``), hashed with FNV-1a 64 and the splitmix64
finalizer. A handler that must reach many keys groups them by partition and sends one
``Target.partition(p)`` hop per group instead of one hop per key.
"""

import struct

from . import cbor
from .errors import SluiceError

__all__ = ["partition_of_key"]

_M64 = (1 << 64) - 1
_pack_q = struct.Struct(">Q").pack
_pack_d = struct.Struct(">d").pack


def partition_of_key(key, partitions):
    """The partition (of `partitions`) owning `key`: where ``Target.key(key)`` sends a hop, where
    a ``hash`` depot routes a record whose field is `key`, and where PState entries under the
    top-level key `key` live. `partitions` is ``ctx.record.partitions`` in a handler or
    ``q.partitions`` in a query. Raises ``SluiceError("not-a-key")`` for values that cannot be
    keys (maps, integers outside the i64 range), like the host."""
    out = bytearray()
    # The host sees the key as CBOR decoded into a value: go through the same bytes.
    _encode_key(cbor.decode(cbor.encode(key)), out)
    return _stable_hash(out) % max(int(partitions), 1)


def _stable_hash(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & _M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def _escape(b, out):
    out += b.replace(b"\x00", b"\x00\xff")
    out += b"\x00\x00"


def _encode_key(v, out):
    t = type(v)
    if v is None:
        out.append(0x01)
    elif t is bool:
        out.append(0x03 if v else 0x02)
    elif t is int:
        if not -(1 << 63) <= v < (1 << 63):
            raise SluiceError("not-a-key", "key integer out of the i64 range")
        out.append(0x10)
        out += _pack_q((v & _M64) ^ (1 << 63))
    elif t is float:
        bits = int.from_bytes(_pack_d(v), "big")
        ordered = bits ^ (1 << 63) if bits >> 63 == 0 else ~bits & _M64
        out.append(0x20)
        out += _pack_q(ordered)
    elif t is str:
        out.append(0x30)
        _escape(v.encode("utf-8"), out)
    elif t is bytes:
        out.append(0x40)
        _escape(v, out)
    elif t is list or t is tuple:
        out.append(0x50)
        for x in v:
            _encode_key(x, out)
        out.append(0x00)
    elif isinstance(v, dict):
        raise SluiceError("not-a-key", "a map cannot be a key")
    else:
        raise SluiceError("not-a-key", "this value cannot be a key")
