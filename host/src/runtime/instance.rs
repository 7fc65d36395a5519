//! One guest instance and the state its host imports see.
//!
//! A [`GuestInstance`] owns a wasmtime `Store` and the instantiated bindings. Every call gets
//! a fresh epoch deadline; any failed call (trap, deadline, memory cap) discards the store and
//! instantiates anew, carrying the [`Session`] over, because a trapped instance is poisoned.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::module::{host, types};
use super::bindings::{Module, ModulePre};
use super::output::GuestOutput;
use super::{Runtime, EPOCH_TICK_MS};
use crate::depot::Partitioner;
use crate::metrics::{histogram, Histogram};
use crate::module::definition::{Definition, DepotDecl, PStateDecl, TopologyDecl};
use crate::pstate::{Cmp, Navigator, Range, Session, TransformOp};
use crate::query::QueryReads;
use crate::value::{from_cbor, Value};

/// A component linked and ready to instantiate.
pub type Pre = ModulePre<HostState>;

/// Bytes of guest stdout/stderr kept per call, newest last (panic messages end up here).
const GUEST_OUTPUT_BYTES_MAX: usize = 64 << 10;
/// Tables (funcref etc.) a guest may grow to, in elements.
const TABLE_ELEMENTS_MAX: usize = 1 << 20;

/// Where the record a handler processes came from.
#[derive(Debug, Clone, Copy)]
pub struct RecordCtx<'a> {
    pub depot: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub partitions: u32,
    pub batch_id: Option<u64>,
}

/// A failed guest call. `code` is one of `guest-error` (the guest returned an error),
/// `trap`, `deadline-exceeded`, `memory-limit`, `invalid-definition`, `instantiate`.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{code}: {message}")]
pub struct GuestError {
    pub code: String,
    pub message: String,
}

struct MemoryCap {
    max_bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// What a guest's host imports act on.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    cap: MemoryCap,
    output: GuestOutput,
    module: Arc<str>,
    /// PState access for the call in progress; `None` (e.g. during `define`) refuses it.
    pub session: Option<Session>,
    /// Hops the call in progress asked for, in order.
    pub hops: Vec<EmittedHop>,
    /// Reads of the query in progress (then `session` is `None` and nothing can be written).
    pub query: Option<QueryReads>,
    /// The topology (or query) of the call in progress, for log lines.
    running: String,
    path_navigators_max: usize,
    /// Per topology, the hop handlers it declares: a hop to another name is refused at once.
    hop_handlers: Arc<BTreeMap<String, Vec<String>>>,
}

/// Where an emitted hop goes.
#[derive(Debug, Clone, PartialEq)]
pub enum HopDest {
    /// The partition owning this key.
    Key(Value),
    All,
    Partition(u32),
}

/// A hop a handler asked for; sent only if the handler succeeds.
#[derive(Debug, Clone)]
pub struct EmittedHop {
    pub dest: HopDest,
    pub handler: String,
    /// CBOR.
    pub payload: Vec<u8>,
}

/// Hops one guest call may emit.
pub const HOPS_PER_CALL_MAX: usize = 100_000;

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn wit_error(code: &str, message: impl Into<String>) -> types::Error {
    types::Error {
        code: code.to_string(),
        message: message.into(),
    }
}

fn cbor(bytes: &[u8], what: &str) -> Result<Value, types::Error> {
    from_cbor(bytes).map_err(|e| wit_error("invalid-value", format!("{what}: {e}")))
}

