//! The WebAssembly runtime: engine, linker, bindings, sandbox limits, compiled-module cache.
//!
//! The only module that knows wasmtime. Invariants: a guest gets no ambient authority (WASI
//! with no preopens, no environment, TCP/UDP/name lookup off; stdout/stderr into a bounded
//! in-memory pipe);
//! a component importing anything outside [`ALLOWED_IMPORTS`] is refused before it runs; every
//! guest call has an epoch deadline and a memory cap; an instance that failed a call is
//! discarded and a fresh one instantiated, since a trapped instance cannot be entered again.

mod bindings;
mod instance;
mod output;

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

pub use bindings::CONTRACT_VERSION;
pub use instance::{GuestError, GuestInstance, HostImports, HostState, Pre, RecordCtx};

/// The contract's generated types and `host` interface, for the code that implements the host
/// imports ([`crate::imports`]) and reads a module's definition ([`crate::module`]).
pub mod wit {
    pub use super::bindings::ext::{ExtensionsDef, RetentionDef, TickDef};
    pub use super::bindings::sluice::module::host::Host;
    pub use super::bindings::sluice::module::types::*;
    /// What a host import returns: `Err` traps the guest (a host bug); the inner `Result` is
    /// the guest's own error, returned to it.
    pub type HostResult<T> = wasmtime::Result<T>;
}

use crate::config::Limits;

/// How often the engine's epoch advances; guest deadlines are counted in these ticks.
pub const EPOCH_TICK_MS: u64 = 10;

/// Import namespaces a module may use. The WASI imports language runtimes carry by default
/// (Rust's `wasm32-wasip2` std, CPython under componentize-py, QuickJS under componentize-js)
/// are satisfied by a WASI context that grants nothing: no preopened directory (so
/// `wasi:filesystem` reaches no file), TCP, UDP and name lookup switched off (so
/// `wasi:sockets` creates no socket), no environment, stdout/stderr into a bounded pipe.
/// Anything else — `wasi:http` among them — is refused. SECURITY.md argues the choice.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "sluice:module/types@",
    "sluice:module/host@",
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// What to tell the author of a component importing `name`, refused: how to build without it.
fn import_hint(name: &str) -> &'static str {
    if name.starts_with("wasi:http/") {
        " (JavaScript: build with componentize-js's QuickJS backend, or StarlingMonkey with `--disable http`; see docs/contract.md)"
    } else {
        ""
    }
}

/// A module that cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the module is {size} bytes, over the module_size_bytes limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("the component imports {}, which modules may not use (allowed: sluice:module, wasi:io, wasi:cli, wasi:clocks, wasi:random, wasi:filesystem and wasi:sockets without authority){}", .0.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", "), .0.first().map_or("", |i| import_hint(i)))]
    ForbiddenImport(Vec<String>),
    #[error("the component was built against `{found}`; this host accepts sluice:module@{CONTRACT_VERSION}")]
    ContractVersion { found: String },
    #[error("the component does not export `sluice:module/guest@{CONTRACT_VERSION}`; is it a Sluice module?")]
    MissingExport,
    #[error("compiled-module cache: {0}")]
    Cache(#[from] std::io::Error),
}

/// The engine and linker shared by every module of a host.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    cache_dir: PathBuf,
    /// Compiled components not yet accepted by a deploy: (cache path, compiled bytes,
    /// component), newest last. Written to the cache only by [`Runtime::keep`].
    pending: Mutex<VecDeque<(PathBuf, Vec<u8>, Component)>>,
}

/// Compiled components held in memory while their deploy runs `define` and its checks.
const PENDING_MAX: usize = 4;

