"""Stand-in for componentize-py's `componentize_py_types` (what the SDK uses of it), so the SDK's
tests run on plain CPython. Same shape: `Err` is a frozen dataclass exception with `.value`."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Err(Exception):
    value: Any


@dataclass
class Ok:
    value: Any


@dataclass
class Some:
    value: Any