fn navigators(path: Vec<types::Navigator>, max: usize) -> Result<Vec<Navigator>, types::Error> {
    use types::Navigator as N;
    if path.len() > max {
        return Err(wit_error(
            "path-too-long",
            format!(
                "the path has {} navigators, over the path_navigators_max limit of {max}",
                path.len()
            ),
        ));
    }
    path.into_iter()
        .map(|n| {
            Ok(match n {
                N::Key(k) => Navigator::Key(cbor(&k, "navigator key")?),
                N::Must(k) => Navigator::Must(cbor(&k, "navigator must")?),
                N::All => Navigator::All,
                N::MapKeys => Navigator::MapKeys,
                N::MapVals => Navigator::MapVals,
                N::First => Navigator::First,
                N::Last => Navigator::Last,
                N::Nth(i) => Navigator::Nth(i),
                N::Count => Navigator::Count,
                N::SortedRange(r) => Navigator::SortedRange(Range {
                    start: r
                        .start
                        .map(|s| cbor(&s, "sorted-range start"))
                        .transpose()?,
                    end: r.end.map(|e| cbor(&e, "sorted-range end")).transpose()?,
                    start_inclusive: r.start_inclusive,
                    end_inclusive: r.end_inclusive,
                    limit: r.limit,
                    reverse: r.reverse,
                }),
                N::NullToVal(v) => Navigator::NullToVal(cbor(&v, "null-to-val")?),
                N::Filter((c, v)) => Navigator::Filter(
                    match c {
                        types::Comparison::Eq => Cmp::Eq,
                        types::Comparison::Ne => Cmp::Ne,
                        types::Comparison::Lt => Cmp::Lt,
                        types::Comparison::Le => Cmp::Le,
                        types::Comparison::Gt => Cmp::Gt,
                        types::Comparison::Ge => Cmp::Ge,
                    },
                    cbor(&v, "filter operand")?,
                ),
            })
        })
        .collect()
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn select(
        &mut self,
        pstate: String,
        path: Vec<types::Navigator>,
    ) -> wasmtime::Result<Result<Vec<Vec<u8>>, types::Error>> {
        let path = match navigators(path, self.path_navigators_max) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(reads) = self.query.as_ref() {
            let partition = match crate::pstate::leading_partition(&path, reads.partitions()) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    return Ok(Err(wit_error(
                        "partition-required",
                        "in a query, `select` goes to the partition of the path's leading key; this path has none: use `select-from` with a partition or `all`",
                    )))
                }
                Err(e) => return Ok(Err(wit_error(e.code, e.message))),
            };
            return Ok(reads
                .select(&pstate, &path, &[partition])
                .map(|mut lists| {
                    lists
                        .pop()
                        .unwrap_or_default()
                        .iter()
                        .map(crate::value::to_cbor)
                        .collect()
                })
                .map_err(|e| wit_error(e.code, e.message)));
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(Err(wit_error(
                "no-pstate-access",
                "PStates are not available in this call",
            )));
        };
        Ok(session
            .select(&pstate, &path)
            .map(|vs| vs.iter().map(crate::value::to_cbor).collect())
            .map_err(|e| wit_error(e.code, e.message)))
    }

    fn select_from(
        &mut self,
        pstate: String,
        target: types::Target,
        path: Vec<types::Navigator>,
    ) -> wasmtime::Result<Result<Vec<Vec<Vec<u8>>>, types::Error>> {
        let path = match navigators(path, self.path_navigators_max) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let (own, partitions) = match (&self.query, &self.session) {
            (Some(q), _) => (None, q.partitions()),
            (None, Some(s)) => (Some(s.partition()), s.partitions()),
            (None, None) => {
                return Ok(Err(wit_error(
                    "no-pstate-access",
                    "PStates are not available in this call",
                )))
            }
        };
        let targets: Vec<u32> = match target {
            types::Target::Key(k) => match cbor(&k, "target key").and_then(|v| {
                crate::pstate::partition_of_key(&v, partitions)
                    .map_err(|e| wit_error("invalid-key", e.to_string()))
            }) {
                Ok(p) => vec![p],
                Err(e) => return Ok(Err(e)),
            },
            types::Target::All => (0..partitions).collect(),
            types::Target::Partition(p) if p < partitions => vec![p],
            types::Target::Partition(p) => {
                return Ok(Err(wit_error(
                    "partition-out-of-range",
                    format!(
                        "partition {p} is out of range: this module has partitions 0..{partitions}"
                    ),
                )))
            }
        };
        let to_cbor_lists = |lists: Vec<Vec<Value>>| -> Vec<Vec<Vec<u8>>> {
            lists
                .iter()
                .map(|vs| vs.iter().map(crate::value::to_cbor).collect())
                .collect()
        };
        if let Some(reads) = self.query.as_ref() {
            return Ok(reads
                .select(&pstate, &path, &targets)
                .map(to_cbor_lists)
                .map_err(|e| wit_error(e.code, e.message)));
        }
        if targets != [own.expect("a handler has a partition")] {
            return Ok(Err(wit_error(
                "partition-not-local",
                "a topology handler reads only its own partition: hop to the others, or read them from a query",
            )));
        }
        let session = self.session.as_mut().expect("checked above");
        Ok(session
            .select(&pstate, &path)
            .map(|vs| to_cbor_lists(vec![vs]))
            .map_err(|e| wit_error(e.code, e.message)))
    }

    fn transform(
        &mut self,
        pstate: String,
        path: Vec<types::Navigator>,
        op: types::TransformOp,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        if self.query.is_some() {
            return Ok(Err(wit_error(
                "read-only",
                format!("queries are read-only: a transform of PState `{pstate}` is refused"),
            )));
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(Err(wit_error(
                "no-pstate-access",
                "PStates are not available in this call",
            )));
        };
        let path = match navigators(path, self.path_navigators_max) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        use types::TransformOp as T;
        let op = match op {
            T::Set(b) => cbor(&b, "set").map(TransformOp::Set),
            T::Increment(by) => Ok(TransformOp::Increment(by)),
            T::Remove => Ok(TransformOp::Remove),
            T::Insert(b) => cbor(&b, "insert").map(TransformOp::Insert),
            T::Push(b) => cbor(&b, "push").map(TransformOp::Push),
            T::Merge(b) => cbor(&b, "merge").map(TransformOp::Merge),
        };
        let op = match op {
            Ok(op) => op,
            Err(e) => return Ok(Err(e)),
        };
        Ok(session
            .transform(&pstate, &path, &op)
            .map_err(|e| wit_error(e.code, e.message)))
    }

    fn hop(
        &mut self,
        target: types::Target,
        handler: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let Some(session) = self.session.as_ref() else {
            return Ok(Err(wit_error(
                "no-hops",
                "hops are only possible from a topology handler (queries are read-only)",
            )));
        };
        if self.hops.len() >= HOPS_PER_CALL_MAX {
            return Ok(Err(wit_error(
                "too-many-hops",
                format!("one handler call may emit at most {HOPS_PER_CALL_MAX} hops"),
            )));
        }
        if let Err(e) = cbor(&payload, "hop payload") {
            return Ok(Err(e));
        }
        let dest = match target {
            types::Target::Key(k) => match cbor(&k, "hop key") {
                Ok(v) if crate::pstate::key::encode(&v).is_ok() => HopDest::Key(v),
                Ok(v) => {
                    return Ok(Err(wit_error(
                        "invalid-key",
                        format!("a {} cannot be a hop key", crate::value::type_name(&v)),
                    )))
                }
                Err(e) => return Ok(Err(e)),
            },
            types::Target::All => HopDest::All,
            types::Target::Partition(p) if p < session.partitions() => HopDest::Partition(p),
            types::Target::Partition(p) => {
                return Ok(Err(wit_error(
                    "partition-out-of-range",
                    format!(
                        "partition {p} is out of range: this module has partitions 0..{}",
                        session.partitions()
                    ),
                )))
            }
        };
        if let Some(declared) = self.hop_handlers.get(&self.running) {
            if !declared.contains(&handler) {
                return Ok(Err(wit_error(
                    "unknown-hop-handler",
                    format!(
                        "hop to handler `{handler}`, which topology `{}` does not declare (it has: {})",
                        self.running,
                        declared.join(", ")
                    ),
                )));
            }
        }
        self.hops.push(EmittedHop {
            dest,
            handler,
            payload,
        });
        Ok(Ok(()))
    }

    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        const LOG_LINE_BYTES_MAX: usize = 4096;
        let mut message = message;
        if message.len() > LOG_LINE_BYTES_MAX {
            let mut cut = LOG_LINE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let module = &*self.module;
        let topology = self.running.as_str();
        match level {
            types::LogLevel::Trace => tracing::trace!(module, topology, guest = true, "{message}"),
            types::LogLevel::Debug => tracing::debug!(module, topology, guest = true, "{message}"),
            types::LogLevel::Info => tracing::info!(module, topology, guest = true, "{message}"),
            types::LogLevel::Warn => tracing::warn!(module, topology, guest = true, "{message}"),
            types::LogLevel::Error => tracing::error!(module, topology, guest = true, "{message}"),
        }
        Ok(())
    }
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Module::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// A guest's error travels into logs, dead letters and HTTP answers: it is bounded.
const GUEST_ERROR_CHARS_MAX: usize = 4096;

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!(
            "{}… ({} bytes)",
            s.chars().take(n).collect::<String>(),
            s.len()
        )
    } else {
        s.to_string()
    }
}

