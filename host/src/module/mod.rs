//! Modules: deploying, loading and undeploying them, and the live state of each.
//!
//! Owns the module registry and the on-disk layout under the data directory:
//! `modules/<name>/module.json` (name, version, partitions, and the file of the component:
//! `module.wasm` or `module-v<N>.wasm`), `modules/<name>/p<k>/{depot,pstate}.redb`, and
//! `cache/*.cwasm` (compiled components). Invariants: a module directory is complete before it
//! is visible (written under a temporary name, then renamed); an update becomes durable by one
//! atomic rename of `module.json` naming the new component file; each partition has exactly
//! one worker thread, the only writer of its two redb files (an update stops the old workers
//! before starting the new ones on the same open files).
//!
//! Module update: the new build is compiled, defined and checked against the deployed one
//! ([`Definition::check_update`]) while the old one serves; then the old module is *retired*
//! (new appends wait for the swap instead of failing), drained (every queued append taken,
//! every `full`-ack event tree finished), its workers stopped, and new workers started on the
//! same databases: topologies continue from their recorded offsets.

mod cluster;
pub mod definition;
pub mod migrator;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::cluster::jetstream::JetStreamLog;
use crate::cluster::replicated::Replication;
use crate::config::{Config, PARTITIONS_MAX};
use crate::depot::log::DepotLog;
use crate::depot::{Depot, RouteError};
use crate::imports::Imports;
use crate::partition::progress::processed_offset;
use crate::partition::work::PeerMessage;
use crate::partition::worker::panic_message;
use crate::partition::worker::{PartitionState, PartitionStatus, WorkerSpec};
use crate::partition::{PartitionConfig, Reply};
use crate::pstate::claims::WriterClaims;
use crate::pstate::{self, AccessError, Catalog, Navigator, PStateStore};
use crate::query::Queries;
use crate::runtime::{CompileError, GuestError, GuestInstance, Runtime};
use crate::storage::StorageOptions;
use crate::topology::microbatch::{Coordinator, ReplayRequest};
use crate::topology::{AckLevel, AppendOutcome, ProcessingError, Topology, TopologyKind, Work};
use crate::value::{to_cbor, Value};
use definition::{valid_name, Definition};

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("invalid module name `{0}`: use 1-64 of a-z, 0-9, '-', '_'")]
    BadName(String),
    #[error("module `{name}` cannot be updated to this build: {why}")]
    Incompatible { name: String, why: String },
    #[error("module `{name}` did not drain within {seconds} s ({detail}); the update was abandoned and the old version keeps running")]
    DrainTimeout {
        name: String,
        seconds: u64,
        detail: String,
    },
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
    /// The module could not be loaded at start; it must be repaired or undeployed first.
    #[error("module `{name}` failed to load: {reason}; undeploy it (DELETE, which deletes its files) or repair its files and restart the host")]
    Failed { name: String, reason: String },
    /// What a cluster cannot run yet (the module stays a single-node one).
    #[error("not supported on a cluster yet: {0}")]
    ClusterUnsupported(String),
    /// Claiming or restoring a partition from its replicated log failed.
    #[error("claiming the module's partitions: {0}")]
    Claim(String),
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("module `{module}` has no depot `{depot}`")]
    UnknownDepot { module: String, depot: String },
    #[error("depot `{depot}` is a tick depot: the host appends a tick to it every {interval_ms} ms, and clients cannot")]
    TickDepot { depot: String, interval_ms: u64 },
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("the record is {size} bytes, over the record_size_bytes limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("partition {0} is full (partition_queue_depth reached); retry later")]
    QueueFull(u32),
    #[error("partition {0} is not running")]
    Unavailable(u32),
    /// The partition failed for good (damaged files, lost data); see its cause.
    #[error("partition {partition} has failed and serves nothing: {cause}")]
    Failed { partition: u32, cause: String },
    /// The partition failed and is restarting; appends wait for it in no queue.
    #[error("partition {partition} is restarting after a failure: {cause}")]
    Restarting { partition: u32, cause: String },
    /// The module is being swapped for a new version: submit to its successor.
    #[error("module `{0}` is being updated")]
    Updating(String),
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Manifest {
    name: String,
    version: u64,
    partitions: u32,
    /// The component's file in the module directory.
    #[serde(default = "default_wasm_file")]
    wasm: String,
    /// Retention set by the deployment (`?retain.<depot>=…`), replacing what the module
    /// declares for those depots.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    retention: BTreeMap<String, crate::depot::Retention>,
}

/// What a deploy may set besides the component.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// The partition count of a new module (an update must keep it).
    pub partitions: Option<u32>,
    /// Per depot: `Some` sets the deployment's retention, `None` drops it (back to the
    /// module's declaration). Depots not named keep what the last deploy set.
    pub retention: BTreeMap<String, Option<crate::depot::Retention>>,
}

fn default_wasm_file() -> String {
    "module.wasm".into()
}

/// One partition of a live module.
pub struct PartitionHandle {
    /// `None` once the module is shutting down.
    tx: RwLock<Option<Sender<Work>>>,
    /// Appends queued and not yet taken by the worker; bounded by `partition_queue_depth`.
    queued_appends: Arc<AtomicUsize>,
    /// Its files here; `None` for a partition another host runs (a spread module on a
    /// cluster: its queue goes to that host, `cluster::remote`).
    pub files: Option<PartitionFiles>,
    /// Recovering, serving, restarting; ready once recovery finished (until then the PState
    /// store may lag the log).
    pub status: Arc<PartitionStatus>,
}

/// A partition's two files.
#[derive(Clone)]
pub struct PartitionFiles {
    pub log: Arc<DepotLog>,
    pub store: Arc<PStateStore>,
}

/// Where a spread module's partitions that run on other hosts are reached (see
/// `cluster::remote`), and which incarnation of the module this is.
pub struct RemotePartitions {
    pub link: Arc<crate::cluster::remote::Link>,
    pub since: u64,
    /// Re-send unconfirmed hops after this long.
    pub resend_hops_ms: u64,
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
    pub queries: Queries,
    pub handles: Vec<PartitionHandle>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The component's file in the module directory.
    wasm_file: String,
    /// Retention the deployment set, by depot (it replaces the module's declaration there).
    pub retention_set: BTreeMap<String, crate::depot::Retention>,
    /// `sluice_appends_total` by depot, per ack level (none, append, full).
    append_counters: BTreeMap<String, [Arc<std::sync::atomic::AtomicU64>; 3]>,
    /// Set while an update swaps this module out: submits answer [`AppendError::Updating`].
    retired: AtomicBool,
    /// `full`-ack event trees alive (see the worker); an update waits for zero.
    open_trees: Arc<AtomicUsize>,
    /// The microbatch coordinator's stop flag and thread, if the module has microbatches.
    coordinator: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    /// Per partition, its replicated log's owner on a cluster (empty on a single node;
    /// `None` for a partition another host runs).
    pub replications: Vec<Option<Arc<Replication<JetStreamLog>>>>,
    /// Hops queued per partition (the remote side delivers hops into the queues too).
    hops_queued: Arc<Vec<AtomicUsize>>,
    /// How partitions on other hosts are reached (a spread module on a cluster).
    pub remote: Option<Arc<RemotePartitions>>,
    /// Where dead-letter replays of microbatch topologies go (the coordinator).
    batch_replays: Option<std::sync::mpsc::Sender<ReplayRequest>>,
    record_size_bytes: usize,
    queue_depth: usize,
}

