//! Modules: deploying, loading and undeploying them, and the live state of each.
//!
//! Owns the module registry and the on-disk layout under the data directory:
//! `modules/<name>/module.wasm` (the component as deployed), `modules/<name>/module.json`
//! (name, version, partitions), `modules/<name>/p<k>/{depot,pstate}.redb`, and
//! `cache/*.cwasm` (compiled components). Invariants: a module directory is complete before it
//! is visible (written under a temporary name, then renamed); each partition has exactly one
//! worker thread, the only writer of its two redb files.

pub mod definition;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::{Config, PARTITIONS_MAX};
use crate::depot::log::DepotLog;
use crate::depot::{Depot, RouteError};
use crate::pstate::{self, AccessError, Catalog, Navigator, PStateStore, Session};
use crate::runtime::{CompileError, GuestError, GuestInstance, Runtime};
use crate::topology::microbatch::Coordinator;
use crate::topology::worker::{Reply, Worker};
use crate::topology::{AckLevel, AppendOutcome, ProcessingError, Topology, TopologyKind, Work};
use crate::value::{to_cbor, Value};
use definition::{valid_name, Definition};

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("invalid module name `{0}`: use 1-64 of a-z, 0-9, '-', '_'")]
    BadName(String),
    #[error("module `{0}` already exists; updating a deployed module is not supported yet (DELETE it first)")]
    Exists(String),
    #[error("partitions must be a power of two from 1 to {PARTITIONS_MAX}, got {0}")]
    BadPartitions(u32),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("`define` failed: {0}")]
    Define(GuestError),
    #[error("invalid definition: {0}")]
    InvalidDefinition(String),
    #[error("storage: {0}")]
    Io(String),
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("module `{module}` has no depot `{depot}`")]
    UnknownDepot { module: String, depot: String },
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("the record is {size} bytes, over the record_size_bytes limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("partition {0} is full (partition_queue_depth reached); retry later")]
    QueueFull(u32),
    #[error("partition {0} is not running")]
    Unavailable(u32),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    name: String,
    version: u64,
    partitions: u32,
}

/// One partition of a live module.
pub struct PartitionHandle {
    /// `None` once the module is shutting down.
    tx: RwLock<Option<Sender<Work>>>,
    /// Appends queued and not yet taken by the worker; bounded by `partition_queue_depth`.
    queued_appends: Arc<AtomicUsize>,
    pub log: Arc<DepotLog>,
    pub store: Arc<PStateStore>,
    /// Set once the worker finished recovery; until then the PState store may lag the log.
    pub ready: Arc<AtomicBool>,
}

/// A deployed, running module.
pub struct Module {
    pub name: String,
    pub version: u64,
    pub partitions: u32,
    pub definition: Definition,
    pub depots: BTreeMap<String, Depot>,
    pub catalog: Arc<Catalog>,
    pub topologies: Arc<Vec<Topology>>,
    pub handles: Vec<PartitionHandle>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The microbatch coordinator's stop flag and thread, if the module has microbatches.
    coordinator: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    record_size_bytes: usize,
    queue_depth: usize,
}

/// A queued append.
pub struct Submitted {
    pub partition: u32,
    /// The answer, unless the ack level was `none`.
    pub reply: Option<oneshot::Receiver<Result<AppendOutcome, ProcessingError>>>,
}