/// One live instance of a module's component.
pub struct GuestInstance {
    runtime: Arc<Runtime>,
    pre: Pre,
    module: Arc<str>,
    store: Store<HostState>,
    bindings: Module,
    /// Call durations: define, handle, query.
    durations: [Arc<Histogram>; 3],
}

impl GuestInstance {
    pub fn new(runtime: Arc<Runtime>, pre: Pre, module: &str) -> Result<Self, GuestError> {
        let module: Arc<str> = module.into();
        let (store, bindings) = instantiate(&runtime, &pre, &module, None)?;
        let hist = |kind| {
            histogram(
                "sluice_guest_call_duration_seconds",
                &[("module", &module), ("kind", kind)],
            )
        };
        let durations = [hist("define"), hist("handle"), hist("query")];
        Ok(Self {
            runtime,
            pre,
            module,
            store,
            bindings,
            durations,
        })
    }

    /// The session host imports act on.
    pub fn session_mut(&mut self) -> &mut Option<Session> {
        &mut self.store.data_mut().session
    }

    /// Declares each topology's hop handlers, so a hop to an undeclared one fails at the
    /// `hop` call (the guest sees the error) instead of after the handler returned.
    pub fn set_hop_handlers(&mut self, handlers: Arc<BTreeMap<String, Vec<String>>>) {
        self.store.data_mut().hop_handlers = handlers;
    }

