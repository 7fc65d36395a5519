"""A module's declarations, its handlers and queries, and the glue to the WIT `guest` export."""

import sys
import typing

from . import cbor
from . import log as _log
from ._wit import Err as _Err
from ._wit import host as _host
from ._wit import types as _t
from .errors import AckReturn, SluiceError
from .path import Path
from .schema import Partitioner, Schema
from .typed import Mismatch, converter

__all__ = ["Module", "Topology", "Ctx", "QueryCtx", "PState"]

#: The name under which a topology's record handler is declared (the host passes it to
#: `handle` for depot records); hop handlers are called by their own names.
RECORD_HANDLER = "on-record"


def _host_error(e):
    v = e.value
    return SluiceError(getattr(v, "code", "host-error"), getattr(v, "message", str(v)))


_decode = cbor.decode


def _encode(v, what):
    try:
        return cbor.encode(v)
    except cbor.CBORError as e:
        raise SluiceError("encode", "cannot encode %s: %s" % (what, e)) from None


class PState:
    """A PState: in a topology handler, its entries on the current partition (read and write);
    in a query, on any partition (read only; a write raises ``SluiceError("read-only", ...)``).

    Every method takes a :class:`Path`; values go in and come out as plain Python values (see
    :mod:`sluice.cbor`). Host errors raise :class:`SluiceError` with the host's code.
    """

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "PState(%r)" % self.name

    # -- reads ---------------------------------------------------------------------------------

    def select(self, path):
        """Every value `path` selects (in a query: on the partition owning its leading key)."""
        try:
            values = _host.select(self.name, path._navs)
        except _Err as e:
            raise _host_error(e) from None
        return [_decode(v) for v in values]

    def get(self, path, default=None):
        """The first value `path` selects, or `default` when it selects nothing."""
        try:
            values = _host.select(self.name, path._navs)
        except _Err as e:
            raise _host_error(e) from None
        return _decode(values[0]) if values else default

    def count(self, path):
        """The number of elements of the collection at `path` (0 when absent)."""
        return self.get(path.count(), 0)

    def select_from(self, target, path):
        """The values `path` selects on each partition `target` names (a :class:`Target`), one
        list per partition in partition order; the host reads them in parallel in a query. In a
        topology handler only the current partition may be targeted."""
        try:
            lists = _host.select_from(self.name, target, path._navs)
        except _Err as e:
            raise _host_error(e) from None
        return [[_decode(v) for v in vs] for vs in lists]

    def select_all(self, path):
        """What `path` selects on every partition, one list per partition."""
        return self.select_from(_t.Target_All(), path)

    def select_partition(self, partition, path):
        """What `path` selects on partition `partition`."""
        lists = self.select_from(_t.Target_Partition(int(partition)), path)
        return lists[0] if lists else []

    # -- writes --------------------------------------------------------------------------------

    def transform(self, path, op):
        """Apply a WIT ``transform-op`` at `path` (the helpers below build the op)."""
        try:
            _host.transform(self.name, path._navs, op)
        except _Err as e:
            raise _host_error(e) from None

    def set(self, path, value):
        """Set the value at `path`, creating intermediate maps."""
        self.transform(path, _t.TransformOp_Set(_encode(value, "the value to set")))

    def increment(self, path, by=1):
        """Add `by` (an integer) to the integer at `path`; an absent value counts as 0."""
        if type(by) is not int:
            if isinstance(by, bool) or not isinstance(by, int):
                raise TypeError("increment takes an integer, got %s" % type(by).__name__)
            by = int(by)
        self.transform(path, _t.TransformOp_Increment(by))

    def remove(self, path):
        """Remove the value at `path`."""
        self.transform(path, _REMOVE)

    def insert(self, path, element):
        """Add `element` to the set at `path`."""
        self.transform(path, _t.TransformOp_Insert(_encode(element, "the element to insert")))

    def push(self, path, element):
        """Append `element` to the list at `path`."""
        self.transform(path, _t.TransformOp_Push(_encode(element, "the element to push")))

    def merge(self, path, entries):
        """Set every entry of the map `entries` in the map at `path`."""
        self.transform(path, _t.TransformOp_Merge(_encode(entries, "the entries to merge")))


_REMOVE = _t.TransformOp_Remove()
_PSTATES = {}


def _pstate(name):
    p = _PSTATES.get(name)
    if p is None:
        p = _PSTATES[name] = PState(name)
    return p


class Ctx:
    """What a handler gets besides its record.

    ``ctx.record`` says where the record came from: ``.depot``, ``.partition``, ``.offset``,
    ``.partitions`` and ``.batch_id`` (the microbatch's id, stable across retries; ``None`` in a
    stream topology). For a hop handler it describes the record whose event tree the hop
    continues, with ``.partition`` the partition the hop runs on.
    """

    __slots__ = ("record",)

    def __init__(self, record):
        self.record = record

    def pstate(self, name):
        """The PState `name` on the current partition."""
        return _pstate(name)

    def hop(self, target, handler, payload):
        """Continue this record's event tree with the hop handler `handler` (of the current
        topology) on the `target` partition(s) (``Target.key(k)``, ``Target.all()``,
        ``Target.partition(p)``), carrying `payload`. Sent only if the current handler succeeds,
        after its writes commit; a ``full`` ack waits for it."""
        try:
            _host.hop(target, handler, _encode(payload, "the hop payload"))
        except _Err as e:
            raise _host_error(e) from None


