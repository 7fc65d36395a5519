"""sluice: write Sluice modules in Python.

A Sluice module declares **depots** (durable, partitioned logs of records), **PStates**
(partitioned, persistent indexes), **stream/microbatch topologies** (handlers run for each record
appended to the depots they read) and **queries**. This package hides the WIT contract, the CBOR
encoding and the ABI; build the app module with ``scripts/build-python-modules.sh`` (componentize-py).
See ``guest-sdk/python/README.md``.
"""

from . import cbor, log
from .errors import AckReturn, SluiceError
from .module import Ctx, Module, PState, QueryCtx, Topology
from .partition import partition_of_key
from .path import HopTarget, Path, Target
from .schema import Partitioner, Schema

__all__ = [
    "AckReturn",
    "Ctx",
    "HopTarget",
    "Module",
    "Partitioner",
    "Path",
    "PState",
    "QueryCtx",
    "Schema",
    "SluiceError",
    "Target",
    "Topology",
    "cbor",
    "log",
    "partition_of_key",
]