impl Runtime {
    pub fn new(limits: Limits, cache_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        instance::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::create_dir_all(cache_dir)?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                match ticker.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            })?;
        Ok(Arc::new(Self {
            engine,
            linker,
            limits,
            cache_dir: cache_dir.to_path_buf(),
            pending: Mutex::new(VecDeque::new()),
        }))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Validates and compiles a component, using the compiled-module cache: a component seen
    /// before (same bytes, same engine settings) loads without compiling. A new one is held
    /// in memory until [`Runtime::keep`] (its deploy was accepted) writes it to the cache, so
    /// a refused component is never cached.
    pub fn compile(&self, wasm: &[u8]) -> Result<Component, CompileError> {
        if wasm.len() > self.limits.module_size_bytes {
            return Err(CompileError::TooLarge {
                size: wasm.len(),
                limit: self.limits.module_size_bytes,
            });
        }
        let path = self.cache_path(wasm);
        let pending = self.pending_get(&path);
        let component = match pending.or_else(|| self.load_cached(&path)) {
            Some(c) => c,
            None => {
                if wasmparser_is_core_module(wasm) {
                    return Err(CompileError::Invalid(
                        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)".into(),
                    ));
                }
                // Refused imports are found in the binary, before a compile is spent on them.
                let forbidden = forbidden_imports(component_imports(wasm)?);
                if !forbidden.is_empty() {
                    return Err(CompileError::ForbiddenImport(forbidden));
                }
                let compiled = self.engine.precompile_component(wasm).map_err(|e| {
                    crate::metrics::inc(
                        "sluice_component_compiles_total",
                        &[("outcome", "refused")],
                    );
                    CompileError::Invalid(format!("{e:#}"))
                })?;
                // SAFETY: produced just above by this engine.
                let component = unsafe { Component::deserialize(&self.engine, &compiled) }
                    .map_err(|e| CompileError::Invalid(e.to_string()))?;
                let checked = self.check_imports_and_exports(&component);
                let outcome = if checked.is_ok() { "ok" } else { "refused" };
                crate::metrics::inc("sluice_component_compiles_total", &[("outcome", outcome)]);
                checked?;
                let mut pending = self.pending.lock().expect("poisoned");
                if pending.len() >= PENDING_MAX {
                    pending.pop_front();
                }
                pending.push_back((path, compiled, component.clone()));
                return Ok(component);
            }
        };
        self.check_imports_and_exports(&component)?;
        Ok(component)
    }

    fn pending_get(&self, path: &Path) -> Option<Component> {
        let pending = self.pending.lock().expect("poisoned");
        pending
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, _, c)| c.clone())
    }

    /// Writes `wasm`'s compiled code to the cache, once its deploy was accepted.
    pub fn keep(&self, wasm: &[u8]) -> Result<(), CompileError> {
        let path = self.cache_path(wasm);
        let entry = {
            let mut pending = self.pending.lock().expect("poisoned");
            let i = pending.iter().position(|(p, _, _)| *p == path);
            i.and_then(|i| pending.remove(i))
        };
        if let Some((path, compiled, _)) = entry {
            store_cached(&path, &compiled)?;
        }
        Ok(())
    }

    /// Where the compiled code of `wasm` is cached (its SHA-256 and the engine's settings).
    fn cache_path(&self, wasm: &[u8]) -> PathBuf {
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let name = hex(&Sha256::digest(wasm));
        self.cache_dir
            .join(format!("{name}-{:016x}.cwasm", compat.finish()))
    }

    /// A cached compiled component, if its file matches the digest recorded beside it and
    /// loads; a bad entry is removed (and then recompiled by the caller).
    fn load_cached(&self, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let recorded = std::fs::read_to_string(digest_path(path)).unwrap_or_default();
        let component = if recorded.trim() == hex(&Sha256::digest(&bytes)) {
            // SAFETY: the bytes are exactly what this host wrote with `precompile_component`
            // (their SHA-256 matches the digest recorded when they were written), under a name
            // that includes the engine's compatibility hash.
            unsafe { Component::deserialize(&self.engine, &bytes) }.ok()
        } else {
            None
        };
        if component.is_none() {
            tracing::warn!(
                "compiled-module cache entry {} is damaged or incomplete; recompiling",
                path.display()
            );
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(digest_path(path));
        }
        component
    }

    fn check_imports_and_exports(&self, component: &Component) -> Result<(), CompileError> {
        let ty = component.component_type();
        let names: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        for name in &names {
            if let Some(rest) = name.strip_prefix("sluice:module/") {
                let version = rest.split_once('@').map_or("", |(_, v)| v);
                if version != CONTRACT_VERSION {
                    return Err(CompileError::ContractVersion {
                        found: name.to_string(),
                    });
                }
            }
        }
        let forbidden = forbidden_imports(names);
        if !forbidden.is_empty() {
            return Err(CompileError::ForbiddenImport(forbidden));
        }
        let want = format!("sluice:module/guest@{CONTRACT_VERSION}");
        let mut found_other = None;
        for (name, _) in ty.exports(&self.engine) {
            if name == want {
                return Ok(());
            }
            if name.starts_with("sluice:module/guest@") {
                found_other = Some(name.to_string());
            }
        }
        Err(match found_other {
            Some(found) => CompileError::ContractVersion { found },
            None => CompileError::MissingExport,
        })
    }

    /// Prepares a compiled component for instantiation (links its imports once).
    pub fn prepare(&self, component: &Component) -> Result<instance::Pre, CompileError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
        instance::Pre::new(pre).map_err(|e| CompileError::Invalid(format!("{e:#}")))
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Core modules start with the same magic as components but a different version/layer field.
/// The imports outside the allow-list among `names`.
fn forbidden_imports(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| !ALLOWED_IMPORTS.iter().any(|p| name.starts_with(p)))
        .collect()
}

/// The names a component imports at its top level, read from its binary (no compiling).
fn component_imports(wasm: &[u8]) -> Result<Vec<String>, CompileError> {
    let invalid = |e: wasmparser::BinaryReaderError| CompileError::Invalid(e.to_string());
    let mut depth = 0usize;
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    names.push(import.map_err(invalid)?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file holding a cache entry's SHA-256.
fn digest_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("cwasm.sha256")
}

/// Writes a cache entry atomically: the bytes and their digest are synced under temporary
/// names, then renamed (digest first) and the directory synced, so an entry is either whole
/// with its digest or absent.
fn store_cached(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let write = |p: &Path, bytes: &[u8]| -> std::io::Result<()> {
        let mut f = std::fs::File::create(p)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    // Names of this writer's own, so hosts sharing a cache never write one file together.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = format!(
        "{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let tmp = path.with_extension(format!("{unique}.tmp"));
    let tmp_digest = path.with_extension(format!("{unique}.sha256.tmp"));
    write(&tmp, compiled)?;
    write(&tmp_digest, hex(&Sha256::digest(compiled)).as_bytes())?;
    std::fs::rename(&tmp_digest, digest_path(path))?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