class QueryCtx:
    """What a query gets besides its arguments: read access to every partition's PStates."""

    __slots__ = ("partitions",)

    def __init__(self, partitions):
        #: The module's partition count.
        self.partitions = partitions

    def pstate(self, name):
        """A read-only handle on the PState `name`, on any partition."""
        return _pstate(name)


def _param_converter(f):
    """The converter for the annotation of `f`'s second parameter (the record or arguments)."""
    code = getattr(f, "__code__", None)
    if code is None or code.co_argcount < 2:
        return None
    name = code.co_varnames[1]
    try:
        hints = typing.get_type_hints(f)
    except Exception as e:  # an annotation that does not resolve
        raise TypeError("cannot read the annotations of %s: %s" % (f.__qualname__, e)) from None
    ann = hints.get(name)
    return None if ann is None else converter(ann)


def _wrap(f, what, make_output):
    """The callable the dispatcher runs: decode `what`, convert it to the annotated type, call
    `f`, turn its result into the WIT answer. Errors are SluiceErrors with the SDK's codes."""
    conv = _param_converter(f)

    decode = cbor.decode

    def run(ctx, data):
        try:
            value = decode(data)
            if conv is not None:
                value = conv(value)
        except (cbor.CBORError, Mismatch) as e:
            raise SluiceError("decode", "cannot decode %s: %s" % (what, e)) from None
        return make_output(f(ctx, value))

    run.__wrapped__ = f
    return run


def _ack(result):
    if result is None:
        return None
    if type(result) is AckReturn:
        result = result.value
    return _encode(result, "the ack-return value")


def _answer(result):
    if type(result) is AckReturn:
        result = result.value
    return _encode(result, "the query answer")


class Topology:
    """A stream or microbatch topology being declared; see :meth:`Module.stream_topology`."""

    def __init__(self, module, name, microbatch):
        self._module = module
        self.name = name
        self.microbatch = microbatch
        self.depots = []
        self._handler = None
        self._hops = {}

    def reads(self, *depots):
        """Subscribe to depots: the record handler runs for each record appended to them."""
        for d in depots:
            if isinstance(d, str):
                self.depots.append(d)
            else:
                self.depots.extend(d)
        return self

    def handler(self, f):
        """Decorator: `f(ctx, record)` runs for each record of the topology's depots. Annotate
        `record` (a dataclass, ``str``, ...) to have it checked and converted (mismatch: code
        ``decode``). Its return value is the ack-return value (``None``: none)."""
        if self._handler is not None:
            raise ValueError("topology %r already has a record handler" % self.name)
        self._module._check_open()
        self._handler = _wrap(f, "the record", _ack)
        return f

    def hop_handler(self, name):
        """Decorator: `f(ctx, payload)` is the hop handler `name`, run where ``ctx.hop(...,
        name, payload)`` sends it."""
        if not isinstance(name, str) or not name:
            raise TypeError("hop_handler needs a name: @topology.hop_handler(\"name\")")

        def register(f):
            if name in self._hops or name == RECORD_HANDLER:
                raise ValueError("topology %r already has a handler %r" % (self.name, name))
            self._module._check_open()
            self._hops[name] = _wrap(f, "the hop payload", _ack)
            return f

        return register

    def _to_wit(self):
        if self._handler is None:
            raise ValueError(
                "topology %r has no record handler (decorate one with @topology.handler)" % self.name
            )
        if not self.depots:
            raise ValueError("topology %r reads no depot" % self.name)
        return _t.StreamTopologyDef(self.name, list(self.depots), RECORD_HANDLER, list(self._hops))