impl Module {
    /// Routes and queues one record. Never blocks: a full queue is an error.
    pub fn submit(
        &self,
        depot: &str,
        record: &Value,
        partition: Option<u32>,
        ack: AckLevel,
    ) -> Result<Submitted, AppendError> {
        let d = self
            .depots
            .get(depot)
            .ok_or_else(|| AppendError::UnknownDepot {
                module: self.name.clone(),
                depot: depot.to_string(),
            })?;
        let p = d.route(record, partition, self.partitions)?;
        let bytes = to_cbor(record);
        if bytes.len() > self.record_size_bytes {
            return Err(AppendError::TooLarge {
                size: bytes.len(),
                limit: self.record_size_bytes,
            });
        }
        let (reply, rx): (Option<Reply>, _) = if ack == AckLevel::None {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let work = Work::Append {
            depot: d.name.as_str().into(),
            record: bytes,
            ack,
            reply,
        };
        let handle = &self.handles[p as usize];
        let tx = handle.tx.read().expect("poisoned");
        let Some(tx) = tx.as_ref() else {
            return Err(AppendError::Unavailable(p));
        };
        if handle.queued_appends.fetch_add(1, Ordering::AcqRel) >= self.queue_depth {
            handle.queued_appends.fetch_sub(1, Ordering::AcqRel);
            return Err(AppendError::QueueFull(p));
        }
        match tx.send(work) {
            Ok(()) => Ok(Submitted {
                partition: p,
                reply: rx,
            }),
            Err(_) => {
                handle.queued_appends.fetch_sub(1, Ordering::AcqRel);
                Err(AppendError::Unavailable(p))
            }
        }
    }

    /// The partition a select goes to: the named one, or the owner of the leading key.
    pub fn select_partition(
        &self,
        pstate: &str,
        path: &[Navigator],
        partition: Option<u32>,
    ) -> Result<u32, AccessError> {
        let schema = self.catalog.schema(pstate)?;
        if let Some(p) = partition {
            if p >= self.partitions {
                return Err(AccessError::new(
                    "partition-out-of-range",
                    format!(
                        "partition {p} is out of range: this module has partitions 0..{}",
                        self.partitions
                    ),
                ));
            }
            return Ok(p);
        }
        pstate::check_leading_key(schema, pstate, path)?;
        pstate::leading_partition(path, self.partitions)?.ok_or_else(|| {
            AccessError::new(
                "partition-required",
                "the path does not start with `key`/`must`: name a partition (\"partition\": k or \"all\")",
            )
        })
    }

    /// Asks every partition to re-run `topology` on its dead letters; answers per partition
    /// (replayed, still failing).
    pub fn replay_dead_letters(
        &self,
        topology: &str,
    ) -> Vec<oneshot::Receiver<Result<(u64, u64), String>>> {
        let mut out = Vec::new();
        for h in &self.handles {
            let (tx, rx) = oneshot::channel();
            if let Some(q) = h.tx.read().expect("poisoned").as_ref() {
                let _ = q.send(Work::ReplayDeadLetters {
                    topology: topology.to_string(),
                    reply: tx,
                });
            }
            out.push(rx);
        }
        out
    }

    /// Whether partition `p` finished recovery (its PStates reflect everything acked).
    pub fn is_ready(&self, p: u32) -> bool {
        self.handles[p as usize].ready.load(Ordering::Acquire)
    }

    /// Selects from the committed state of one partition.
    pub fn select(
        &self,
        pstate: &str,
        path: &[Navigator],
        partition: Option<u32>,
        limit: usize,
    ) -> Result<Vec<Value>, AccessError> {
        let p = self.select_partition(pstate, path, partition)?;
        pstate::select_committed(
            &self.handles[p as usize].store,
            &self.catalog,
            pstate,
            path,
            limit,
        )
    }

    pub fn describe(&self) -> serde_json::Value {
        let mut d = self.definition.describe();
        d["name"] = self.name.clone().into();
        d["version"] = self.version.into();
        d["partitions"] = self.partitions.into();
        d
    }
}

/// All modules of a host.
pub struct Registry {
    config: Config,
    runtime: Arc<Runtime>,
    modules: RwLock<BTreeMap<String, Arc<Module>>>,
    /// Serialises deploys and undeploys.
    deploy_lock: Mutex<()>,
}

impl Registry {
    /// Opens the data directory and starts every module found in it.
    pub fn open(config: Config) -> anyhow::Result<Arc<Self>> {
        let modules_dir = config.data_dir.join("modules");
        std::fs::create_dir_all(&modules_dir)?;
        let runtime = Runtime::new(config.limits.clone(), &config.data_dir.join("cache"))?;
        let registry = Arc::new(Self {
            config,
            runtime,
            modules: RwLock::new(BTreeMap::new()),
            deploy_lock: Mutex::new(()),
        });
        for entry in std::fs::read_dir(&modules_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp") {
                std::fs::remove_dir_all(entry.path())?;
                continue;
            }
            let manifest: Manifest =
                serde_json::from_slice(&std::fs::read(entry.path().join("module.json"))?)?;
            let wasm = std::fs::read(entry.path().join("module.wasm"))?;
            let module = registry
                .start(&entry.path(), &manifest, &wasm)
                .map_err(|e| anyhow::anyhow!("loading module `{name}`: {e}"))?;
            tracing::info!(
                module = name,
                partitions = manifest.partitions,
                "module loaded"
            );
            registry
                .modules
                .write()
                .expect("poisoned")
                .insert(name, module);
        }
        Ok(registry)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn get(&self, name: &str) -> Option<Arc<Module>> {
        self.modules.read().expect("poisoned").get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Module>> {
        self.modules
            .read()
            .expect("poisoned")
            .values()
            .cloned()
            .collect()
    }

    fn module_dir(&self, name: &str) -> PathBuf {
        self.config.data_dir.join("modules").join(name)
    }

    /// Validates, compiles, defines and starts a new module. Blocking.
    pub fn deploy(
        &self,
        name: &str,
        wasm: &[u8],
        partitions: Option<u32>,
    ) -> Result<Arc<Module>, DeployError> {
        if !valid_name(name) {
            return Err(DeployError::BadName(name.to_string()));
        }
        let _guard = self.deploy_lock.lock().expect("poisoned");
        if self.get(name).is_some() {
            return Err(DeployError::Exists(name.to_string()));
        }
        let component = self.runtime.compile(wasm)?;
        let pre = self.runtime.prepare(&component)?;
        let mut instance = GuestInstance::new(Arc::clone(&self.runtime), pre, name)
            .map_err(DeployError::Define)?;
        let definition = instance.define().map_err(DeployError::Define)?;
        definition
            .validate()
            .map_err(DeployError::InvalidDefinition)?;
        let partitions = partitions
            .or(definition.partitions_hint)
            .unwrap_or(self.config.default_partitions);
        if !partitions.is_power_of_two() || partitions > PARTITIONS_MAX {
            return Err(DeployError::BadPartitions(partitions));
        }
        let manifest = Manifest {
            name: name.to_string(),
            version: 1,
            partitions,
        };
        let dir = self.module_dir(name);
        let tmp = dir.with_extension("tmp-deploy");
        let io = |e: std::io::Error| DeployError::Io(e.to_string());
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io)?;
        write_synced(&tmp.join("module.wasm"), wasm).map_err(io)?;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_synced(&tmp.join("module.json"), &json).map_err(io)?;
        std::fs::rename(&tmp, &dir).map_err(io)?;
        sync_dir(dir.parent().expect("has a parent")).map_err(io)?;
        let module = self.start(&dir, &manifest, wasm)?;
        self.modules
            .write()
            .expect("poisoned")
            .insert(name.to_string(), Arc::clone(&module));
        tracing::info!(module = name, partitions, "module deployed");
        Ok(module)
    }