/// A record routed, encoded and checked, ready to queue.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub depot: Arc<str>,
    pub partition: u32,
    /// The record as CBOR.
    pub record: Vec<u8>,
    /// Its idempotency key, if any.
    pub key: Option<Arc<str>>,
}

/// A queued append.
pub struct Submitted {
    pub partition: u32,
    /// The answer, unless the ack level was `none`.
    pub reply: Option<oneshot::Receiver<Result<AppendOutcome, ProcessingError>>>,
}

impl Module {
    /// Routes, encodes and checks one record without queueing it: a batch is prepared whole
    /// before any of it is queued, so a bad record rejects it with nothing written.
    pub fn prepare(
        &self,
        depot: &str,
        record: &Value,
        partition: Option<u32>,
        key: Option<&str>,
    ) -> Result<Prepared, AppendError> {
        let d = self
            .depots
            .get(depot)
            .ok_or_else(|| AppendError::UnknownDepot {
                module: self.name.clone(),
                depot: depot.to_string(),
            })?;
        if let Some(interval_ms) = d.tick_interval_ms {
            return Err(AppendError::TickDepot {
                depot: depot.to_string(),
                interval_ms,
            });
        }
        let p = match key {
            // A keyed append to a random depot goes where its key hashes, so a retry finds
            // the key on the partition the first attempt went to.
            Some(k)
                if matches!(d.partitioner, crate::depot::Partitioner::Random)
                    && partition.is_none() =>
            {
                crate::partition::partition_of(k.as_bytes(), self.partitions)
            }
            _ => d.route(record, partition, self.partitions)?,
        };
        let bytes = to_cbor(record);
        if bytes.len() > self.record_size_bytes {
            return Err(AppendError::TooLarge {
                size: bytes.len(),
                limit: self.record_size_bytes,
            });
        }
        Ok(Prepared {
            depot: d.name.as_str().into(),
            partition: p,
            record: bytes,
            key: key.map(Into::into),
        })
    }

    /// Routes and queues one record. Never blocks: a full queue is an error.
    pub fn submit(
        &self,
        depot: &str,
        record: &Value,
        partition: Option<u32>,
        ack: AckLevel,
    ) -> Result<Submitted, AppendError> {
        let prepared = self.prepare(depot, record, partition, None)?;
        self.submit_prepared(&prepared, ack)
    }

