//! The registry's part on a cluster: checking a component before it goes into the cluster's
//! catalog, starting a module this host claimed on fresh local files restored from its
//! partition logs, and dropping it again (see `cluster::placement`).
//!
//! Invariant: on a cluster a module's local directory is a cache of its partition logs; it
//! is deleted whenever this host stops running the module, and created empty before a
//! claim restores it, so no file outlives the ownership that wrote it.

use std::sync::Arc;

use std::collections::BTreeSet;

use super::{
    default_wasm_file, valid_name, write_synced, Definition, DeployError, DeployOptions, Files,
    Manifest, Module, PartitionFiles, Registry, RemotePartitions,
};
use crate::cluster::jetstream::JetStreamLog;
use crate::cluster::replicated::Replication;
use crate::depot::log::DepotLog;
use crate::pstate::PStateStore;
use crate::topology::TopologyKind;

/// Restores one partition's empty files from its log and claims it: answers its owner.
pub type ClaimPartition<'a> =
    dyn FnMut(u32, &DepotLog, &PStateStore) -> Result<Arc<Replication<JetStreamLog>>, String> + 'a;

impl Registry {
    /// Checks `wasm` as a new module of a cluster without starting it; answers its
    /// partition count.
    pub fn check_for_cluster(
        &self,
        name: &str,
        wasm: &[u8],
        options: &DeployOptions,
    ) -> Result<u32, DeployError> {
        let definition = self.cluster_definition(name, wasm, options)?;
        self.partitions_of(options, &definition)
    }

    /// Checks `wasm` as an update of `name`, whose build on the cluster is `old_wasm` over
    /// `partitions` partitions, without starting either: what an update on a single node
    /// checks ([`Definition::check_update`]), and no migration (see [`Registry::update`]).
    pub fn check_update_for_cluster(
        &self,
        name: &str,
        old_wasm: &[u8],
        partitions: u32,
        wasm: &[u8],
        options: &DeployOptions,
    ) -> Result<(), DeployError> {
        let new = self.cluster_definition(name, wasm, options)?;
        let incompatible = |why: String| DeployError::Incompatible {
            name: name.to_string(),
            why,
        };
        if let Some(p) = options.partitions.filter(|p| *p != partitions) {
            return Err(incompatible(format!(
                "the partition count cannot change ({partitions} -> {p}): every key's data lives on its partition"
            )));
        }
        let old = self.define(
            self.runtime.prepare(&self.runtime.compile(old_wasm)?)?,
            name,
        )?;
        old.check_update(&new).map_err(incompatible)?;
        super::refuse_migrations_on_cluster(
            &super::migrated_schema_changes(&old, &new).map_err(incompatible)?,
        )
    }

    /// Updates `name`, which runs here, to the catalog's `version` of it (`wasm`), keeping
    /// its partition logs claimed; nothing to do if it runs that version or a later one.
    pub fn update_claimed(
        &self,
        name: &str,
        version: u64,
        wasm: &[u8],
    ) -> Result<Arc<Module>, DeployError> {
        let _guard = self.deploy_lock.lock().expect("poisoned");
        let old = self
            .get(name)
            .ok_or_else(|| DeployError::Claim(format!("`{name}` does not run here")))?;
        if old.version >= version {
            return Ok(old);
        }
        self.update(old, wasm, DeployOptions::default(), Some(version))
    }

    /// A component's definition, checked as a module of a cluster.
    fn cluster_definition(
        &self,
        name: &str,
        wasm: &[u8],
        options: &DeployOptions,
    ) -> Result<Definition, DeployError> {
        if !valid_name(name) {
            return Err(DeployError::BadName(name.to_string()));
        }
        if !options.retention.is_empty() {
            return Err(DeployError::ClusterUnsupported(
                "retention set at deploy (`retain.<depot>`); declare it in the module".into(),
            ));
        }
        let component = self.runtime.compile(wasm)?;
        let pre = self.runtime.prepare(&component)?;
        let definition = self.define(pre, name)?;
        let validated = definition
            .validate()
            .map_err(DeployError::InvalidDefinition)?;
        if let Some(t) = validated
            .topologies
            .iter()
            .find(|t| t.kind == TopologyKind::Microbatch)
        {
            return Err(DeployError::ClusterUnsupported(format!(
                "microbatch topologies (`{}`); deploy this module to a single-node host",
                t.name
            )));
        }
        Ok(definition)
    }