    /// Takes the hops the last call emitted.
    pub fn take_hops(&mut self) -> Vec<EmittedHop> {
        std::mem::take(&mut self.store.data_mut().hops)
    }

    /// Calls `define` and converts the declarations (not yet validated).
    pub fn define(&mut self) -> Result<Definition, GuestError> {
        self.arm();
        let started = std::time::Instant::now();
        let result = self
            .bindings
            .sluice_module_guest()
            .call_define(&mut self.store);
        self.durations[0].observe(started.elapsed());
        let def = self.settle(result)?;
        convert_definition(def)
    }

    /// Runs one handler on one record; returns the handler's ack-return value (CBOR).
    pub fn handle(
        &mut self,
        topology: &str,
        handler: &str,
        input: &[u8],
        ctx: RecordCtx<'_>,
    ) -> Result<Option<Vec<u8>>, GuestError> {
        self.arm();
        let wit_ctx = types::RecordCtx {
            depot: ctx.depot.to_string(),
            partition: ctx.partition,
            offset: ctx.offset,
            partitions: ctx.partitions,
            batch_id: ctx.batch_id,
        };
        let running = &mut self.store.data_mut().running;
        running.clear();
        running.push_str(topology);
        let started = std::time::Instant::now();
        let result = self.bindings.sluice_module_guest().call_handle(
            &mut self.store,
            topology,
            handler,
            &input.to_vec(),
            &wit_ctx,
        );
        self.durations[1].observe(started.elapsed());
        match self.settle(result)? {
            Ok(ack) => Ok(ack),
            Err(e) => {
                crate::metrics::inc(
                    "sluice_guest_failures_total",
                    &[("module", &self.module), ("code", "guest-error")],
                );
                Err(GuestError {
                    code: "guest-error".into(),
                    message: format!(
                        "{}: {}",
                        clip(&e.code, 64),
                        clip(&e.message, GUEST_ERROR_CHARS_MAX)
                    ),
                })
            }
        }
    }

    /// Runs query `name` on `args` (CBOR) reading through `reads`; the inner error is the
    /// guest's own (code, message).
    #[allow(clippy::type_complexity)]
    pub fn query(
        &mut self,
        name: &str,
        args: &[u8],
        partitions: u32,
        reads: QueryReads,
    ) -> Result<Result<Vec<u8>, (String, String)>, GuestError> {
        self.arm_for(self.runtime.limits().query_deadline_ms);
        let session = self.store.data_mut().session.take();
        self.store.data_mut().query = Some(reads);
        let running = &mut self.store.data_mut().running;
        running.clear();
        running.push_str(name);
        let started = std::time::Instant::now();
        let result = self.bindings.sluice_module_guest().call_query(
            &mut self.store,
            name,
            &args.to_vec(),
            partitions,
        );
        self.durations[2].observe(started.elapsed());
        let result = self.settle(result);
        self.store.data_mut().query = None;
        self.store.data_mut().session = session;
        Ok(result?.map_err(|e| (clip(&e.code, 64), clip(&e.message, GUEST_ERROR_CHARS_MAX))))
    }

    fn arm(&mut self) {
        self.arm_for(self.runtime.limits().call_deadline_ms);
    }

    fn arm_for(&mut self, deadline_ms: u64) {
        self.store.data_mut().hops.clear();
        self.store.data().output.clear();
        let ticks = deadline_ms.div_ceil(EPOCH_TICK_MS).max(1);
        self.store.set_epoch_deadline(ticks);
        self.store.data_mut().cap.hit = false;
    }