    /// Queues a prepared record on its partition. Never blocks: a full queue is an error.
    pub fn submit_prepared(&self, r: &Prepared, ack: AckLevel) -> Result<Submitted, AppendError> {
        let p = r.partition;
        let (reply, rx): (Option<Reply>, _) = if ack == AckLevel::None {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let work = Work::Append {
            depot: Arc::clone(&r.depot),
            record: r.record.clone(),
            ack,
            reply,
            key: r.key.clone(),
        };
        let handle = &self.handles[p as usize];
        match handle.status.state() {
            PartitionState::Restarting { cause } => {
                return Err(AppendError::Restarting {
                    partition: p,
                    cause,
                })
            }
            PartitionState::Failed { cause } => {
                return Err(AppendError::Failed {
                    partition: p,
                    cause,
                })
            }
            _ => {}
        }
        let tx = handle.tx.read().expect("poisoned");
        // Checked under the read lock: `retire` takes every write lock after setting the
        // flag, so once it returns no submit is between this check and its send.
        if self.retired.load(Ordering::Acquire) {
            return Err(AppendError::Updating(self.name.clone()));
        }
        let Some(tx) = tx.as_ref() else {
            return Err(AppendError::Unavailable(p));
        };
        if handle.queued_appends.fetch_add(1, Ordering::AcqRel) >= self.queue_depth {
            handle.queued_appends.fetch_sub(1, Ordering::AcqRel);
            return Err(AppendError::QueueFull(p));
        }
        match tx.send(work) {
            Ok(()) => {
                if let Some(c) = self.append_counters.get(&*r.depot) {
                    c[ack as usize].fetch_add(1, Ordering::Relaxed);
                }
                Ok(Submitted {
                    partition: p,
                    reply: rx,
                })
            }
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
        self.catalog
            .home_partition(pstate, path, self.partitions)?
            .ok_or_else(|| {
            AccessError::new(
                "partition-required",
                "the path does not start with `key`/`must`: name a partition (\"partition\": k or \"all\")",
            )
        })
    }

    /// Asks every partition to re-run `topology` on its dead letters (a microbatch topology:
    /// asks the coordinator for a replay batch); answers (replayed, still failing) per partition
    /// or per batch.
    pub fn replay_dead_letters(
        &self,
        topology: &str,
    ) -> Vec<oneshot::Receiver<Result<(u64, u64), String>>> {
        let microbatch = self
            .topologies
            .iter()
            .any(|t| t.name == topology && t.kind == TopologyKind::Microbatch);
        if let (true, Some(replays)) = (microbatch, &self.batch_replays) {
            let (tx, rx) = oneshot::channel();
            let _ = replays.send(ReplayRequest {
                topology: topology.to_string(),
                reply: tx,
            });
            return vec![rx];
        }
        (0..self.partitions)
            .map(|p| self.replay_dead_letters_on(p, topology))
            .collect()
    }

    /// Queues `work` on partition `p` (dropped if the module is stopping: its reply then
    /// answers that the partition stopped).
    fn queue_on(&self, p: u32, work: Work) {
        if let Some(q) = self.handles[p as usize]
            .tx
            .read()
            .expect("poisoned")
            .as_ref()
        {
            let _ = q.send(work);
        }
    }

    /// Asks partition `p` (a stream topology's, on this host) to re-run `topology` on its dead
    /// letters; answers (replayed, still failing).
    pub fn replay_dead_letters_on(
        &self,
        p: u32,
        topology: &str,
    ) -> oneshot::Receiver<Result<(u64, u64), String>> {
        let (tx, rx) = oneshot::channel();
        self.queue_on(
            p,
            Work::ReplayDeadLetters {
                topology: topology.to_string(),
                reply: tx,
            },
        );
        rx
    }

    /// Asks partition `p` to discard one dead letter of `topology` (`by`: who asked).
    pub fn discard_dead_letter(
        &self,
        p: u32,
        topology: &str,
        depot: &str,
        offset: u64,
        by: &str,
    ) -> oneshot::Receiver<Result<crate::partition::dead_letters::Discard, String>> {
        let (tx, rx) = oneshot::channel();
        self.queue_on(
            p,
            Work::DiscardDeadLetter {
                topology: topology.to_string(),
                depot: depot.to_string(),
                offset,
                by: by.to_string(),
                reply: tx,
            },
        );
        rx
    }

    /// Partition `p`'s files, if it runs here.
    pub fn local_files(&self, p: u32) -> Result<&PartitionFiles, AccessError> {
        self.handles
            .get(p as usize)
            .and_then(|h| h.files.as_ref())
            .ok_or_else(|| {
                AccessError::new(
                    "partition-elsewhere",
                    format!(
                        "partition {p} of module `{}` runs on another host",
                        self.name
                    ),
                )
            })
    }

    /// Whether partition `p` runs on this host and serves here. A partition of a spread
    /// module that failed for good does not (fenced: another host claimed it): this host
    /// gives it up on its next placement tick, and until then its reads and hop messages
    /// go to the partition's new owner.
    pub fn is_local(&self, p: u32) -> bool {
        self.has_files(p)
            && !(self.remote.is_some()
                && matches!(self.partition_state(p), PartitionState::Failed { .. }))
    }

    /// Whether partition `p`'s files are open on this host (it runs here, or failed here
    /// and is not given up yet).
    pub fn has_files(&self, p: u32) -> bool {
        self.handles
            .get(p as usize)
            .is_some_and(|h| h.files.is_some())
    }

    /// Partition `p`'s files, if it serves here (see [`Module::is_local`]).
    pub fn serving_files(&self, p: u32) -> Option<&PartitionFiles> {
        self.handles[p as usize]
            .files
            .as_ref()
            .filter(|_| self.is_local(p))
    }

    /// The PState stores of the partitions that run here.
    fn local_stores(&self) -> Vec<Arc<PStateStore>> {
        self.handles
            .iter()
            .filter_map(|h| h.files.as_ref().map(|f| Arc::clone(&f.store)))
            .collect()
    }

    /// Queues a hop-protocol message that came from another host on partition `p`, if it
    /// runs here (else it is dropped: its source sends it again).
    pub fn deliver_peer(&self, p: u32, message: PeerMessage) {
        if !self.is_local(p) {
            return;
        }
        let hop = matches!(message, PeerMessage::Hop(_));
        let tx = self.handles[p as usize].tx.read().expect("poisoned");
        let Some(tx) = tx.as_ref() else { return };
        if hop {
            self.hops_queued[p as usize].fetch_add(1, Ordering::AcqRel);
        }
        if tx.send(Work::Peer(message)).is_err() && hop {
            self.hops_queued[p as usize].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The module's count of `full`-ack trees alive (stand-in trees of other hosts count).
    pub fn open_trees(&self) -> &Arc<AtomicUsize> {
        &self.open_trees
    }

    /// Whether partition `p` finished recovery (its PStates reflect everything acked).
    pub fn is_ready(&self, p: u32) -> bool {
        self.handles[p as usize].status.is_ready()
    }

    /// What partition `p` is doing.
    pub fn partition_state(&self, p: u32) -> PartitionState {
        self.handles[p as usize].status.state()
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
        if let (false, Some(r)) = (self.is_local(p), &self.remote) {
            let id = crate::cluster::remote::PartitionId {
                module: self.name.clone(),
                since: r.since,
                partition: p,
            };
            return r.link.select(&id, pstate, path, limit);
        }
        pstate::select_committed(
            &self.local_files(p)?.store,
            &self.catalog,
            pstate,
            path,
            limit,
        )
    }

    /// Stops new submits (they get [`AppendError::Updating`]); returns once no submit is in
    /// the middle of queueing.
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        for h in &self.handles {
            drop(h.tx.write().expect("poisoned"));
        }
    }

    /// Waits until every queued append was taken and every `full`-ack event tree finished;
    /// `Err` describes what is left at the deadline.
    fn drain(&self, within: std::time::Duration) -> Result<(), String> {
        let started = std::time::Instant::now();
        loop {
            let queued: usize = self
                .handles
                .iter()
                .map(|h| h.queued_appends.load(Ordering::Acquire))
                .sum();
            let trees = self.open_trees.load(Ordering::Acquire);
            if queued == 0 && trees == 0 {
                return Ok(());
            }
            if started.elapsed() > within {
                return Err(format!(
                    "{queued} appends queued, {trees} event trees in flight"
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Per topology, the records appended to its depots on partition `p` and not yet
    /// processed there (0 for a depot whose offsets cannot be read now).
    pub fn topology_lag(&self, p: usize) -> Vec<(&Topology, u64)> {
        let Some(h) = &self.handles[p].files else {
            return Vec::new();
        };
        let snapshot = h.store.begin_read().ok();
        self.topologies
            .iter()
            .map(|t| {
                let lag = t
                    .depots
                    .iter()
                    .map(|d| {
                        let end = h.log.end_offset(d).unwrap_or(0);
                        let done = snapshot
                            .as_ref()
                            .and_then(|s| processed_offset(s, &t.name, d).ok())
                            .unwrap_or(0);
                        end.saturating_sub(done)
                    })
                    .sum();
                (t, lag)
            })
            .collect()
    }

    /// Gauges of this module's current state: topology lag per partition, queue depths,
    /// version.
    pub fn gauges(&self) -> Vec<crate::metrics::Gauge> {
        use crate::metrics::Gauge;
        let mut out = vec![Gauge {
            name: "sluice_module_version",
            labels: vec![("module", self.name.clone())],
            value: self.version as f64,
        }];
        for (pstate, records) in self.migration_records() {
            let remaining: u64 = records
                .iter()
                .flatten()
                .filter(|r| !r.done)
                .map(|r| r.total.saturating_sub(r.rewritten))
                .sum();
            out.push(Gauge {
                name: "sluice_pstate_migration_remaining",
                labels: vec![("module", self.name.clone()), ("pstate", pstate)],
                value: remaining as f64,
            });
        }
        for (p, h) in self.handles.iter().enumerate() {
            let labels = vec![("module", self.name.clone()), ("partition", p.to_string())];
            out.push(Gauge {
                name: "sluice_partition_queue_depth",
                labels: labels.clone(),
                value: h.queued_appends.load(Ordering::Relaxed) as f64,
            });
            out.push(Gauge {
                name: "sluice_partition_serving",
                labels: labels.clone(),
                value: if h.status.is_ready() { 1.0 } else { 0.0 },
            });
            out.push(Gauge {
                name: "sluice_partition_restarts",
                labels: labels.clone(),
                value: h.status.restarts.load(Ordering::Relaxed) as f64,
            });
            out.push(Gauge {
                name: "sluice_partition_durable_position",
                labels,
                value: h.status.durable_position.load(Ordering::Relaxed) as f64,
            });
            for (t, lag) in self.topology_lag(p) {
                out.push(Gauge {
                    name: "sluice_topology_lag_records",
                    labels: vec![
                        ("module", self.name.clone()),
                        ("topology", t.name.clone()),
                        ("partition", p.to_string()),
                    ],
                    value: lag as f64,
                });
            }
        }
        out
    }

    pub fn describe(&self) -> serde_json::Value {
        let mut d = self.definition.describe();
        d["name"] = self.name.clone().into();
        d["version"] = self.version.into();
        d["partitions"] = self.partitions.into();
        if let Some(depots) = d["depots"].as_array_mut() {
            for x in depots {
                let name = x["name"].as_str().unwrap_or_default().to_string();
                if let Some(r) = self.retention_set.get(&name) {
                    x["retention"] = r.describe();
                    x["retention_set_by"] = "deployment".into();
                }
            }
        }
        let migrations = self.migrations();
        if !migrations.is_empty() {
            d["migrations"] = migrations.into();
        }
        d
    }

    /// Per migrating PState: its records on every partition (`None`: none there).
    fn migration_records(&self) -> Vec<(String, Vec<Option<pstate::migration::Record>>)> {
        self.catalog
            .migrating
            .iter()
            .map(|p| {
                let records = self
                    .handles
                    .iter()
                    .map(|h| {
                        let f = h.files.as_ref()?;
                        pstate::migration::record(&f.store, p).ok().flatten()
                    })
                    .collect();
                (p.clone(), records)
            })
            .collect()
    }

    /// The progress of each PState migration this version knows of (`GET /v1/modules/{m}`).
    pub fn migrations(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (pstate, records) in self.migration_records() {
            let records: Vec<_> = records.into_iter().flatten().collect();
            let Some(first) = records.first() else {
                continue;
            };
            let done = records.iter().filter(|r| r.done).count();
            let errors: Vec<&String> = records.iter().filter_map(|r| r.error.as_ref()).collect();
            let state = match (done == records.len(), errors.is_empty()) {
                (true, _) => "done",
                (false, true) => "running",
                (false, false) => "failed",
            };
            out.push(serde_json::json!({
                "pstate": pstate,
                "from": first.from,
                "to": first.to,
                "state": state,
                "entries": records.iter().map(|r| r.total).sum::<u64>(),
                "rewritten": records.iter().map(|r| r.rewritten).sum::<u64>(),
                "partitions_done": done,
                "errors": errors,
            }));
        }
        out
    }

    /// What an update to `new` must migrate: `(pstate, from, to)` for each PState whose schema
    /// changes with a migration declared; refuses an update that would leave a migration
    /// unfinished or stack a second one on it.
    pub fn migrations_to_begin(
        &self,
        new: &Definition,
    ) -> Result<Vec<(String, String, String)>, String> {
        for (pstate, records) in self.migration_records() {
            // Records for another target are an update that never started: not running.
            let current = self
                .catalog
                .schema(&pstate)
                .map(|s| s.to_string())
                .unwrap_or_default();
            let running = records
                .iter()
                .flatten()
                .find(|r| !r.done && r.to == current);
            let Some(r) = running else { continue };
            let Some(n) = new.pstates.iter().find(|n| n.name == pstate) else {
                continue;
            };
            if !n.migrate {
                return Err(format!(
                    "PState `{pstate}` is still migrating (`{}` -> `{}`); keep its migration in the new version until the migration is done",
                    r.from, r.to
                ));
            }
            let to = pstate::schema::Schema::parse(&n.schema)
                .map_or(n.schema.clone(), |s| s.to_string());
            if to != r.to {
                return Err(format!(
                    "PState `{pstate}` is still migrating to `{}`; a second migration (to `{to}`) can start once it is done",
                    r.to
                ));
            }
        }
        let claims = WriterClaims::load(&self.local_stores()).map_err(|e| e.to_string())?;
        let out = migrated_schema_changes(&self.definition, new)?;
        for (name, _, _) in &out {
            if let Some(pstate::claims::Writer::Microbatch(t)) = claims.writer(name) {
                return Err(format!(
                    "PState `{name}` is written by microbatch topology `{t}`, whose batches prepared before an update would land in the old shape: migrating it is not supported (give the new shape another PState)"
                ));
            }
        }
        Ok(out)
    }
}

/// The PStates an update from `old` to `new` migrates: `(pstate, from, to)` for each one
/// kept with `migrate` declared and a schema that changes.
pub(crate) fn migrated_schema_changes(
    old: &Definition,
    new: &Definition,
) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    for n in new.pstates.iter().filter(|n| n.migrate) {
        let Some(o) = old.pstates.iter().find(|o| o.name == n.name) else {
            continue;
        };
        let (a, b) = (
            pstate::schema::Schema::parse(&o.schema).map_err(|e| e.to_string())?,
            pstate::schema::Schema::parse(&n.schema).map_err(|e| e.to_string())?,
        );
        if a != b {
            out.push((n.name.clone(), a.to_string(), b.to_string()));
        }
    }
    Ok(out)
}

/// On a cluster, an update may not begin migrations (see [`Registry::update`]).
pub(super) fn refuse_migrations_on_cluster(
    migrations: &[(String, String, String)],
) -> Result<(), DeployError> {
    match migrations.first() {
        None => Ok(()),
        Some((pstate, from, to)) => Err(DeployError::ClusterUnsupported(format!(
            "migrating PState `{pstate}` (`{from}` -> `{to}`): its entries would be rewritten outside the partition logs; give the new shape another PState, or update on a single-node host"
        ))),
    }
}

/// A module found in the data directory that could not be loaded: it is kept out of service
/// (its files untouched) and reported, and the other modules serve.
#[derive(Debug, Clone)]
pub struct FailedModule {
    pub name: String,
    /// What is wrong, naming the file.
    pub reason: String,
}

/// All modules of a host.
pub struct Registry {
    config: Config,
    runtime: Arc<Runtime>,
    modules: RwLock<BTreeMap<String, Arc<Module>>>,
    /// Modules that failed to load at start.
    failed: RwLock<BTreeMap<String, FailedModule>>,
    /// Serialises deploys and undeploys.
    deploy_lock: Mutex<()>,
    /// Every subscription on the host ([`crate::subscription`]).
    subscriptions: Arc<crate::subscription::Subscriptions>,
    /// The clock every partition uses.
    clock: Arc<dyn crate::partition::seams::Clock>,
}

impl Registry {
    /// The manual clock the host runs on, if it was started with one.
    pub fn manual_clock(&self) -> Option<&Arc<crate::partition::seams::ManualClock>> {
        self.config.manual_clock.as_ref()
    }

    /// Opens the data directory and starts every module found in it. A module that cannot
    /// be loaded (a damaged or missing file, a stray directory) is recorded as failed with the
    /// reason and the others start; only an unusable data directory is an error.
    pub fn open(config: Config) -> anyhow::Result<Arc<Self>> {
        let modules_dir = config.data_dir.join("modules");
        std::fs::create_dir_all(&modules_dir)?;
        let runtime = Runtime::new(config.limits.clone(), &config.compile_cache_dir())?;
        let subscriptions = crate::subscription::Subscriptions::new(config.limits.subscriptions());
        let clock: Arc<dyn crate::partition::seams::Clock> = match &config.manual_clock {
            Some(c) => Arc::clone(c) as _,
            None => Arc::new(crate::partition::seams::SystemClock::default()),
        };
        let registry = Arc::new(Self {
            clock,
            config,
            runtime,
            modules: RwLock::new(BTreeMap::new()),
            failed: RwLock::new(BTreeMap::new()),
            deploy_lock: Mutex::new(()),
            subscriptions,
        });
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&modules_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp") {
                // An interrupted deploy: never visible, never acked anything.
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!("removing {}: {e}", entry.path().display());
                }
                continue;
            }
            found.push((name, entry.path()));
        }
        let manifests: Vec<_> = found.iter().map(|(_, dir)| read_manifest(dir)).collect();
        let files: usize = manifests
            .iter()
            .filter_map(|m| m.as_ref().ok())
            .map(|m| 2 * m.partitions as usize)
            .sum();
        let opts = registry.storage_options(files, 0);
        for ((name, dir), manifest) in found.into_iter().zip(manifests) {
            let loaded = manifest.and_then(|m| {
                let wasm = std::fs::read(dir.join(&m.wasm))
                    .map_err(|e| format!("{}: {e}", dir.join(&m.wasm).display()))?;
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    registry.start(&dir, &m, &wasm, Files::Open(&opts), Vec::new(), None)
                }))
                .map_err(|p| format!("panicked: {}", panic_message(&p)))?
                .map_err(|e| e.to_string())
                .map(|module| (module, m))
            });
            match loaded {
                Ok((module, m)) => {
                    tracing::info!(module = name, partitions = m.partitions, "module loaded");
                    registry
                        .modules
                        .write()
                        .expect("poisoned")
                        .insert(name, module);
                }
                Err(reason) => {
                    tracing::error!(module = name, "module failed to load: {reason}");
                    crate::metrics::inc("sluice_module_load_failures_total", &[("module", &name)]);
                    registry
                        .failed
                        .write()
                        .expect("poisoned")
                        .insert(name.clone(), FailedModule { name, reason });
                }
            }
        }
        Ok(registry)
    }

    /// How this host opens a module's files: redb's cache budget split evenly over every
    /// partition file open (`files` already counted, `new` about to be opened).
    fn storage_options(&self, files: usize, new: usize) -> StorageOptions {
        let files = (files + new).max(1);
        StorageOptions {
            cache_bytes: (self.config.cache_budget_bytes / files).max(CACHE_SHARE_BYTES_MIN),
            verify_on_open: self.config.verify_on_open,
        }
    }

    /// Partition files of the running modules.
    fn files_open(&self) -> usize {
        self.list().iter().map(|m| 2 * m.partitions as usize).sum()
    }

    /// Modules that failed to load at start.
    pub fn failed(&self) -> Vec<FailedModule> {
        self.failed
            .read()
            .expect("poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn failed_module(&self, name: &str) -> Option<FailedModule> {
        self.failed.read().expect("poisoned").get(name).cloned()
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn subscriptions(&self) -> &Arc<crate::subscription::Subscriptions> {
        &self.subscriptions
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

    /// Deploys a new module, or updates the module of that name to this build. Answers the
    /// running module and whether it is new. Blocking.
    pub fn deploy_or_update(
        &self,
        name: &str,
        wasm: &[u8],
        options: DeployOptions,
    ) -> Result<(Arc<Module>, bool), DeployError> {
        if !valid_name(name) {
            return Err(DeployError::BadName(name.to_string()));
        }
        // Deploys are rare; one at a time keeps the swap logic simple.
        let _guard = self.deploy_lock.lock().expect("poisoned");
        if let Some(f) = self.failed_module(name) {
            return Err(DeployError::Failed {
                name: f.name,
                reason: f.reason,
            });
        }
        match self.get(name) {
            Some(old) => self.update(old, wasm, options, None).map(|m| (m, false)),
            None => self.deploy_new(name, wasm, options).map(|m| (m, true)),
        }
    }

    /// The partition count of a new module: the deploy's, else the module's hint, else the
    /// host's default; a power of two up to [`PARTITIONS_MAX`].
    fn partitions_of(
        &self,
        options: &DeployOptions,
        definition: &Definition,
    ) -> Result<u32, DeployError> {
        let partitions = options
            .partitions
            .or(definition.partitions_hint)
            .unwrap_or(self.config.default_partitions);
        if !partitions.is_power_of_two() || partitions > PARTITIONS_MAX {
            return Err(DeployError::BadPartitions(partitions));
        }
        Ok(partitions)
    }

    /// Validates, compiles, defines and starts a new module.
    fn deploy_new(
        &self,
        name: &str,
        wasm: &[u8],
        options: DeployOptions,
    ) -> Result<Arc<Module>, DeployError> {
        let component = self.runtime.compile(wasm)?;
        let pre = self.runtime.prepare(&component)?;
        let definition = self.define(pre, name)?;
        definition
            .validate()
            .map_err(DeployError::InvalidDefinition)?;
        let retention = deployment_retention(&definition, &BTreeMap::new(), &options.retention)?;
        let partitions = self.partitions_of(&options, &definition)?;
        let manifest = Manifest {
            name: name.to_string(),
            version: 1,
            partitions,
            wasm: default_wasm_file(),
            retention,
        };
        let dir = self.module_dir(name);
        let tmp = dir.with_extension("tmp-deploy");
        let io = |e: std::io::Error| DeployError::Io(e.to_string());
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io)?;
        let opts = self.storage_options(self.files_open(), 2 * partitions as usize);
        for p in 0..partitions {
            crate::storage::create_partition(&tmp.join(format!("p{p}")), name, p, &opts)
                .map_err(|e| DeployError::Io(e.to_string()))?;
        }
        write_synced(&tmp.join("module.wasm"), wasm).map_err(io)?;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_synced(&tmp.join("module.json"), &json).map_err(io)?;
        std::fs::rename(&tmp, &dir).map_err(io)?;
        sync_dir(dir.parent().expect("has a parent")).map_err(io)?;
        let module = self.start(&dir, &manifest, wasm, Files::Open(&opts), Vec::new(), None)?;
        self.modules
            .write()
            .expect("poisoned")
            .insert(name.to_string(), Arc::clone(&module));
        tracing::info!(module = name, partitions, "module deployed");
        Ok(module)
    }

    /// Swaps a running module for a new build of it (see the module docs). On a cluster
    /// (`cluster_version`: the catalog's version of the build) the version is the catalog's,
    /// the partition logs stay claimed across the swap, and an update that would rewrite
    /// PState entries (a migration) is refused: the rewrite is not in the partition logs.
    pub(super) fn update(
        &self,
        old: Arc<Module>,
        wasm: &[u8],
        options: DeployOptions,
        cluster_version: Option<u64>,
    ) -> Result<Arc<Module>, DeployError> {
        let name = old.name.clone();
        let incompatible = |why: String| DeployError::Incompatible {
            name: name.clone(),
            why,
        };
        let dir = self.module_dir(&name);
        let same_build =
            std::fs::read(dir.join(&old.wasm_file)).is_ok_and(|deployed| deployed == wasm);
        // What is not a component at all is a 400 before any conflict (409) with the deployed one.
        let component = self.runtime.compile(wasm)?;
        if let Some(p) = options.partitions {
            if p != old.partitions {
                return Err(incompatible(format!(
                    "the partition count cannot change ({} -> {p}): every key's data lives on its partition",
                    old.partitions
                )));
            }
        }
        let retention_now =
            || deployment_retention(&old.definition, &old.retention_set, &options.retention);
        if cluster_version.is_none() && same_build && retention_now()? == old.retention_set {
            // The build and settings already running: a PUT is idempotent.
            return Ok(old);
        }
        let pre = self.runtime.prepare(&component)?;
        let definition = self.define(pre, &name)?;
        definition
            .validate()
            .map_err(DeployError::InvalidDefinition)?;
        let retention = deployment_retention(&definition, &old.retention_set, &options.retention)?;
        old.definition
            .check_update(&definition)
            .map_err(incompatible)?;
        let migrations = old.migrations_to_begin(&definition).map_err(incompatible)?;
        if cluster_version.is_some() {
            refuse_migrations_on_cluster(&migrations)?;
        }
        let io = |e: std::io::Error| DeployError::Io(e.to_string());
        let version = cluster_version.unwrap_or(old.version + 1);
        let manifest = Manifest {
            name: name.clone(),
            version,
            partitions: old.partitions,
            wasm: format!("module-v{version}.wasm"),
            retention,
        };
        write_synced(&dir.join(&manifest.wasm), wasm).map_err(io)?;

        let started = std::time::Instant::now();
        old.retire();
        if let Err(detail) = old.drain(UPDATE_DRAIN_MAX) {
            old.retired.store(false, Ordering::Release);
            let _ = std::fs::remove_file(dir.join(&manifest.wasm));
            return Err(DeployError::DrainTimeout {
                name,
                seconds: UPDATE_DRAIN_MAX.as_secs(),
                detail,
            });
        }
        let files: Vec<_> = old.handles.iter().map(|h| h.files.clone()).collect();
        stop_workers(&old);
        let old_manifest = Manifest {
            name: name.clone(),
            version: old.version,
            partitions: old.partitions,
            wasm: old.wasm_file.clone(),
            retention: old.retention_set.clone(),
        };
        // Any failure from here on restarts the old version, which ran a moment ago.
        let switched = begin_migrations(&name, &migrations, &files)
            .and_then(|()| write_manifest(&dir, &manifest).map_err(io))
            .and_then(|()| {
                self.start(
                    &dir,
                    &manifest,
                    wasm,
                    Files::Reuse(files.clone()),
                    old.replications.clone(),
                    old.remote.clone(),
                )
            });
        let module = match switched {
            Ok(m) => m,
            Err(e) => {
                // Back to the old build, which ran a moment ago.
                tracing::error!(
                    module = name,
                    "switching to the new version failed, restarting the old one: {e}"
                );
                write_manifest(&dir, &old_manifest).map_err(io)?;
                let old_wasm = std::fs::read(dir.join(&old_manifest.wasm)).map_err(io)?;
                let restored = self.start(
                    &dir,
                    &old_manifest,
                    &old_wasm,
                    Files::Reuse(files),
                    old.replications.clone(),
                    old.remote.clone(),
                )?;
                self.modules
                    .write()
                    .expect("poisoned")
                    .insert(name.clone(), restored);
                return Err(e);
            }
        };
        self.modules
            .write()
            .expect("poisoned")
            .insert(name.clone(), Arc::clone(&module));
        if old.wasm_file != manifest.wasm {
            let _ = std::fs::remove_file(dir.join(&old.wasm_file));
        }
        tracing::info!(
            module = name,
            version = manifest.version,
            swap_ms = started.elapsed().as_millis() as u64,
            "module updated"
        );
        Ok(module)
    }

    /// Stops a module and deletes it with all its data. Returns whether it existed.
    pub fn undeploy(&self, name: &str) -> Result<bool, DeployError> {
        let _guard = self.deploy_lock.lock().expect("poisoned");
        if self
            .failed
            .write()
            .expect("poisoned")
            .remove(name)
            .is_some()
        {
            std::fs::remove_dir_all(self.module_dir(name))
                .map_err(|e| DeployError::Io(e.to_string()))?;
            return Ok(true);
        }
        let Some(module) = self.modules.write().expect("poisoned").remove(name) else {
            return Ok(false);
        };
        module.retired.store(true, Ordering::Release);
        stop_workers(&module);
        for f in module.handles.iter().filter_map(|h| h.files.as_ref()) {
            f.store
                .changes()
                .close("module-deleted", &format!("module `{name}` was deleted"));
        }
        std::fs::remove_dir_all(self.module_dir(name))
            .map_err(|e| DeployError::Io(e.to_string()))?;
        Ok(true)
    }

    /// Stops every module's workers after they drain what is queued.
    pub fn shutdown(&self) {
        let modules = std::mem::take(&mut *self.modules.write().expect("poisoned"));
        for (_, m) in modules {
            stop_workers(&m);
        }
    }

    /// Calls a component's `define` in a fresh instance (its declarations, not yet validated).
    fn define(&self, pre: crate::runtime::Pre, name: &str) -> Result<Definition, DeployError> {
        let imports = Imports::new(name, self.runtime.limits().path_navigators_max);
        let mut instance =
            GuestInstance::new(Arc::clone(&self.runtime), pre, name, Box::new(imports))
                .map_err(DeployError::Define)?;
        let def = instance.define().map_err(DeployError::Define)?;
        let ext = instance.define_extensions().map_err(DeployError::Define)?;
        Definition::from_wit(def, ext).map_err(DeployError::InvalidDefinition)
    }

    /// Starts a module's workers on its partitions' files: already open (an update), or
    /// opened and checked here.
    fn start(
        &self,
        dir: &Path,
        manifest: &Manifest,
        wasm: &[u8],
        files: Files,
        replications: Vec<Option<Arc<Replication<JetStreamLog>>>>,
        remote: Option<Arc<RemotePartitions>>,
    ) -> Result<Arc<Module>, DeployError> {
        let component = self.runtime.compile(wasm)?;
        let pre = self.runtime.prepare(&component)?;
        let definition = self.define(pre.clone(), &manifest.name)?;
        let validated = definition
            .validate()
            .map_err(DeployError::InvalidDefinition)?;
        let ticks: Vec<(Arc<str>, u64)> = validated
            .depots
            .values()
            .filter_map(|d| {
                d.tick_interval_ms
                    .map(|ms| (Arc::from(d.name.as_str()), ms))
            })
            .collect();
        let mut validated = validated;
        for (depot, r) in &manifest.retention {
            if let Some(d) = validated.depots.get_mut(depot) {
                d.retention = *r;
            }
        }
        let retention: Vec<(Arc<str>, crate::depot::Retention)> = validated
            .depots
            .values()
            .filter(|d| !d.retention.is_unbounded())
            .map(|d| (Arc::from(d.name.as_str()), d.retention))
            .collect();
        let mut catalog = validated.catalog;
        if !catalog.migrating.is_empty() {
            catalog.migrator = Some(pstate::migration::CatalogMigrator(Arc::new(
                migrator::GuestMigrator::new(
                    Arc::clone(&self.runtime),
                    pre.clone(),
                    &manifest.name,
                ),
            )));
        }
        let catalog = Arc::new(catalog);
        let topologies = Arc::new(validated.topologies);
        let limits = self.runtime.limits().clone();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let (senders, receivers): (Vec<Sender<Work>>, Vec<_>) =
            (0..manifest.partitions).map(|_| channel()).unzip();
        let peers = Arc::new(senders);
        let hops_queued: Arc<Vec<AtomicUsize>> = Arc::new(
            (0..manifest.partitions)
                .map(|_| AtomicUsize::new(0))
                .collect(),
        );
        let open_trees = Arc::new(AtomicUsize::new(0));
        let io = |e: String| DeployError::Io(e);
        let files = match files {
            Files::Reuse(f) => f,
            Files::Open(opts) => {
                let mut opened = Vec::new();
                for p in 0..manifest.partitions {
                    let pdir = dir.join(format!("p{p}"));
                    let (log, store) =
                        crate::storage::open_partition(&pdir, &manifest.name, p, opts)
                            .map_err(|e| io(e.to_string()))?;
                    opened.push(Some(PartitionFiles {
                        log: Arc::new(log),
                        store: Arc::new(store),
                    }));
                }
                opened
            }
        };
        let local_everywhere = files.iter().all(Option::is_some);
        if !local_everywhere && remote.is_none() {
            return Err(io(
                "a partition has no files and no host to reach it on".into()
            ));
        }
        if !local_everywhere
            && topologies
                .iter()
                .any(|t| t.kind == TopologyKind::Microbatch)
        {
            return Err(DeployError::ClusterUnsupported(
                "microbatch topologies with partitions on other hosts".into(),
            ));
        }
        let stores: Vec<Arc<PStateStore>> = files
            .iter()
            .flatten()
            .map(|f| Arc::clone(&f.store))
            .collect();
        let claims = WriterClaims::load(&stores).map_err(|e| io(e.to_string()))?;
        let resend_hops_ms = remote.as_ref().map_or(0, |r| r.resend_hops_ms);
        for (p, rx) in (0..manifest.partitions).zip(receivers) {
            let status = Arc::new(PartitionStatus::default());
            let queued_appends = Arc::new(AtomicUsize::new(0));
            let Some(PartitionFiles { log, store }) = files[p as usize].clone() else {
                let remote = remote.as_ref().expect("checked above");
                let forwarder = crate::cluster::remote::Forwarder {
                    link: Arc::clone(&remote.link),
                    id: crate::cluster::remote::PartitionId {
                        module: manifest.name.clone(),
                        since: remote.since,
                        partition: p,
                    },
                    hops_queued: Arc::clone(&hops_queued),
                    queued_appends: Arc::clone(&queued_appends),
                };
                let thread = std::thread::Builder::new()
                    .name(format!("{}-p{p}-remote", manifest.name))
                    .spawn(move || forwarder.run(rx))
                    .map_err(|e| io(e.to_string()))?;
                threads.push(thread);
                status.set_remote();
                handles.push(PartitionHandle {
                    tx: RwLock::new(Some(peers[p as usize].clone())),
                    queued_appends,
                    files: None,
                    status,
                });
                continue;
            };
            log.set_idempotency_window_ms(limits.idempotency_window_ms);
            let spec = WorkerSpec {
                cfg: PartitionConfig {
                    module: manifest.name.as_str().into(),
                    partition: p,
                    partitions: manifest.partitions,
                    batch_records_max: limits.batch_records_max,
                    handler_attempts_max: limits.handler_attempts_max,
                    flush_interval_ms: limits.pstate_flush_interval_ms,
                    retry_backoff_base_ms: RETRY_BACKOFF_BASE_MS,
                    deadline_penalty_ms: limits.call_deadline_ms,
                    ticks: ticks.clone(),
                    retention: retention.clone(),
                },
                topologies: Arc::clone(&topologies),
                log: Arc::clone(&log),
                store: Arc::clone(&store),
                runtime: Arc::clone(&self.runtime),
                pre: pre.clone(),
                catalog: Arc::clone(&catalog),
                claims: Arc::clone(&claims),
                select_values_max: limits.select_values_max,
                peers: Arc::clone(&peers),
                hops_queued: Arc::clone(&hops_queued),
                hop_queue_max: limits.hop_queue_max.max(1),
                queued_appends: Arc::clone(&queued_appends),
                open_trees: Arc::clone(&open_trees),
                status: Arc::clone(&status),
                clock: Arc::clone(&self.clock),
                replication: replications.get(p as usize).cloned().flatten(),
                resend_hops_ms,
            };
            let thread = std::thread::Builder::new()
                .name(format!("{}-p{p}", manifest.name))
                .spawn(move || spec.run(rx))
                .map_err(|e| io(e.to_string()))?;
            threads.push(thread);
            handles.push(PartitionHandle {
                tx: RwLock::new(Some(peers[p as usize].clone())),
                queued_appends,
                files: Some(PartitionFiles { log, store }),
                status,
            });
        }
        let microbatches: Vec<Topology> = topologies
            .iter()
            .filter(|t| t.kind == TopologyKind::Microbatch)
            .cloned()
            .collect();
        let apply_gate = Arc::new(RwLock::new(()));
        let (replays_tx, replays) = std::sync::mpsc::channel();
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
                logs: files.iter().flatten().map(|f| Arc::clone(&f.log)).collect(),
                peers: Arc::clone(&peers),
                db,
                interval: std::time::Duration::from_millis(limits.microbatch_interval_ms),
                batch_records_max: limits.microbatch_records_max.max(1),
                stop: Arc::clone(&stop),
                apply_gate: Arc::clone(&apply_gate),
                replays,
            };
            let thread = std::thread::Builder::new()
                .name(format!("{}-microbatch", manifest.name))
                .spawn(move || c.run())
                .map_err(|e| DeployError::Io(e.to_string()))?;
            Some((stop, thread))
        };
        let queries = Queries::new(
            &manifest.name,
            Arc::clone(&self.runtime),
            pre,
            validated.queries,
            handles
                .iter()
                .map(|h| h.files.as_ref().map(|f| Arc::clone(&f.store)))
                .collect(),
            Arc::clone(&catalog),
            apply_gate,
        )
        .with_remote(remote.as_ref().map(|r| crate::query::RemoteReads {
            link: Arc::clone(&r.link),
            module: manifest.name.clone(),
            since: r.since,
            host: r.link.trees.host.clone(),
            hold_ms: self.runtime.limits().query_deadline_ms + QUERY_HOLD_MARGIN_MS,
        }));
        let append_counters = validated
            .depots
            .keys()
            .map(|d| {
                let c = |ack| {
                    crate::metrics::counter(
                        "sluice_appends_total",
                        &[("module", &manifest.name), ("depot", d), ("ack", ack)],
                    )
                };
                (d.clone(), [c("none"), c("append"), c("full")])
            })
            .collect();
        // Accepted: its compiled code goes to the cache now (never for a refused deploy).
        self.runtime.keep(wasm)?;
        Ok(Arc::new(Module {
            name: manifest.name.clone(),
            version: manifest.version,
            partitions: manifest.partitions,
            definition,
            depots: validated.depots,
            catalog,
            topologies,
            queries,
            handles,
            threads: Mutex::new(threads),
            retired: AtomicBool::new(false),
            open_trees,
            wasm_file: manifest.wasm.clone(),
            retention_set: manifest.retention.clone(),
            append_counters,
            batch_replays: coordinator.as_ref().map(|_| replays_tx),
            coordinator: Mutex::new(coordinator),
            record_size_bytes: limits.record_size_bytes,
            queue_depth: limits.partition_queue_depth,
            replications,
            hops_queued,
            remote,
        }))
    }
}

/// The partition files a module starts on.
enum Files<'a> {
    /// Open them (checking their headers) with these options.
    Open(&'a StorageOptions),
    /// The files of the version being updated (or restored from a cluster's logs), already
    /// open; `None` for a partition another host runs.
    Reuse(Vec<Option<PartitionFiles>>),
}

/// The smallest redb cache a partition file gets, whatever the budget.
const CACHE_SHARE_BYTES_MIN: usize = 1 << 20;

/// Records, durably on every partition, the migrations an update starts (its module is
/// stopped: nothing writes meanwhile).
fn begin_migrations(
    module: &str,
    migrations: &[(String, String, String)],
    files: &[Option<PartitionFiles>],
) -> Result<(), DeployError> {
    for (pstate, from, to) in migrations {
        for f in files.iter().flatten() {
            pstate::migration::begin(&f.store, pstate, from, to).map_err(|e| {
                DeployError::Io(format!("starting the migration of `{pstate}`: {e}"))
            })?;
        }
        tracing::info!(module, pstate, from, to, "PState migration started");
    }
    Ok(())
}

/// The retention a deploy leaves in force: the previous deployment's settings, changed as
/// `asked` says; each named depot must exist in `definition`.
fn deployment_retention(
    definition: &Definition,
    before: &BTreeMap<String, crate::depot::Retention>,
    asked: &BTreeMap<String, Option<crate::depot::Retention>>,
) -> Result<BTreeMap<String, crate::depot::Retention>, DeployError> {
    let mut out = before.clone();
    for (depot, r) in asked {
        if !definition.depots.iter().any(|d| d.name == *depot) {
            return Err(DeployError::InvalidDefinition(format!(
                "`retain.{depot}`: the module declares no depot `{depot}`"
            )));
        }
        match r {
            Some(r) => out.insert(depot.clone(), *r),
            None => out.remove(depot),
        };
    }
    out.retain(|depot, _| definition.depots.iter().any(|d| d.name == *depot));
    Ok(out)
}

/// A module directory's manifest; the error names the file.
fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let file = dir.join("module.json");
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    if name.as_deref() != Some(m.name.as_str()) {
        return Err(format!(
            "{}: names module `{}`, but it is in directory {}",
            file.display(),
            m.name,
            dir.display()
        ));
    }
    if !m.partitions.is_power_of_two() || m.partitions > PARTITIONS_MAX {
        return Err(format!(
            "{}: invalid partitions {}",
            file.display(),
            m.partitions
        ));
    }
    Ok(m)
}

/// Backoff before a handler's retry n is this `<< n` milliseconds.
const RETRY_BACKOFF_BASE_MS: u64 = 5;

/// How much longer than the query deadline another host holds a query's snapshot of its
/// partition (the query's end message may be lost; `cluster::pinned`).
const QUERY_HOLD_MARGIN_MS: u64 = 1_000;

/// How long an update waits for the old version to drain.
const UPDATE_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(30);

fn write_manifest(dir: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    let tmp = dir.join("module.json.tmp");
    write_synced(&tmp, &json)?;
    std::fs::rename(&tmp, dir.join("module.json"))?;
    sync_dir(dir)
}

/// Stops taking appends, lets each worker finish what is queued (hops still in flight stay in
/// their source's outbox and are re-sent by the next workers), and joins the workers.
fn stop_workers(module: &Module) {
    if let Some((stop, thread)) = module.coordinator.lock().expect("poisoned").take() {
        stop.store(true, Ordering::Release);
        let _ = thread.join();
    }
    for h in &module.handles {
        if let Some(tx) = h.tx.write().expect("poisoned").take() {
            h.status.request_stop();
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