    /// Starts version `version` of `name` on new, empty local files that `claim` restores
    /// from each partition's log (partition 0 first) while claiming it. Nothing runs unless
    /// every partition was claimed. With `remote` (a spread module), only the partitions in
    /// `local` run here (possibly none) and the others are reached on their hosts.
    #[allow(clippy::too_many_arguments)]
    pub fn start_claimed(
        &self,
        name: &str,
        version: u64,
        partitions: u32,
        wasm: &[u8],
        local: &BTreeSet<u32>,
        remote: Option<Arc<RemotePartitions>>,
        claim: &mut ClaimPartition<'_>,
    ) -> Result<Arc<Module>, DeployError> {
        let _guard = self.deploy_lock.lock().expect("poisoned");
        if self.get(name).is_some() {
            return Err(DeployError::Claim(format!("`{name}` already runs here")));
        }
        let dir = self.module_dir(name);
        let io = |e: String| DeployError::Io(e);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io(format!("{}: {e}", dir.display())))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(e.to_string()))?;
        let opts = self.storage_options(self.files_open(), 2 * partitions as usize);
        let mut files = Vec::new();
        let mut replications = Vec::new();
        for p in 0..partitions {
            if !local.contains(&p) {
                files.push(None);
                replications.push(None);
                continue;
            }
            let restored = self
                .claim_fresh(&dir, name, p, &opts, claim)
                .inspect_err(|_| drop_dir(&dir))?;
            files.push(Some(restored.0));
            replications.push(Some(restored.1));
        }
        let manifest = Manifest {
            name: name.to_string(),
            version,
            partitions,
            wasm: default_wasm_file(),
            retention: Default::default(),
        };
        write_synced(&dir.join(&manifest.wasm), wasm).map_err(|e| io(e.to_string()))?;
        let module = self
            .start(
                &dir,
                &manifest,
                wasm,
                Files::Reuse(files),
                replications,
                remote,
            )
            .inspect_err(|_| drop_dir(&dir))?;
        self.modules
            .write()
            .expect("poisoned")
            .insert(name.to_string(), Arc::clone(&module));
        tracing::info!(module = name, partitions, version, "module claimed");
        Ok(module)
    }

    /// Creates partition `p`'s empty files in `dir` and has `claim` restore and claim them.
    fn claim_fresh(
        &self,
        dir: &std::path::Path,
        name: &str,
        p: u32,
        opts: &crate::storage::StorageOptions,
        claim: &mut ClaimPartition<'_>,
    ) -> Result<(PartitionFiles, Arc<Replication<JetStreamLog>>), DeployError> {
        let io = |e: String| DeployError::Io(e);
        let pdir = dir.join(format!("p{p}"));
        if pdir.exists() {
            std::fs::remove_dir_all(&pdir).map_err(|e| io(format!("{}: {e}", pdir.display())))?;
        }
        crate::storage::create_partition(&pdir, name, p, opts).map_err(|e| io(e.to_string()))?;
        let (log, store) =
            crate::storage::open_partition(&pdir, name, p, opts).map_err(|e| io(e.to_string()))?;
        let replication = claim(p, &log, &store).map_err(|e| {
            let _ = std::fs::remove_dir_all(&pdir);
            DeployError::Claim(format!("partition {p}: {e}"))
        })?;
        Ok((
            PartitionFiles {
                log: Arc::new(log),
                store: Arc::new(store),
            },
            replication,
        ))
    }

    /// Changes which partitions of the spread module `name` run here to `local`: the ones
    /// that stay keep their files and claims, the ones that leave are stopped and their files
    /// deleted (another host claimed them), the new ones are restored and claimed by
    /// `claim`. The module is drained and restarted as in an update; a new partition whose
    /// claim fails is left out (placement tries again on its next tick).
    pub fn reshape_claimed(
        &self,
        name: &str,
        local: &BTreeSet<u32>,
        claim: &mut ClaimPartition<'_>,
    ) -> Result<Arc<Module>, DeployError> {
        let _guard = self.deploy_lock.lock().expect("poisoned");
        let old = self
            .get(name)
            .ok_or_else(|| DeployError::Claim(format!("`{name}` does not run here")))?;
        let remote = old
            .remote
            .clone()
            .ok_or_else(|| DeployError::Claim(format!("`{name}` is not spread")))?;
        let dir = self.module_dir(name);
        old.retire();
        if let Err(detail) = old.drain(RESHAPE_DRAIN_MAX) {
            // Leaving partitions answer what they hold "outcome unknown"; nothing is lost
            // (their new owner restores every acked record from the log).
            tracing::warn!(module = name, "reshaping without a full drain: {detail}");
        }
        let mut files: Vec<Option<PartitionFiles>> =
            old.handles.iter().map(|h| h.files.clone()).collect();
        let mut replications = old.replications.clone();
        replications.resize(old.partitions as usize, None);
        super::stop_workers(&old);
        let opts = self.storage_options(self.files_open(), 2 * old.partitions as usize);
        for p in 0..old.partitions {
            let i = p as usize;
            match (files[i].is_some(), local.contains(&p)) {
                (true, false) => {
                    if let Some(f) = files[i].take() {
                        f.store.changes().close(
                            "owner-lost",
                            &format!("partition {p} now runs on another host"),
                        );
                    }
                    replications[i] = None;
                    drop_dir(&dir.join(format!("p{p}")));
                }
                (false, true) => match self.claim_fresh(&dir, name, p, &opts, claim) {
                    Ok((f, r)) => {
                        files[i] = Some(f);
                        replications[i] = Some(r);
                    }
                    Err(e) => tracing::warn!(module = name, "claiming partition {p}: {e}"),
                },
                _ => {}
            }
        }
        let manifest = Manifest {
            name: name.to_string(),
            version: old.version,
            partitions: old.partitions,
            wasm: old.wasm_file.clone(),
            retention: old.retention_set.clone(),
        };
        let started = std::fs::read(dir.join(&manifest.wasm))
            .map_err(|e| DeployError::Io(e.to_string()))
            .and_then(|wasm| {
                self.start(
                    &dir,
                    &manifest,
                    &wasm,
                    Files::Reuse(files),
                    replications,
                    Some(remote),
                )
            });
        let module = match started {
            Ok(m) => m,
            Err(e) => {
                // Nothing runs here now: the next tick starts the module afresh, restoring
                // every partition this host still holds from its log.
                self.modules.write().expect("poisoned").remove(name);
                drop_dir(&dir);
                return Err(e);
            }
        };
        self.modules
            .write()
            .expect("poisoned")
            .insert(name.to_string(), Arc::clone(&module));
        tracing::info!(module = name, ?local, "partitions here changed");
        Ok(module)
    }

    /// Stops `name` here and deletes its local files; its subscribers are told why (`code`,
    /// `why`). False if it did not run here.
    pub fn drop_local(&self, name: &str, code: &str, why: &str) -> bool {
        let _guard = self.deploy_lock.lock().expect("poisoned");
        let Some(module) = self.modules.write().expect("poisoned").remove(name) else {
            return false;
        };
        module
            .retired
            .store(true, std::sync::atomic::Ordering::Release);
        super::stop_workers(&module);
        for f in module.handles.iter().filter_map(|h| h.files.as_ref()) {
            f.store.changes().close(code, why);
        }
        drop_dir(&self.module_dir(name));
        tracing::info!(module = name, "module dropped here: {why}");
        true
    }
}

/// How long a reshape waits for queued work and event trees (a tree may be waiting for a
/// partition that is moving here: it answers "outcome unknown" instead).
const RESHAPE_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(2);

fn drop_dir(dir: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!("removing {}: {e}", dir.display());
    }
}
