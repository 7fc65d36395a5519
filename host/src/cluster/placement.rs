//! Which host runs which module, and moving a module when its host dies (CLUSTER.md §4.3).
//!
//! A module runs on one host at a time, every partition of it (so hops, `full` acks and
//! queries stay inside one process, as on a single node); modules spread over the hosts.
//! The *owner* of a module is the holder of its partition 0's epoch; it then claims every
//! other partition at that same epoch ([`Claim::At`]). Each host, every tick:
//! - reads the module catalog;
//! - drops what it runs that the catalog deleted, or whose partition failed for good (a
//!   fenced or poisoned log: another host claimed it, or a write stayed in doubt) — deleting
//!   the local files, which are a cache of the logs;
//! - switches what it runs to the catalog's newer version of it (an update: drained and
//!   swapped as on a single node, its partition logs kept claimed);
//! - for a module no live host says it runs (heartbeats), reads partition 0's epoch and
//!   claims the module over it when it holds that epoch itself, or when its holder is dead
//!   (or none) and this host is the module's first choice (rendezvous hashing over the live
//!   hosts). A host cut off from NATS claims nothing.
//!
//! Invariants: a module's partitions are written by one host at a time (the fence:
//! a claim over a live owner's epoch fences it; a claimant that lost partition 0 never takes
//! another partition, since those are claimed at partition 0's epoch and only over lower
//! ones); a request is served only by the module's current owner, others forward it
//! (`api::forward`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::catalog::{CatalogError, Head, ModuleCatalog};
use super::fence::{latest_claim, Claim, PART_BYTES_MAX};
use super::jetstream::{JetStreamLog, Nats};
use super::membership::{HostView, Membership, OwnedModule, OwnedPartition, UpdateFailed};
use super::remote::{Link, PartitionInbox, RemoteTrees, Replies, TreeRef, WireAppend};
use super::replicated::{claim_restoring, Retry};
use crate::module::{Registry, RemotePartitions};
use crate::partition::worker::PartitionState;

/// Where a request for a module goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This host runs it.
    Local,
    /// Another live host says it runs it.
    Remote { host: String, address: String },
    /// The catalog has it, nobody runs it (a failover in progress).
    Unowned,
    /// The catalog has no such module.
    Unknown,
}

/// Counts of what this host's placement did, for the cluster view and the tests.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PlacementStats {
    pub claims: u64,
    pub claims_failed: u64,
    pub drops: u64,
    /// Switches of a module running here to a newer version from the catalog.
    pub updates: u64,
    /// How long the last claim took (catalog read, restore of every partition, start), ms.
    pub last_claim_ms: u64,
}

/// This host's part in the cluster: membership, the module catalog and placement.
pub struct Placement {
    pub host: String,
    pub membership: Arc<Membership>,
    pub catalog: ModuleCatalog<JetStreamLog>,
    registry: Arc<Registry>,
    nats: Nats,
    retry: Retry,
    /// How long a request waits for a module's owner during a failover.
    pub failover_wait: Duration,
    /// Partition logs opened, by (module, incarnation, partition).
    logs: Mutex<HashMap<(String, u64, u32), Arc<JetStreamLog>>>,
    update_failures: Mutex<UpdateFailures>,
    stats: Mutex<PlacementStats>,
    /// Serialises ticks (the loop's and a deploy's).
    ticking: Mutex<()>,
    /// What the tick in progress is doing, since when (read by the watch thread).
    stage: Mutex<Option<(Instant, String)>>,
    /// How this host reaches the partitions of spread modules that run on other hosts.
    pub link: Arc<Link>,
    /// The owner's side of each partition of a spread module running here, by (module,
    /// incarnation, partition).
    servers: Mutex<HashMap<(String, u64, u32), tokio::task::JoinHandle<()>>>,
}

/// A placement tick still running after this long is logged by the watch thread, with
/// what it is doing.
const STUCK_TICK: Duration = Duration::from_secs(10);

/// A placement tick longer than this is logged (its NATS reads waited out timeouts).
const SLOW_TICK: Duration = Duration::from_secs(3);

/// How long a spread partition waits for a confirmation before re-sending its hops.
const RESEND_HOPS_MS: u64 = 500;

/// The stream of the module catalog.
const CATALOG_STREAM: &str = "SL_MODULES";

impl Placement {
    /// Opens the catalog (creating its stream); nothing runs until [`Placement::spawn`].
    pub async fn open(
        nats: Nats,
        membership: Arc<Membership>,
        registry: Arc<Registry>,
        failover_wait: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let log = JetStreamLog::open_stream(&nats, CATALOG_STREAM.into(), "sl.modules".into())
            .await
            .map_err(|e| anyhow::anyhow!("opening the module catalog: {e}"))?;
        let trees = Arc::new(RemoteTrees::new(&membership.host));
        let owners: Arc<dyn super::remote::Owners> = Arc::clone(&membership) as _;
        super::remote::serve_trees(nats.clone(), Arc::clone(&trees), Arc::clone(&owners)).await?;
        let link = Arc::new(Link {
            replies: Replies::start(nats.clone(), failover_wait, Arc::clone(&owners)).await?,
            nats: nats.clone(),
            trees,
            owners,
            failover_wait,
        });
        Ok(Arc::new(Self {
            link,
            servers: Mutex::new(HashMap::new()),
            host: membership.host.clone(),
            membership,
            catalog: ModuleCatalog::new(Arc::new(log)),
            registry,
            nats,
            retry: Retry::default(),
            failover_wait,
            logs: Mutex::new(HashMap::new()),
            update_failures: Mutex::new(UpdateFailures::default()),
            stats: Mutex::new(PlacementStats::default()),
            ticking: Mutex::new(()),
            stage: Mutex::new(None),
        }))
    }

