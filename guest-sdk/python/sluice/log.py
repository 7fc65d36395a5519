"""Lines in the host's log, tagged with the module's name.

``print()`` works too: the SDK sends what a handler writes to ``sys.stdout`` to the host's log at
level ``info`` and ``sys.stderr`` at ``warn``, a line at a time (the component's own stdout
is a bounded buffer the host shows only with a trap).
"""

import sys

from ._wit import host as _host
from ._wit import types as _t

__all__ = ["trace", "debug", "info", "warn", "error"]

_TRACE = _t.LogLevel.TRACE
_DEBUG = _t.LogLevel.DEBUG
_INFO = _t.LogLevel.INFO
_WARN = _t.LogLevel.WARN
_ERROR = _t.LogLevel.ERROR


def trace(message):
    _host.log(_TRACE, str(message))


def debug(message):
    _host.log(_DEBUG, str(message))


def info(message):
    _host.log(_INFO, str(message))


def warn(message):
    _host.log(_WARN, str(message))


def error(message):
    _host.log(_ERROR, str(message))


class _LineWriter:
    """A text stream that sends each complete line to the host's log at one level."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, level):
        self.level = level
        self.pending = []

    def write(self, s):
        s = str(s)
        if "\n" in s:
            lines = ("".join(self.pending) + s).split("\n")
            last = lines.pop()
            self.pending = [last] if last else []
            for line in lines:
                _host.log(self.level, line)
        elif s:
            self.pending.append(s)
        return len(s)

    def flush(self):
        if self.pending:
            line = "".join(self.pending)
            self.pending = []
            _host.log(self.level, line)

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False


_stdout = _LineWriter(_INFO)
_stderr = _LineWriter(_WARN)


def _capture_stdio():
    """From the first call into the component on: print() goes to the host's log."""
    sys.stdout = _stdout
    sys.stderr = _stderr


def _flush_stdio():
    if _stdout.pending:
        _stdout.flush()
    if _stderr.pending:
        _stderr.flush()