class Module:
    """Everything a module declares. Declare at import time, then export::

        m = Module()
        m.depot("words", Partitioner.hash("word"))
        m.pstate("counts", Schema.map(Schema.string(), Schema.int()))
        t = m.stream_topology("wordcount", reads="words")

        @t.handler
        def count(ctx, record): ...

        Guest = m.export()   # componentize-py calls the class named `Guest`
    """

    def __init__(self, partitions_hint=None):
        self._depots = []
        self._pstates = []
        self._topologies = []
        self._queries = {}
        self._partitions_hint = partitions_hint
        self._exported = None

    def _check_open(self):
        if self._exported is not None:
            raise RuntimeError("the module was already exported; declare everything before export()")

    def _check_new(self, kind, name, names):
        self._check_open()
        if not isinstance(name, str) or not name:
            raise TypeError("a %s needs a name, got %r" % (kind, name))
        if name in names:
            raise ValueError("%s %r is declared twice" % (kind, name))

    def depot(self, name, partitioner):
        """Declare a depot with a :class:`Partitioner`."""
        self._check_new("depot", name, [d.name for d in self._depots])
        if not isinstance(partitioner, Partitioner):
            raise TypeError("depot %r: use Partitioner.hash(...), .random() or .direct()" % name)
        self._depots.append(_t.DepotDef(name, partitioner._wit))
        return self

    def pstate(self, name, schema):
        """Declare a PState with a :class:`Schema` (or its text, e.g. ``"map<string, int>"``)."""
        self._check_new("pstate", name, [p.name for p in self._pstates])
        self._pstates.append(_t.PstateDef(name, str(schema)))
        return self

    def stream_topology(self, name, reads=()):
        """Declare a stream topology reading the depot(s) `reads`; decorate its record handler
        with ``@topology.handler`` and its hop handlers with ``@topology.hop_handler(name)``."""
        self._check_new("topology", name, [t.name for t in self._topologies])
        t = Topology(self, name, microbatch=False)
        self._topologies.append(t)
        return t.reads(reads)

    def microbatch_topology(self, name, reads=()):
        """Declare a microbatch topology (used like a stream topology): the host runs what
        accumulated in its depots in batches whose PState writes commit atomically on all
        partitions, exactly once; ``ctx.record.batch_id`` names the batch."""
        self._check_new("topology", name, [t.name for t in self._topologies])
        t = Topology(self, name, microbatch=True)
        self._topologies.append(t)
        return t.reads(reads)

    def query(self, name):
        """Decorator: `f(q, args)` answers the query topology `name`
        (``POST /v1/modules/{m}/queries/{name}`` with JSON arguments). `q` is a
        :class:`QueryCtx`; annotate `args` to have them checked and converted. Returns the
        answer (any value)."""
        self._check_new("query", name, self._queries)

        def register(f):
            self._check_open()
            self._queries[name] = _wrap(f, "the query arguments", _answer)
            return f

        return register

    def partitions_hint(self, partitions):
        """The partition count this module would like; a deploy may choose another."""
        self._check_open()
        self._partitions_hint = int(partitions)
        return self

    def definition(self):
        """The WIT ``module-definition`` (built once)."""
        if self._exported is None:
            self._exported = _t.ModuleDefinition(
                list(self._depots),
                list(self._pstates),
                [t._to_wit() for t in self._topologies if not t.microbatch],
                [t._to_wit() for t in self._topologies if t.microbatch],
                self._partitions_hint,
                list(self._queries),
            )
        return self._exported

    def export(self):
        """The class componentize-py instantiates for the ``guest`` export: bind it to the
        name ``Guest`` at the top level of the app module (``Guest = m.export()``)."""
        definition = self.definition()
        handlers = {}
        for t in self._topologies:
            handlers[(t.name, RECORD_HANDLER)] = t._handler
            for name, h in t._hops.items():
                handlers[(t.name, name)] = h
        return _guest_class(definition, handlers, dict(self._queries))


def _error(code, message):
    return _Err(_t.Error(code, message))


def _guest_exception(e):
    return _error("guest-exception", "%s: %s" % (type(e).__name__, e))


class _NoLateImports:
    """A meta-path finder installed once the component runs: an import of a module that was not
    loaded while the component was built fails with ImportError instead of trapping.

    componentize-py snapshots the interpreter after importing the app at build time; the
    component has no files at run time (no preopened directory; and with --stub-wasi a filesystem
    call traps, which the host retries as a crash), so a module can only use what was imported
    at build time."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in sys.builtin_module_names:
            return None  # compiled into the interpreter: no files needed
        raise ModuleNotFoundError(
            "No module named %r: a Sluice module can only use modules imported while it was "
            "built; import it at the top level of the app" % name,
            name=name,
        )


def _guest_class(definition, handlers, queries):
    state = {"live": False}

    def go_live():
        state["live"] = True
        _log._capture_stdio()
        if sys.platform == "wasi" and _NoLateImports not in sys.meta_path:
            sys.meta_path.insert(0, _NoLateImports)

    class Guest:
        """The ``sluice:module/guest`` export (componentize-py makes one instance)."""

        def define(self):
            if not state["live"]:
                go_live()
            return definition

        def handle(self, topology, handler, input, ctx):
            if not state["live"]:
                go_live()
            f = handlers.get((topology, handler))
            if f is None:
                raise _error(
                    "unknown-handler", "topology `%s` has no handler `%s`" % (topology, handler)
                )
            try:
                return f(Ctx(ctx), input)
            except SluiceError as e:
                raise _error(e.code, e.message) from None
            except MemoryError:
                raise  # a trap: the host accounts for the memory limit
            except BaseException as e:
                raise _guest_exception(e) from None
            finally:
                _log._flush_stdio()

        def query(self, name, args, partitions):
            if not state["live"]:
                go_live()
            f = queries.get(name)
            if f is None:
                raise _error("unknown-query", "no query named `%s`" % name)
            try:
                return f(QueryCtx(partitions), args)
            except SluiceError as e:
                raise _error(e.code, e.message) from None
            except MemoryError:
                raise
            except BaseException as e:
                raise _guest_exception(e) from None
            finally:
                _log._flush_stdio()

    return Guest