    /// Runs the placement loop on its own thread (its calls block on NATS), every `every`.
    pub fn spawn(self: &Arc<Self>, every: Duration) {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("placement".into())
            .spawn(move || loop {
                me.tick();
                std::thread::sleep(every);
            })
            .expect("spawning the placement thread");
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("placement-watch".into())
            .spawn(move || loop {
                std::thread::sleep(STUCK_TICK);
                if let Some((since, stage)) = me.stage.lock().expect("poisoned").clone() {
                    if since.elapsed() >= STUCK_TICK {
                        tracing::warn!(
                            s = since.elapsed().as_secs(),
                            "the placement tick is stuck at: {stage}"
                        );
                    }
                }
            })
            .expect("spawning the placement watch thread");
    }

    /// Records what the tick does now (`None`: it ended).
    fn at(&self, stage: Option<String>) {
        *self.stage.lock().expect("poisoned") = stage.map(|s| (Instant::now(), s));
    }

    pub fn stats(&self) -> PlacementStats {
        self.stats.lock().expect("poisoned").clone()
    }

    /// One pass over the catalog (see the module docs). Blocking.
    pub fn tick(&self) {
        let _one = self.ticking.lock().expect("poisoned");
        let started = Instant::now();
        // First what needs no NATS: a stalled read below must not keep a failed module here.
        self.at(Some("dropping failed modules".into()));
        self.drop_failed();
        self.at(Some("reading the catalog".into()));
        if let Err(e) = self.catalog.refresh() {
            tracing::warn!("reading the module catalog: {e}");
        }
        let hosts = self.membership.hosts();
        for head in self.catalog.heads() {
            self.at(Some(format!("module `{}`", head.module)));
            if let Err(e) = self.reconcile(&head, &hosts) {
                tracing::warn!(module = head.module, "placement: {e}");
            }
        }
        for m in self.registry.list() {
            if self.catalog.head(&m.name).is_none() {
                self.drop(&m.name, "module-deleted", "the cluster has no such module");
            }
        }
        self.at(Some("reporting".into()));
        self.report();
        self.at(None);
        let took = started.elapsed();
        if took > SLOW_TICK {
            tracing::warn!(ms = took.as_millis() as u64, "a slow placement tick");
        }
    }

    /// Drops each module placed per module that runs here with a partition failed for good
    /// (fenced by another host's claim, or a write left in doubt): only a new claim of the
    /// whole module restores it.
    fn drop_failed(&self) {
        for m in self.registry.list() {
            if m.remote.is_some() || m.replications.is_empty() {
                continue;
            }
            if let Some(cause) = failed_partition(&m) {
                self.drop(&m.name, "owner-lost", &cause);
            }
        }
    }

    fn reconcile(&self, head: &Head, hosts: &[HostView]) -> Result<(), String> {
        if head.spread {
            return self.reconcile_spread(head, hosts);
        }
        let name = &head.module;
        if let Some(m) = self.registry.get(name) {
            if head.deleted || m.version < head.since {
                // Deleted, or deleted and deployed again (a new incarnation, claimed below).
                self.drop(
                    name,
                    "module-deleted",
                    &format!("module `{name}` was deleted"),
                );
                if head.deleted {
                    return Ok(());
                }
            } else if let Some(cause) = failed_partition(&m) {
                self.drop(name, "owner-lost", &cause);
                return Ok(());
            } else if let Some(cause) = self.written_by_another(&m)? {
                self.drop(name, "owner-lost", &cause);
                return Ok(());
            } else {
                if head.version > m.version {
                    self.update_with_retries(head)?;
                }
                return Ok(());
            }
        }
        if head.deleted || !self.membership.connected() {
            return Ok(());
        }
        let runs_elsewhere = hosts.iter().any(|h| {
            h.alive
                && h.host != self.host
                && runs_incarnation(&h.owns, head).is_some_and(serves_whole)
        });
        if runs_elsewhere {
            return Ok(());
        }
        match self.claimable(head, 0, name, hosts)? {
            Some(over) => self.claim(head, over),
            None => Ok(()),
        }
    }

