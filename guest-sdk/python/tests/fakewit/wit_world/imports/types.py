"""Stand-in for the generated `wit_world.imports.types`: the same classes and fields."""

from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass
class Partitioner_Hash:
    value: Any


@dataclass
class Partitioner_Random:
    pass


@dataclass
class Partitioner_Direct:
    pass


@dataclass
class DepotDef:
    name: Any
    partitioner: Any


@dataclass
class PstateDef:
    name: Any
    schema: Any


@dataclass
class StreamTopologyDef:
    name: Any
    depots: Any
    handler: Any
    hop_handlers: Any


@dataclass
class ModuleDefinition:
    depots: Any
    pstates: Any
    stream_topologies: Any
    microbatch_topologies: Any
    partitions_hint: Any
    queries: Any


@dataclass
class KeyRange:
    start: Any
    end: Any
    start_inclusive: Any
    end_inclusive: Any
    limit: Any
    reverse: Any


@dataclass
class Navigator_Key:
    value: Any


@dataclass
class Navigator_Must:
    value: Any


@dataclass
class Navigator_All:
    pass


@dataclass
class Navigator_MapKeys:
    pass


@dataclass
class Navigator_MapVals:
    pass


@dataclass
class Navigator_First:
    pass


@dataclass
class Navigator_Last:
    pass


@dataclass
class Navigator_Nth:
    value: Any


@dataclass
class Navigator_Count:
    pass


@dataclass
class Navigator_SortedRange:
    value: Any


@dataclass
class Navigator_NullToVal:
    value: Any


@dataclass
class Navigator_Filter:
    value: Any


@dataclass
class TransformOp_Set:
    value: Any


@dataclass
class TransformOp_Increment:
    value: Any


@dataclass
class TransformOp_Remove:
    pass


@dataclass
class TransformOp_Insert:
    value: Any


@dataclass
class TransformOp_Push:
    value: Any


@dataclass
class TransformOp_Merge:
    value: Any


@dataclass
class Error:
    code: Any
    message: Any


@dataclass
class RecordCtx:
    depot: Any
    partition: Any
    offset: Any
    partitions: Any
    batch_id: Any


@dataclass
class Target_Key:
    value: Any


@dataclass
class Target_All:
    pass


@dataclass
class Target_Partition:
    value: Any


class Comparison(Enum):
    EQ = 0
    NE = 1
    LT = 2
    LE = 3
    GT = 4
    GE = 5


class LogLevel(Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