    /// Turns a call's outcome into ours; after a failure, replaces the poisoned instance.
    fn settle<T>(&mut self, result: wasmtime::Result<T>) -> Result<T, GuestError> {
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let state = self.store.data();
        let output = String::from_utf8_lossy(&state.output.contents()).into_owned();
        let output = output.trim();
        let tail: String = {
            let chars: Vec<char> = output.chars().collect();
            chars[chars.len().saturating_sub(500)..].iter().collect()
        };
        let (code, message) = if state.cap.hit {
            (
                "memory-limit",
                format!(
                    "the guest tried to grow its memory past the instance_memory_bytes limit of {} bytes",
                    self.runtime.limits().instance_memory_bytes
                ),
            )
        } else if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            (
                "deadline-exceeded",
                format!(
                    "the guest call ran past the call_deadline_ms limit of {} ms",
                    self.runtime.limits().call_deadline_ms
                ),
            )
        } else if tail.is_empty() {
            ("trap", format!("{err:#}"))
        } else {
            ("trap", format!("{err:#}; guest output: {tail}"))
        };
        crate::metrics::inc(
            "sluice_guest_failures_total",
            &[("module", &self.module), ("code", code)],
        );
        // The session moves to the new instance only once it exists: if instantiation
        // fails, it stays with the poisoned one, whose next call fails and tries again.
        match instantiate(&self.runtime, &self.pre, &self.module, None) {
            Ok((mut store, bindings)) => {
                store.data_mut().session = self.store.data_mut().session.take();
                store.data_mut().hop_handlers = Arc::clone(&self.store.data().hop_handlers);
                self.store = store;
                self.bindings = bindings;
            }
            Err(e) => tracing::error!(
                module = &*self.module,
                "re-instantiating after a failure: {e}"
            ),
        }
        Err(GuestError {
            code: code.into(),
            message,
        })
    }
}

fn instantiate(
    runtime: &Runtime,
    pre: &Pre,
    module: &Arc<str>,
    session: Option<Session>,
) -> Result<(Store<HostState>, Module), GuestError> {
    let output = GuestOutput::new(GUEST_OUTPUT_BYTES_MAX);
    let wasi = WasiCtx::builder()
        .stdout(output.clone())
        .stderr(output.clone())
        .build();
    let state = HostState {
        wasi,
        table: ResourceTable::new(),
        cap: MemoryCap {
            max_bytes: runtime.limits().instance_memory_bytes,
            hit: false,
        },
        output,
        module: Arc::clone(module),
        session,
        hops: Vec::new(),
        query: None,
        running: String::new(),
        hop_handlers: Arc::default(),
        path_navigators_max: runtime.limits().path_navigators_max,
    };
    let mut store = Store::new(runtime.engine(), state);
    store.limiter(|s| &mut s.cap);
    store.set_epoch_deadline(
        runtime
            .limits()
            .call_deadline_ms
            .div_ceil(EPOCH_TICK_MS)
            .max(1),
    );
    let bindings = pre.instantiate(&mut store).map_err(|e| GuestError {
        code: "instantiate".into(),
        message: format!("{e:#}"),
    })?;
    Ok((store, bindings))
}

fn topology_decl(t: types::StreamTopologyDef) -> TopologyDecl {
    TopologyDecl {
        name: t.name,
        depots: t.depots,
        handler: t.handler,
        hop_handlers: t.hop_handlers,
    }
}

fn convert_definition(def: types::ModuleDefinition) -> Result<Definition, GuestError> {
    Ok(Definition {
        depots: def
            .depots
            .into_iter()
            .map(|d| DepotDecl {
                name: d.name,
                partitioner: match d.partitioner {
                    types::Partitioner::Hash(fields) => Partitioner::Hash(fields),
                    types::Partitioner::Random => Partitioner::Random,
                    types::Partitioner::Direct => Partitioner::Direct,
                },
            })
            .collect(),
        pstates: def
            .pstates
            .into_iter()
            .map(|p| PStateDecl {
                name: p.name,
                schema: p.schema,
            })
            .collect(),
        stream_topologies: def
            .stream_topologies
            .into_iter()
            .map(topology_decl)
            .collect(),
        microbatch_topologies: def
            .microbatch_topologies
            .into_iter()
            .map(topology_decl)
            .collect(),
        partitions_hint: def.partitions_hint,
        queries: def.queries,
    })
}