    /// One tick for a spread module (placed per partition): every connected host runs it,
    /// each with the partitions it owns. Gives up the partitions that failed here or that
    /// another host wrote to since (a resumed zombie); claims each partition no live host
    /// runs when this host holds its epoch, or its holder is dead and this host is the
    /// partition's first choice; then reshapes what runs here to that set and serves it to
    /// the other hosts.
    fn reconcile_spread(&self, head: &Head, hosts: &[HostView]) -> Result<(), String> {
        let name = &head.module;
        if let Some(m) = self.registry.get(name) {
            if head.deleted || m.version < head.since || m.remote.is_none() {
                self.drop(
                    name,
                    "module-deleted",
                    &format!("module `{name}` was deleted"),
                );
            }
        }
        if head.deleted {
            return Ok(());
        }
        let running = self.registry.get(name);
        let mut local = running.as_deref().map(local_partitions).unwrap_or_default();
        if let Some(m) = &running {
            for p in local.clone() {
                let lost = self.lost_partition(m, p).unwrap_or_else(|e| {
                    tracing::warn!(module = name, partition = p, "checking its log: {e}");
                    None
                });
                if let Some(cause) = lost {
                    tracing::warn!(
                        module = name,
                        partition = p,
                        "giving the partition up: {cause}"
                    );
                    local.remove(&p);
                }
            }
        }
        let connected = self.membership.connected();
        let mut over: HashMap<u32, u64> = HashMap::new();
        if connected {
            for p in 0..head.partitions {
                if local.contains(&p) || partition_runs_elsewhere(hosts, head, p, &self.host) {
                    continue;
                }
                match self.claimable(head, p, &format!("{name}/{p}"), hosts) {
                    Ok(Some(epoch)) => {
                        over.insert(p, epoch);
                    }
                    Ok(None) => {}
                    // One partition's log unreadable now (a NATS election, say) must not keep
                    // the others from being claimed, nor lost ones from being given up.
                    Err(e) => tracing::warn!(module = name, partition = p, "{e}"),
                }
            }
        }
        let wanted: BTreeSet<u32> = local.iter().copied().chain(over.keys().copied()).collect();
        self.at(Some(format!("module `{name}`: partitions {wanted:?} here")));
        match &running {
            None if !connected => return Ok(()),
            None => self.claim_spread(head, &wanted, &over, None)?,
            Some(m) if local_partitions(m) != wanted => {
                self.claim_spread(head, &wanted, &over, Some(m))?
            }
            Some(m) if head.version > m.version => self.update_with_retries(head)?,
            Some(_) => {}
        }
        self.at(Some(format!("module `{name}`: serving its partitions")));
        self.serve_here(head);
        Ok(())
    }

    /// Why this host must give up partition `p` of `m`: it failed here, or another host
    /// wrote its log after this host's last entry.
    fn lost_partition(&self, m: &crate::module::Module, p: u32) -> Result<Option<String>, String> {
        if let PartitionState::Failed { cause } = m.handles[p as usize].status.state() {
            return Ok(Some(format!("it failed: {cause}")));
        }
        let Some(r) = m.replications.get(p as usize).cloned().flatten() else {
            return Ok(None);
        };
        Ok(r.overtaken().map_err(|e| e.to_string())?.map(|last| {
            format!("its log is at {last}, past this host's last entry: another host claimed it")
        }))
    }

    /// The epoch to claim partition `p` of `head`'s module over, if this host should claim
    /// it: it holds that epoch itself, or the holder is dead (or none) and this host is the
    /// first choice for `key` among the live hosts (the module's name when placed per
    /// module, `<module>/<p>` when per partition).
    fn claimable(
        &self,
        head: &Head,
        p: u32,
        key: &str,
        hosts: &[HostView],
    ) -> Result<Option<u64>, String> {
        let log = self.log(head, p)?;
        // One lookup of the last claim, not a read of the whole log: a failover's tick
        // must not grow with the partition's history.
        let (over, holder) = latest_claim(&*log)
            .map_err(|e| format!("reading partition {p}'s claim: {e}"))?
            .map_or((0, None), |e| (e.number, Some(e.host)));
        let mine = holder.as_deref() == Some(self.host.as_str());
        let holder_alive = holder
            .as_deref()
            .is_some_and(|h| hosts.iter().any(|v| v.host == h && v.alive));
        let first = first_choice(key, hosts);
        Ok((mine || (!holder_alive && first == Some(self.host.as_str()))).then_some(over))
    }

    /// Starts (or reshapes) the spread module `head` here with the partitions `wanted`,
    /// claiming those in `over` over the epochs given.
    fn claim_spread(
        &self,
        head: &Head,
        wanted: &BTreeSet<u32>,
        over: &HashMap<u32, u64>,
        running: Option<&Arc<crate::module::Module>>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let logs = over
            .keys()
            .map(|&p| Ok((p, self.log(head, p)?)))
            .collect::<Result<HashMap<u32, Arc<JetStreamLog>>, String>>()?;
        let mut claim =
            |p: u32, log: &crate::depot::log::DepotLog, store: &crate::pstate::PStateStore| {
                let (Some(stream), Some(&epoch)) = (logs.get(&p), over.get(&p)) else {
                    return Err(format!("partition {p} is not to be claimed here"));
                };
                claim_restoring(
                    Arc::clone(stream),
                    &self.host,
                    Claim::Over(epoch),
                    log,
                    store,
                    self.retry,
                    PART_BYTES_MAX,
                )
                .map_err(|e| e.to_string())
            };
        let result = match running {
            Some(_) => self
                .registry
                .reshape_claimed(&head.module, wanted, &mut claim)
                .map(|_| ()),
            None => {
                let wasm = self
                    .catalog
                    .wasm(head)
                    .map_err(|e: CatalogError| e.to_string())?;
                let remote = Arc::new(RemotePartitions {
                    link: Arc::clone(&self.link),
                    since: head.since,
                    resend_hops_ms: RESEND_HOPS_MS,
                });
                self.registry
                    .start_claimed(
                        &head.module,
                        head.version,
                        head.partitions,
                        &wasm,
                        wanted,
                        Some(remote),
                        &mut claim,
                    )
                    .map(|_| ())
            }
        }
        .map_err(|e| e.to_string());
        let mut stats = self.stats.lock().expect("poisoned");
        match &result {
            Ok(()) if !over.is_empty() => {
                stats.claims += over.len() as u64;
                stats.last_claim_ms = started.elapsed().as_millis() as u64;
                tracing::info!(module = head.module, partitions = ?over.keys().collect::<Vec<_>>(), ms = stats.last_claim_ms, "claimed partitions");
            }
            Ok(()) => {}
            Err(_) => stats.claims_failed += 1,
        }
        result
    }