    /// Stops a module and deletes it with all its data. Returns whether it existed.
    pub fn undeploy(&self, name: &str) -> Result<bool, DeployError> {
        let _guard = self.deploy_lock.lock().expect("poisoned");
        let Some(module) = self.modules.write().expect("poisoned").remove(name) else {
            return Ok(false);
        };
        shutdown_module(module);
        std::fs::remove_dir_all(self.module_dir(name))
            .map_err(|e| DeployError::Io(e.to_string()))?;
        Ok(true)
    }

    /// Stops every module's workers after they drain what is queued.
    pub fn shutdown(&self) {
        let modules = std::mem::take(&mut *self.modules.write().expect("poisoned"));
        for (_, m) in modules {
            shutdown_module(m);
        }
    }

    fn start(
        &self,
        dir: &Path,
        manifest: &Manifest,
        wasm: &[u8],
    ) -> Result<Arc<Module>, DeployError> {
        let component = self.runtime.compile(wasm)?;
        let pre = self.runtime.prepare(&component)?;
        let mut instance =
            GuestInstance::new(Arc::clone(&self.runtime), pre.clone(), &manifest.name)
                .map_err(DeployError::Define)?;
        let definition = instance.define().map_err(DeployError::Define)?;
        let validated = definition
            .validate()
            .map_err(DeployError::InvalidDefinition)?;
        let catalog = Arc::new(validated.catalog);
        let topologies = Arc::new(validated.topologies);
        let limits = self.runtime.limits().clone();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let (senders, receivers): (Vec<Sender<Work>>, Vec<_>) =
            (0..manifest.partitions).map(|_| channel()).unzip();
        let peers = Arc::new(senders);
        for (p, rx) in (0..manifest.partitions).zip(receivers) {
            let pdir = dir.join(format!("p{p}"));
            let io = |e: String| DeployError::Io(e);
            std::fs::create_dir_all(&pdir).map_err(|e| io(e.to_string()))?;
            let log =
                Arc::new(DepotLog::open(&pdir.join("depot.redb")).map_err(|e| io(e.to_string()))?);
            let store = Arc::new(
                PStateStore::open(&pdir.join("pstate.redb")).map_err(|e| io(e.to_string()))?,
            );
            let mut instance =
                GuestInstance::new(Arc::clone(&self.runtime), pre.clone(), &manifest.name)
                    .map_err(DeployError::Define)?;
            *instance.session_mut() = Some(Session::new(
                Arc::clone(&store),
                Arc::clone(&catalog),
                p,
                manifest.partitions,
                limits.select_values_max,
            ));
            let ready = Arc::new(AtomicBool::new(false));
            let queued_appends = Arc::new(AtomicUsize::new(0));
            let worker = Worker {
                module: manifest.name.as_str().into(),
                partition: p,
                partitions: manifest.partitions,
                log: Arc::clone(&log),
                store: Arc::clone(&store),
                instance,
                topologies: Arc::clone(&topologies),
                batch_records_max: limits.batch_records_max,
                handler_attempts_max: limits.handler_attempts_max,
                pstate_flush_interval: std::time::Duration::from_millis(
                    limits.pstate_flush_interval_ms,
                ),
                deadline_penalty: std::time::Duration::from_millis(limits.call_deadline_ms),
                ready: Arc::clone(&ready),
                queued_appends: Arc::clone(&queued_appends),
                peers: Arc::clone(&peers),
                rx,
                new_session: {
                    let (store, catalog) = (Arc::clone(&store), Arc::clone(&catalog));
                    let (partitions, max) = (manifest.partitions, limits.select_values_max);
                    Box::new(move || {
                        Session::new(Arc::clone(&store), Arc::clone(&catalog), p, partitions, max)
                    })
                },
                mb_waiting: Vec::new(),
                mb: Default::default(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("{}-p{p}", manifest.name))
                .spawn(move || worker.run())
                .map_err(|e| io(e.to_string()))?;
            threads.push(thread);
            handles.push(PartitionHandle {
                tx: RwLock::new(Some(peers[p as usize].clone())),
                queued_appends,
                log,
                store,
                ready,
            });
        }
        let microbatches: Vec<Topology> = topologies
            .iter()
            .filter(|t| t.kind == TopologyKind::Microbatch)
            .cloned()
            .collect();
        let coordinator = if microbatches.is_empty() {
            None
        } else {
            let stop = Arc::new(AtomicBool::new(false));
            let db = Coordinator::open_db(&dir.join("coordinator.redb"))
                .map_err(|e| DeployError::Io(e.to_string()))?;
            let c = Coordinator {
                module: manifest.name.as_str().into(),
                topologies: microbatches,
                partitions: manifest.partitions,
                logs: handles.iter().map(|h| Arc::clone(&h.log)).collect(),
                peers: Arc::clone(&peers),
                db,
                interval: std::time::Duration::from_millis(limits.microbatch_interval_ms),
                stop: Arc::clone(&stop),
            };
            let thread = std::thread::Builder::new()
                .name(format!("{}-microbatch", manifest.name))
                .spawn(move || c.run())
                .map_err(|e| DeployError::Io(e.to_string()))?;
            Some((stop, thread))
        };
        Ok(Arc::new(Module {
            name: manifest.name.clone(),
            version: manifest.version,
            partitions: manifest.partitions,
            definition,
            depots: validated.depots,
            catalog,
            topologies,
            handles,
            threads: Mutex::new(threads),
            coordinator: Mutex::new(coordinator),
            record_size_bytes: limits.record_size_bytes,
            queue_depth: limits.partition_queue_depth,
        }))
    }
}

/// Stops taking appends, lets each worker finish what is queued (hops still in flight stay in
/// their source's outbox and are re-sent after a restart), and joins the workers.
fn shutdown_module(module: Arc<Module>) {
    if let Some((stop, thread)) = module.coordinator.lock().expect("poisoned").take() {
        stop.store(true, Ordering::Release);
        let _ = thread.join();
    }
    for h in &module.handles {
        if let Some(tx) = h.tx.write().expect("poisoned").take() {
            let _ = tx.send(Work::Stop);
        }
    }
    let threads = std::mem::take(&mut *module.threads.lock().expect("poisoned"));
    for t in threads {
        let _ = t.join();
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
