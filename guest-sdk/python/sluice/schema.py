"""Declarations: how a depot partitions its records, and the shape of a PState."""

from ._wit import types as _t

__all__ = ["Partitioner", "Schema"]


class Partitioner:
    """How a depot routes an appended record to a partition."""

    __slots__ = ("_wit",)

    def __init__(self, wit):
        self._wit = wit

    @staticmethod
    def hash(field):
        """By the stable hash of a field of the record; nested fields are dotted (``"user.id"``)
        or given as a list of names (``["user", "id"]``)."""
        names = field.split(".") if isinstance(field, str) else [str(f) for f in field]
        if not names or any(not n for n in names):
            raise ValueError("Partitioner.hash needs a field name, got %r" % (field,))
        return Partitioner(_t.Partitioner_Hash(names))

    @staticmethod
    def random():
        """Spread evenly over the partitions."""
        return Partitioner(_t.Partitioner_Random())

    @staticmethod
    def direct():
        """The appender names the partition (``?partition=k``)."""
        return Partitioner(_t.Partitioner_Direct())

    def __repr__(self):
        w = self._wit
        if isinstance(w, _t.Partitioner_Hash):
            return "Partitioner.hash(%r)" % ".".join(w.value)
        return "Partitioner.%s()" % type(w).__name__.split("_", 1)[1].lower()


class Schema:
    """The shape of a PState, in the host's schema language (``str(schema)``).

    A PState's schema is a map whose keys partition it:
    ``Schema.map(Schema.string(), Schema.int())`` is ``map<string, int>``.
    """

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = str(text)

    def __str__(self):
        return self.text

    def __repr__(self):
        return "Schema(%r)" % self.text

    def __eq__(self, other):
        return isinstance(other, Schema) and other.text == self.text

    def __hash__(self):
        return hash(self.text)

    @staticmethod
    def bool():
        return Schema("bool")

    @staticmethod
    def int():
        return Schema("int")

    @staticmethod
    def float():
        return Schema("float")

    @staticmethod
    def string():
        return Schema("string")

    @staticmethod
    def bytes():
        return Schema("bytes")

    @staticmethod
    def any():
        """Any value at all (not checked)."""
        return Schema("any")

    @staticmethod
    def map(key, value):
        return Schema("map<%s, %s>" % (key, value))

    @staticmethod
    def set(element):
        return Schema("set<%s>" % element)

    @staticmethod
    def list(element):
        return Schema("list<%s>" % element)

    @staticmethod
    def record(fields=None, **kwargs):
        """A record: a map with these fixed string fields (each optional), given as a dict, a list
        of ``(name, schema)`` pairs or keyword arguments, in order."""
        items = list(fields.items() if hasattr(fields, "items") else fields or ())
        items += list(kwargs.items())
        return Schema("{%s}" % ", ".join("%s: %s" % (n, s) for n, s in items))

    def subindexed(self):
        """Store this collection element by element (millions of elements, range reads with one
        seek, O(1) counts). Allowed for the PState's value or a record field, not inside another
        subindexed collection."""
        return Schema("subindexed %s" % self.text)