    /// Serves the partitions of `head`'s module that run here to the other hosts, and stops
    /// serving those that do not (any more).
    fn serve_here(&self, head: &Head) {
        let name = &head.module;
        let local = self
            .registry
            .get(name)
            .filter(|m| m.version >= head.since)
            .map(|m| local_partitions(&m))
            .unwrap_or_default();
        let mut servers = self.servers.lock().expect("poisoned");
        servers.retain(|(m, since, p), task| {
            let keep = m != name || (*since == head.since && local.contains(p));
            if !keep {
                task.abort();
            }
            keep
        });
        for p in local {
            let key = (name.clone(), head.since, p);
            if servers.contains_key(&key) {
                continue;
            }
            let inbox: Arc<dyn PartitionInbox> = Arc::new(ModuleInbox {
                registry: Arc::clone(&self.registry),
                module: name.clone(),
                link: Arc::clone(&self.link),
                pinned: Default::default(),
            });
            let subject = super::remote::PartitionId {
                module: name.clone(),
                since: head.since,
                partition: p,
            }
            .subject(&self.host);
            let served = self.nats.runtime.block_on(super::remote::serve(
                self.nats.clone(),
                subject,
                p,
                inbox,
            ));
            match served {
                Ok(task) => {
                    servers.insert(key, task);
                }
                Err(e) => tracing::warn!(module = name, partition = p, "serving it: {e}"),
            }
        }
    }

    /// Stops serving every partition of `name` (it stopped running here).
    fn stop_serving(&self, name: &str) {
        self.servers
            .lock()
            .expect("poisoned")
            .retain(|(m, _, _), task| {
                if m == name {
                    task.abort();
                }
                m != name
            });
    }

    /// The live host that owns partition `p` of `module` as heartbeats say, with its HTTP
    /// address (a spread module).
    pub fn partition_owner(&self, module: &str, p: u32) -> Option<(String, String)> {
        let head = self.catalog.head(module)?;
        self.membership
            .hosts()
            .into_iter()
            .filter(|h| h.alive)
            .filter_map(|h| {
                let epoch = runs_incarnation(&h.owns, &head)?
                    .partitions
                    .iter()
                    .find(|o| o.partition == p && o.state != "failed")?
                    .epoch;
                Some((epoch, h))
            })
            .max_by_key(|(epoch, _)| *epoch)
            .map(|(_, h)| (h.host, h.address))
    }

    /// Whether another host wrote a partition log of `m` after this host's last entry (it
    /// claimed the module while this one was paused or cut off): this host is fenced and
    /// must stop serving, reads included, without waiting for a write of its own to fail.
    fn written_by_another(&self, m: &crate::module::Module) -> Result<Option<String>, String> {
        for (p, r) in m.replications.iter().enumerate() {
            let Some(r) = r else { continue };
            if let Some(last) = r.overtaken().map_err(|e| e.to_string())? {
                return Ok(Some(format!(
                    "partition {p}'s log is at {last}, past this host's last entry: another host claimed it"
                )));
            }
        }
        Ok(None)
    }

    /// Claims every partition of `head`'s module (partition 0 over epoch `over`) and runs it.
    fn claim(&self, head: &Head, over: u64) -> Result<(), String> {
        let started = Instant::now();
        let result = self.claim_inner(head, over);
        let mut stats = self.stats.lock().expect("poisoned");
        match &result {
            Ok(()) => {
                stats.claims += 1;
                stats.last_claim_ms = started.elapsed().as_millis() as u64;
                tracing::info!(
                    module = head.module,
                    ms = stats.last_claim_ms,
                    "claimed the module"
                );
            }
            Err(_) => stats.claims_failed += 1,
        }
        result
    }

