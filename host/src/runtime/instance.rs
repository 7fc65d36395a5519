//! One guest instance and the state its host imports see.
//!
//! A [`GuestInstance`] owns a wasmtime `Store` and the instantiated bindings. Every call gets
//! a fresh epoch deadline; any failed call (trap, deadline, memory cap) discards the store and
//! instantiates anew, carrying the [`Session`] over, because a trapped instance is poisoned.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::ext::{Extensions, ExtensionsDef, ExtensionsIndices};
use super::bindings::sluice::module::types;
use super::bindings::{Module, ModulePre};
use super::output::GuestOutput;
use super::wit;
use super::{Runtime, EPOCH_TICK_MS};
use crate::metrics::{histogram, Histogram};

/// A component linked and ready to instantiate, with its `extensions` export if it has one.
#[derive(Clone)]
pub struct Pre {
    module: ModulePre<HostState>,
    extensions: Option<ExtensionsIndices>,
}

impl Pre {
    pub(super) fn new(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Pre> {
        let extensions = ExtensionsIndices::new(&pre).ok();
        Ok(Pre {
            module: ModulePre::new(pre)?,
            extensions,
        })
    }

    /// Whether the component exports the `extensions` interface.
    pub fn has_extensions(&self) -> bool {
        self.extensions.is_some()
    }
}

/// The instantiated exports.
struct Bindings {
    module: Module,
    extensions: Option<Extensions>,
}

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
#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
#[error("{code}: {message}")]
pub struct GuestError {
    pub code: String,
    pub message: String,
}

struct MemoryCap {
    max_bytes: usize,
    hit: bool,
    /// The size of the last growth refused (at instantiation: the memory's minimum).
    refused_bytes: usize,
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
            self.refused_bytes = desired;
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
    /// What the guest's calls may do: the host imports (`crate::imports` in the host).
    imports: Box<dyn HostImports>,
}

/// The host imports a guest calls, implemented outside this module (which knows wasmtime, not
/// PStates or queries): the generated `host` interface plus what a call needs around it.
pub trait HostImports: wit::Host + Send + 'static {
    /// A call of `running` (a topology or query name) begins: forget the last call's state.
    fn begin_call(&mut self, running: &str);
    /// For the owner to reach its own type behind the box.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Imports that refuse everything, standing in while the real ones move between instances.
struct NoImports;

impl wit::Host for NoImports {
    fn select(
        &mut self,
        _: String,
        _: Vec<wit::Navigator>,
    ) -> wasmtime::Result<Result<Vec<Vec<u8>>, wit::Error>> {
        Ok(Err(no_imports()))
    }
    fn select_from(
        &mut self,
        _: String,
        _: wit::Target,
        _: Vec<wit::Navigator>,
    ) -> wasmtime::Result<Result<Vec<Vec<Vec<u8>>>, wit::Error>> {
        Ok(Err(no_imports()))
    }
    fn transform(
        &mut self,
        _: String,
        _: Vec<wit::Navigator>,
        _: wit::TransformOp,
    ) -> wasmtime::Result<Result<(), wit::Error>> {
        Ok(Err(no_imports()))
    }
    fn hop(
        &mut self,
        _: wit::Target,
        _: String,
        _: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit::Error>> {
        Ok(Err(no_imports()))
    }
    fn log(&mut self, _: wit::LogLevel, _: String) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl HostImports for NoImports {
    fn begin_call(&mut self, _: &str) {}
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn no_imports() -> wit::Error {
    wit::Error {
        code: "no-pstate-access".into(),
        message: "PStates are not available in this call".into(),
    }
}

impl types::Host for HostState {}

/// The generated interface, delegated to the imports.
impl wit::Host for HostState {
    fn select(
        &mut self,
        pstate: String,
        path: Vec<wit::Navigator>,
    ) -> wasmtime::Result<Result<Vec<Vec<u8>>, wit::Error>> {
        self.imports.select(pstate, path)
    }
    fn select_from(
        &mut self,
        pstate: String,
        target: wit::Target,
        path: Vec<wit::Navigator>,
    ) -> wasmtime::Result<Result<Vec<Vec<Vec<u8>>>, wit::Error>> {
        self.imports.select_from(pstate, target, path)
    }
    fn transform(
        &mut self,
        pstate: String,
        path: Vec<wit::Navigator>,
        op: wit::TransformOp,
    ) -> wasmtime::Result<Result<(), wit::Error>> {
        self.imports.transform(pstate, path, op)
    }
    fn hop(
        &mut self,
        target: wit::Target,
        handler: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit::Error>> {
        self.imports.hop(target, handler, payload)
    }
    fn log(&mut self, level: wit::LogLevel, message: String) -> wasmtime::Result<()> {
        self.imports.log(level, message)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
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
    bindings: Bindings,
    /// Call durations: define, handle, query.
    durations: [Arc<Histogram>; 3],
}

impl GuestInstance {
    pub fn new(
        runtime: Arc<Runtime>,
        pre: Pre,
        module: &str,
        imports: Box<dyn HostImports>,
    ) -> Result<Self, GuestError> {
        let module: Arc<str> = module.into();
        let (store, bindings) = instantiate(&runtime, &pre, imports)?;
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

    /// The imports, as the type they were created with (`None` if they are another).
    pub fn imports_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.store
            .data_mut()
            .imports
            .as_any_mut()
            .downcast_mut::<T>()
    }

    /// Calls `define`: the module's declarations as the contract states them.
    pub fn define(&mut self) -> Result<wit::ModuleDefinition, GuestError> {
        self.arm();
        let started = std::time::Instant::now();
        let result = self
            .bindings
            .module
            .sluice_module_guest()
            .call_define(&mut self.store);
        self.durations[0].observe(started.elapsed());
        self.settle(result)
    }

    /// Calls `define-extensions`, if the component exports the interface (else the empty
    /// declarations).
    pub fn define_extensions(&mut self) -> Result<ExtensionsDef, GuestError> {
        let Some(ext) = self.bindings.extensions.as_ref() else {
            return Ok(ExtensionsDef {
                global_pstates: Vec::new(),
                ticks: Vec::new(),
                retention: Vec::new(),
                migrations: Vec::new(),
            });
        };
        let ext = ext.clone();
        self.arm();
        let result = ext.call_define_extensions(&mut self.store);
        self.settle(result)
    }

    /// Calls `migrate` on one stored value (CBOR); the inner error is the guest's own.
    #[allow(clippy::type_complexity)]
    pub fn migrate(
        &mut self,
        pstate: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Result<Vec<u8>, (String, String)>, GuestError> {
        let Some(ext) = self.bindings.extensions.as_ref() else {
            return Ok(Err((
                "no-migration".into(),
                "the component does not export `sluice:module/extensions`".into(),
            )));
        };
        let ext = ext.clone();
        self.arm();
        let result = ext.call_migrate(&mut self.store, pstate, &key.to_vec(), &value.to_vec());
        let result = self.settle(result);
        Ok(result?.map_err(|e| (clip(&e.code, 64), clip(&e.message, GUEST_ERROR_CHARS_MAX))))
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
        self.store.data_mut().imports.begin_call(topology);
        let started = std::time::Instant::now();
        let result = self.bindings.module.sluice_module_guest().call_handle(
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

    /// Runs query `name` on `args` (CBOR), reading through whatever the imports were given;
    /// the inner error is the guest's own (code, message).
    #[allow(clippy::type_complexity)]
    pub fn query(
        &mut self,
        name: &str,
        args: &[u8],
        partitions: u32,
    ) -> Result<Result<Vec<u8>, (String, String)>, GuestError> {
        self.arm_for(self.runtime.limits().query_deadline_ms);
        self.store.data_mut().imports.begin_call(name);
        let started = std::time::Instant::now();
        let result = self.bindings.module.sluice_module_guest().call_query(
            &mut self.store,
            name,
            &args.to_vec(),
            partitions,
        );
        self.durations[2].observe(started.elapsed());
        let result = self.settle(result);
        Ok(result?.map_err(|e| (clip(&e.code, 64), clip(&e.message, GUEST_ERROR_CHARS_MAX))))
    }

    fn arm(&mut self) {
        self.arm_for(self.runtime.limits().call_deadline_ms);
    }

    fn arm_for(&mut self, deadline_ms: u64) {
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
        // The imports (and the session in them) move to the new instance only once it
        // exists: if instantiation fails, they stay with the poisoned one, whose next call
        // fails and tries again.
        match instantiate(&self.runtime, &self.pre, Box::new(NoImports)) {
            Ok((mut store, bindings)) => {
                std::mem::swap(
                    &mut store.data_mut().imports,
                    &mut self.store.data_mut().imports,
                );
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
    imports: Box<dyn HostImports>,
) -> Result<(Store<HostState>, Bindings), GuestError> {
    let output = GuestOutput::new(GUEST_OUTPUT_BYTES_MAX);
    // No authority (see `ALLOWED_IMPORTS`): no preopens, no environment, no sockets.
    let wasi = WasiCtx::builder()
        .stdout(output.clone())
        .stderr(output.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let state = HostState {
        wasi,
        table: ResourceTable::new(),
        cap: MemoryCap {
            max_bytes: runtime.limits().instance_memory_bytes,
            hit: false,
            refused_bytes: 0,
        },
        output,
        imports,
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
    let instance = pre.module.instance_pre().instantiate(&mut store);
    let bindings = instance
        .and_then(|instance| {
            let module = Module::new(&mut store, &instance)?;
            let extensions = match &pre.extensions {
                Some(indices) => Some(indices.load(&mut store, &instance)?),
                None => None,
            };
            Ok(Bindings { module, extensions })
        })
        .map_err(|e| {
        let cap = &store.data().cap;
        let message = if cap.hit {
            format!(
                "the component needs {} of linear memory to instantiate, over the instance memory limit of {} (instance_memory_bytes; `sluice serve --instance-memory-mb`)",
                mib(cap.refused_bytes),
                mib(cap.max_bytes)
            )
        } else {
            format!("{e:#}")
        };
        GuestError {
            code: "instantiate".into(),
            message,
        }
    })?;
    Ok((store, bindings))
}

/// `bytes` for people: "1.06 MiB (1114112 bytes)".
fn mib(bytes: usize) -> String {
    format!("{:.2} MiB ({bytes} bytes)", bytes as f64 / (1 << 20) as f64)
}
