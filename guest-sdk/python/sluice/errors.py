"""The error a handler or query raises, and the explicit ack-return wrapper."""

__all__ = ["SluiceError", "AckReturn"]


class SluiceError(Exception):
    """An error with a stable `code` and a `message` for people.

    Raised from a handler or query, it reaches the host as ``err({code, message})``: the handler's
    writes and hops are dropped and the record is dead-lettered (the host shows the error as
    ``"code: message"``). Host calls that fail (``wrong-partition``, ``read-only``, a PState that does
    not exist...) raise it with the host's code, so an uncaught one reaches the host unchanged.
    """

    def __init__(self, code, message=""):
        super().__init__(code, message)
        self.code = str(code)
        self.message = str(message)

    def __str__(self):
        return "%s: %s" % (self.code, self.message)

    def __repr__(self):
        return "SluiceError(%r, %r)" % (self.code, self.message)


class AckReturn:
    """An ack-return value, stated explicitly.

    A handler's return value is its ack-return value (what a ``full`` append answers under
    ``results``) except ``None``, which means "no value". Return ``AckReturn(None)`` to answer an
    explicit ``null``; ``AckReturn(v)`` and ``v`` are otherwise the same.
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return "AckReturn(%r)" % (self.value,)