    fn claim_inner(&self, head: &Head, over: u64) -> Result<(), String> {
        let wasm = self
            .catalog
            .wasm(head)
            .map_err(|e: CatalogError| e.to_string())?;
        let logs = (0..head.partitions)
            .map(|p| self.log(head, p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut epoch = 0;
        let mut claim =
            |p: u32, log: &crate::depot::log::DepotLog, store: &crate::pstate::PStateStore| {
                let rule = if p == 0 {
                    Claim::Over(over)
                } else {
                    Claim::At(epoch)
                };
                let r = claim_restoring(
                    Arc::clone(&logs[p as usize]),
                    &self.host,
                    rule,
                    log,
                    store,
                    self.retry,
                    PART_BYTES_MAX,
                )
                .map_err(|e| e.to_string())?;
                epoch = r.epoch();
                Ok(r)
            };
        self.registry
            .start_claimed(
                &head.module,
                head.version,
                head.partitions,
                &wasm,
                &(0..head.partitions).collect(),
                None,
                &mut claim,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Switches the module, which runs here, to the catalog's newer version `head`, unless
    /// that version failed here lately: a failed switch (its drain timed out, say) is tried
    /// again after a pause that doubles up to [`UPDATE_RETRY_MAX`], not on every tick (each
    /// try holds the module's appends back for up to the drain bound), and is reported in
    /// this host's heartbeats so that the deploy answers with the reason.
    fn update_with_retries(&self, head: &Head) -> Result<(), String> {
        let now = Instant::now();
        if !self
            .update_failures
            .lock()
            .expect("poisoned")
            .may_try(&head.module, head.version, now)
        {
            return Ok(());
        }
        let result = self.update(head);
        let mut failures = self.update_failures.lock().expect("poisoned");
        match &result {
            Ok(()) => failures.succeeded(&head.module),
            Err(e) => failures.failed(&head.module, head.version, e, Instant::now()),
        }
        result
    }

    /// Switches the module, which runs here, to the catalog's newer version `head`.
    fn update(&self, head: &Head) -> Result<(), String> {
        let wasm = self
            .catalog
            .wasm(head)
            .map_err(|e: CatalogError| e.to_string())?;
        self.registry
            .update_claimed(&head.module, head.version, &wasm)
            .map_err(|e| format!("updating to version {}: {e}", head.version))?;
        self.stats.lock().expect("poisoned").updates += 1;
        Ok(())
    }

    fn drop(&self, name: &str, code: &str, why: &str) {
        self.stop_serving(name);
        if self.registry.drop_local(name, code, why) {
            self.stats.lock().expect("poisoned").drops += 1;
        }
    }

    /// Partition `p`'s log of `head`'s incarnation of its module (opened once).
    fn log(&self, head: &Head, p: u32) -> Result<Arc<JetStreamLog>, String> {
        let key = (head.module.clone(), head.since, p);
        if let Some(l) = self.logs.lock().expect("poisoned").get(&key) {
            return Ok(Arc::clone(l));
        }
        let log = self
            .nats
            .runtime
            .block_on(JetStreamLog::open(&self.nats, &head.module, head.since, p))
            .map_err(|e| format!("opening partition {p}'s log: {e}"))?;
        let log = Arc::new(log);
        self.logs
            .lock()
            .expect("poisoned")
            .insert(key, Arc::clone(&log));
        Ok(log)
    }

    /// Deletes the partition streams of `head`'s incarnation of its module, which the catalog
    /// says is deleted (best effort: a stream left behind holds nothing anyone reads again,
    /// since a new deploy of the name is a new incarnation with streams of its own).
    pub fn delete_logs(&self, head: &Head) {
        self.logs
            .lock()
            .expect("poisoned")
            .retain(|(m, since, _), _| !(*m == head.module && *since == head.since));
        for p in 0..head.partitions {
            let deleted = self.nats.runtime.block_on(JetStreamLog::delete(
                &self.nats,
                &head.module,
                head.since,
                p,
            ));
            if let Err(e) = deleted {
                tracing::warn!(
                    module = head.module,
                    partition = p,
                    "deleting its stream: {e}"
                );
            }
        }
    }

    /// Puts what this host runs into its heartbeats.
    fn report(&self) {
        let failures = self.update_failures.lock().expect("poisoned");
        let owns = self
            .registry
            .list()
            .iter()
            .filter(|m| !m.replications.is_empty())
            .map(|m| OwnedModule {
                module: m.name.clone(),
                version: m.version,
                update_failed: failures.reported(&m.name),
                partitions: m
                    .replications
                    .iter()
                    .zip(&m.handles)
                    .enumerate()
                    .filter_map(|(p, (r, h))| {
                        let r = r.as_ref()?;
                        Some(OwnedPartition {
                            partition: p as u32,
                            epoch: r.epoch(),
                            log_seq: r.last_seq(),
                            lag: m.topology_lag(p).iter().map(|(_, n)| n).sum(),
                            state: h.status.state().name().to_string(),
                        })
                    })
                    .collect(),
            })
            .collect();
        drop(failures);
        self.membership.report(owns);
    }

    /// The failure its owner reports, in its heartbeats, of switching `module` to `version`.
    pub fn update_failure(&self, module: &str, version: u64) -> Option<(String, UpdateFailed)> {
        self.membership.hosts().into_iter().find_map(|h| {
            let failed = h
                .owns
                .iter()
                .find(|o| o.module == module)?
                .update_failed
                .clone()
                .filter(|f| f.version == version)?;
            Some((h.host, failed))
        })
    }

    /// Where a request for `module` goes now (no I/O).
    pub fn route(&self, module: &str) -> Route {
        let head = match self.catalog.head(module) {
            Some(h) if !h.deleted => h,
            _ if self.registry.get(module).is_some() => return Route::Local,
            _ => return Route::Unknown,
        };
        if self.registry.get(module).is_some_and(|m| {
            // A module placed per module whose partition failed for good (fenced: another
            // host claimed it) is dropped on this host's next tick; until then its requests
            // go to whoever else runs it, not to the failed partition.
            m.version >= head.since && (head.spread || failed_partition(&m).is_none())
        }) {
            return Route::Local;
        }
        if head.spread {
            // Every connected host runs it: any live one that says so serves it.
            return self
                .membership
                .hosts()
                .into_iter()
                .find(|h| {
                    h.alive && h.host != self.host && runs_incarnation(&h.owns, &head).is_some()
                })
                .map_or(Route::Unowned, |h| Route::Remote {
                    host: h.host,
                    address: h.address,
                });
        }
        let owner = self
            .membership
            .hosts()
            .into_iter()
            .filter(|h| h.alive && h.host != self.host)
            .filter_map(|h| {
                let o = runs_incarnation(&h.owns, &head).filter(|o| serves_whole(o))?;
                Some((o.partitions.first()?.epoch, h))
            })
            .max_by_key(|(epoch, _)| *epoch);
        match owner {
            Some((_, h)) => Route::Remote {
                host: h.host,
                address: h.address,
            },
            None => Route::Unowned,
        }
    }

    /// Per module of the catalog: its owner (as heartbeats say) and partitions.
    pub fn modules_view(&self) -> Vec<serde_json::Value> {
        let hosts = self.membership.hosts();
        self.catalog
            .heads()
            .into_iter()
            .filter(|h| !h.deleted)
            .map(|head| {
                if head.spread {
                    return spread_view(&head, &hosts);
                }
                let owner = hosts
                    .iter()
                    .filter(|h| h.alive)
                    .filter_map(|h| {
                        let o = runs_incarnation(&h.owns, &head)?;
                        Some((h.host.clone(), o.clone()))
                    })
                    .max_by_key(|(_, o)| o.partitions.first().map_or(0, |p| p.epoch));
                let (owner, partitions) = match owner {
                    Some((host, o)) => (Some(host), o.partitions),
                    None => (None, Vec::new()),
                };
                serde_json::json!({
                    "name": head.module,
                    "version": head.version,
                    "partitions": head.partitions,
                    "owner": owner,
                    "epoch": partitions.first().map(|p| p.epoch),
                    "partition_owners": partitions,
                })
            })
            .collect()
    }
}

/// Which partitions of `m` run here (failed ones too, until given up).
fn local_partitions(m: &crate::module::Module) -> BTreeSet<u32> {
    (0..m.partitions).filter(|p| m.has_files(*p)).collect()
}

/// Whether a live host other than `me` says it runs partition `p` of `head`'s module.
fn partition_runs_elsewhere(hosts: &[HostView], head: &Head, p: u32, me: &str) -> bool {
    hosts.iter().any(|h| {
        h.alive
            && h.host != me
            && runs_incarnation(&h.owns, head).is_some_and(|o| {
                // A partition that failed there is given up on its next tick: not running.
                o.partitions
                    .iter()
                    .any(|x| x.partition == p && x.state != "failed")
            })
    })
}

/// `GET /v1/cluster`'s entry for a spread module: each partition's owner as heartbeats say.
fn spread_view(head: &Head, hosts: &[HostView]) -> serde_json::Value {
    let owners: Vec<serde_json::Value> = (0..head.partitions)
        .filter_map(|p| {
            hosts
                .iter()
                .filter(|h| h.alive)
                .filter_map(|h| {
                    let o = runs_incarnation(&h.owns, head)?
                        .partitions
                        .iter()
                        .find(|x| x.partition == p)?;
                    Some((h.host.clone(), o.clone()))
                })
                .max_by_key(|(_, o)| o.epoch)
        })
        .map(|(host, o)| {
            let mut v = serde_json::to_value(&o).unwrap_or_default();
            v["host"] = host.into();
            v
        })
        .collect();
    let owner = owners
        .iter()
        .find(|o| o["partition"] == 0)
        .map(|o| o["host"].clone());
    serde_json::json!({
        "name": head.module,
        "version": head.version,
        "partitions": head.partitions,
        "placement": "partitions",
        "owner": owner,
        "epoch": serde_json::Value::Null,
        "partition_owners": owners,
    })
}

/// The owner's side of a spread module's partition here: puts what other hosts send on the
/// partition's queue of the module version running now, and answers their reads.
struct ModuleInbox {
    registry: Arc<Registry>,
    module: String,
    link: Arc<Link>,
    /// The snapshots queries of other hosts hold of the partition.
    pinned: super::pinned::PinnedSnapshots,
}

impl ModuleInbox {
    fn local(&self, p: u32) -> Option<Arc<crate::module::Module>> {
        self.registry.get(&self.module).filter(|m| m.is_local(p))
    }
}

impl PartitionInbox for ModuleInbox {
    fn appends(
        &self,
        p: u32,
        appends: Vec<WireAppend>,
    ) -> Option<
        Vec<
            Option<
                tokio::sync::oneshot::Receiver<
                    Result<crate::topology::AppendOutcome, crate::topology::ProcessingError>,
                >,
            >,
        >,
    > {
        let m = self.local(p)?;
        Some(
            appends
                .into_iter()
                .map(|a| {
                    let prepared = crate::module::Prepared {
                        depot: a.depot.as_str().into(),
                        partition: p,
                        record: a.record,
                        key: a.key.map(Into::into),
                    };
                    match m.submit_prepared(&prepared, a.ack) {
                        Ok(s) => s.reply,
                        Err(e) => {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            let busy = matches!(e, crate::module::AppendError::QueueFull(_));
                            let _ = tx.send(Err(crate::topology::ProcessingError::NotTaken {
                                partition: p,
                                reason: e.to_string(),
                                busy,
                            }));
                            Some(rx)
                        }
                    }
                })
                .collect(),
        )
    }

    fn peer(&self, p: u32, message: crate::partition::work::PeerMessage) {
        if let Some(m) = self.local(p) {
            m.deliver_peer(p, message);
        }
    }

    fn tree(&self, p: u32, r: TreeRef, offset: u64) -> Option<Arc<crate::partition::tree::Tree>> {
        let m = self.local(p)?;
        Some(super::remote::stand_in_tree(
            &self.link.nats,
            r,
            p,
            offset,
            m.open_trees(),
        ))
    }

    fn dead_letters(
        &self,
        p: u32,
        topology: &str,
        op: super::remote::DeadLetterOp<'_>,
    ) -> Option<Result<Vec<crate::value::Value>, crate::pstate::AccessError>> {
        use crate::pstate::AccessError;
        use crate::value::Value;
        let m = self.local(p)?;
        let refused = |code: &'static str, e: String| Err(AccessError::new(code, e));
        Some(match op {
            super::remote::DeadLetterOp::List => {
                let files = m.local_files(p).ok()?;
                match crate::api::partition_dead_letters(files, p, topology) {
                    Ok(entries) => Ok(vec![Value::Text(
                        serde_json::Value::from(entries).to_string(),
                    )]),
                    Err(e) => refused("storage", e.message),
                }
            }
            super::remote::DeadLetterOp::Replay => {
                match m.replay_dead_letters_on(p, topology).blocking_recv() {
                    Ok(Ok((replayed, failing))) => Ok(vec![
                        Value::Integer(replayed.into()),
                        Value::Integer(failing.into()),
                    ]),
                    Ok(Err(e)) => refused("cannot-replay", e),
                    Err(_) => refused(
                        "partition-unavailable",
                        "the partition stopped before answering".into(),
                    ),
                }
            }
            super::remote::DeadLetterOp::Discard { depot, offset, by } => {
                use crate::partition::dead_letters::Discard;
                match m
                    .discard_dead_letter(p, topology, depot, offset, by)
                    .blocking_recv()
                {
                    Ok(Ok(Discard::Done(d))) => Ok(vec![Value::Text(
                        serde_json::json!({"depot": d.depot, "offset": d.offset,
                            "code": d.error_code, "error": d.error})
                        .to_string(),
                    )]),
                    Ok(Ok(Discard::Missing)) => refused("missing", String::new()),
                    Ok(Ok(Discard::Busy)) => refused("busy", String::new()),
                    Ok(Err(e)) => refused("partition-unavailable", e),
                    Err(_) => refused(
                        "partition-unavailable",
                        "the partition stopped before answering".into(),
                    ),
                }
            }
        })
    }

    fn depot_bounds(
        &self,
        p: u32,
        depot: &str,
    ) -> Option<Result<(u64, u64), crate::pstate::AccessError>> {
        let m = self.local(p)?;
        let log = &m.local_files(p).ok()?.log;
        let storage = |e: redb::Error| crate::pstate::AccessError::new("storage", e.to_string());
        Some(
            log.start_offset(depot)
                .and_then(|start| Ok((start, log.end_offset(depot)?)))
                .map_err(storage),
        )
    }

    fn select(
        &self,
        p: u32,
        pstate: &str,
        path: &[crate::pstate::Navigator],
        limit: usize,
        pin: Option<&super::remote::Pin>,
    ) -> Option<Result<Vec<crate::value::Value>, crate::pstate::AccessError>> {
        let m = self.local(p)?;
        let Some(pin) = pin else {
            return Some(m.select(pstate, path, Some(p), limit));
        };
        Some(self.pinned.read(
            pin,
            p,
            || Ok(Arc::clone(&m.local_files(p)?.store)),
            |store, snapshot| {
                crate::pstate::select_in(store, &m.catalog, pstate, path, snapshot, limit)
            },
        ))
    }

    fn end_query(&self, _p: u32, query: &super::remote::QueryRef) {
        self.pinned.end(query);
    }
}

/// What `owns` (a host's heartbeat) says of `head`'s incarnation of its module, if it runs
/// it: a host still running a deleted incarnation (until its next tick) is not its owner.
fn runs_incarnation<'o>(owns: &'o [OwnedModule], head: &Head) -> Option<&'o OwnedModule> {
    owns.iter()
        .find(|o| o.module == head.module && o.version >= head.since)
}

/// Whether a host's report of a module placed per module says it serves the module: no
/// partition of it failed there (such a host drops the module on its next tick).
fn serves_whole(o: &OwnedModule) -> bool {
    o.partitions.iter().all(|p| p.state != "failed")
}

/// The first pause before a failed update is tried again; it doubles with each failure.
const UPDATE_RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest pause between tries of a failed update.
const UPDATE_RETRY_MAX: Duration = Duration::from_secs(120);

/// Updates that failed on this host, per module: the version, why, and when to try again.
#[derive(Debug, Default)]
struct UpdateFailures(HashMap<String, UpdateFailure>);

#[derive(Debug)]
struct UpdateFailure {
    version: u64,
    error: String,
    attempts: u32,
    next_try: Instant,
}

impl UpdateFailures {
    /// Whether switching `module` to `version` may be tried at `now`: yes unless that very
    /// version failed and its pause has not passed (a newer version is tried at once).
    fn may_try(&self, module: &str, version: u64, now: Instant) -> bool {
        match self.0.get(module) {
            Some(f) if f.version == version => now >= f.next_try,
            _ => true,
        }
    }

    fn failed(&mut self, module: &str, version: u64, error: &str, now: Instant) {
        let attempts = match self.0.get(module) {
            Some(f) if f.version == version => f.attempts + 1,
            _ => 1,
        };
        let pause = UPDATE_RETRY_FIRST
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(UPDATE_RETRY_MAX);
        self.0.insert(
            module.to_string(),
            UpdateFailure {
                version,
                error: error.to_string(),
                attempts,
                next_try: now + pause,
            },
        );
    }

    fn succeeded(&mut self, module: &str) {
        self.0.remove(module);
    }

    fn reported(&self, module: &str) -> Option<UpdateFailed> {
        self.0.get(module).map(|f| UpdateFailed {
            version: f.version,
            error: f.error.clone(),
            attempts: f.attempts,
        })
    }
}

/// The live host that ranks first for `module` (rendezvous hashing).
fn first_choice<'a>(module: &str, hosts: &'a [HostView]) -> Option<&'a str> {
    hosts
        .iter()
        .filter(|h| h.alive)
        .max_by_key(|h| {
            let d = Sha256::digest(format!("{module}/{}", h.host).as_bytes());
            u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
        })
        .map(|h| h.host.as_str())
}

/// Why a partition of `m` failed for good, if one did.
fn failed_partition(m: &crate::module::Module) -> Option<String> {
    m.handles
        .iter()
        .enumerate()
        .find_map(|(p, h)| match h.status.state() {
            PartitionState::Failed { cause } => Some(format!("partition {p} failed: {cause}")),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, alive: bool) -> HostView {
        HostView {
            host: id.into(),
            address: String::new(),
            alive,
            last_heartbeat_ms_ago: 0,
            beat: 1,
            owns: Vec::new(),
        }
    }

    #[test]
    fn a_failed_update_waits_a_doubling_pause_and_a_newer_version_goes_at_once() {
        let mut f = UpdateFailures::default();
        let t0 = Instant::now();
        assert!(f.may_try("m", 2, t0));
        f.failed("m", 2, "the drain timed out", t0);
        assert!(!f.may_try("m", 2, t0));
        assert!(!f.may_try("m", 2, t0 + UPDATE_RETRY_FIRST - Duration::from_millis(1)));
        assert!(f.may_try("m", 2, t0 + UPDATE_RETRY_FIRST));
        assert!(f.may_try("m", 3, t0), "a newer build is tried at once");
        assert!(f.may_try("other", 2, t0));
        let t1 = t0 + UPDATE_RETRY_FIRST;
        f.failed("m", 2, "again", t1);
        assert!(!f.may_try("m", 2, t1 + UPDATE_RETRY_FIRST));
        assert!(f.may_try("m", 2, t1 + 2 * UPDATE_RETRY_FIRST));
        assert_eq!(
            f.reported("m"),
            Some(UpdateFailed {
                version: 2,
                error: "again".into(),
                attempts: 2
            })
        );
        for _ in 0..40 {
            f.failed("m", 2, "stuck", t1);
        }
        assert!(
            f.may_try("m", 2, t1 + UPDATE_RETRY_MAX),
            "the pause is bounded"
        );
        f.failed("m", 3, "new", t1);
        assert_eq!(
            f.reported("m").unwrap().attempts,
            1,
            "a new version counts anew"
        );
        f.succeeded("m");
        assert_eq!(f.reported("m"), None);
        assert!(f.may_try("m", 3, t1));
    }

    #[test]
    fn a_host_running_a_deleted_incarnation_is_not_its_owner() {
        let owns = |version| {
            vec![OwnedModule {
                module: "m".into(),
                version,
                partitions: Vec::new(),
                update_failed: None,
            }]
        };
        let head = Head {
            module: "m".into(),
            version: 5,
            partitions: 1,
            deleted: false,
            since: 4,
            sha256: String::new(),
            spread: false,
            parts: Vec::new(),
        };
        assert!(
            runs_incarnation(&owns(3), &head).is_none(),
            "deleted at 3, deployed at 4"
        );
        assert!(
            runs_incarnation(&owns(4), &head).is_some(),
            "the update to 5 pending"
        );
        assert!(runs_incarnation(&owns(5), &head).is_some());
    }

    #[test]
    fn the_first_choice_is_stable_and_skips_dead_hosts() {
        let all = [host("a", true), host("b", true), host("c", true)];
        let modules: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
        let firsts: Vec<&str> = modules
            .iter()
            .map(|m| first_choice(m, &all).unwrap())
            .collect();
        // Spread: every host is first for some module.
        for h in ["a", "b", "c"] {
            assert!(firsts.contains(&h), "{h} is first for none: {firsts:?}");
        }
        // A dead host's modules move; the others' stay where they were.
        let b_dead = [host("a", true), host("b", false), host("c", true)];
        for (m, was) in modules.iter().zip(&firsts) {
            let now = first_choice(m, &b_dead).unwrap();
            if *was == "b" {
                assert_ne!(now, "b");
            } else {
                assert_eq!(now, *was, "{m} moved though its host lives");
            }
        }
        assert_eq!(first_choice("m", &[host("a", false)]), None);
    }
}
