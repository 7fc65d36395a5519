//! Query topologies: guest functions run on demand, reading any partition's PStates.
//!
//! Owns [`QueryReads`] — what a query's host imports read — and [`Queries`], a module's pool
//! of guest instances kept for queries only, so a query never waits behind (or blocks) a
//! partition worker. Invariants: a query writes nothing (transforms and hops are refused by
//! the host imports); each partition is read from one redb snapshot, all taken together when
//! the query starts (between two microbatch applies: the module's apply gate) and kept until
//! the query ends, so a query never sees a partition change under it nor half of a
//! microbatch; a query is bounded by the `query_deadline_ms` limit and the instance memory cap like any
//! guest call, and a failed query's instance is replaced.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use redb::ReadTransaction;

use crate::imports::Imports;
use crate::pstate::session::SnapshotView;
use crate::pstate::{AccessError, Catalog, Navigator, PStateStore};
use crate::runtime::{GuestError, GuestInstance, Pre, Runtime};
use crate::value::{from_cbor, to_cbor, Value};

/// A query's reads: one snapshot per partition, all opened at one moment (partitions that
/// run on other hosts of a cluster are read on their hosts, see [`RemoteReads`]).
pub struct QueryReads {
    catalog: Arc<Catalog>,
    /// `None` for a partition another host runs.
    stores: Vec<Option<Arc<PStateStore>>>,
    snapshots: Vec<Option<ReadTransaction>>,
    remote: Option<RemoteReads>,
    select_values_max: usize,
}

/// How a query reads the partitions of a spread module that run on other hosts: each read
/// is a select on the partition's owner, from its latest commit (not from one snapshot
/// taken when the query started, as the local partitions are).
#[derive(Clone)]
pub struct RemoteReads {
    pub link: Arc<crate::cluster::remote::Link>,
    pub module: String,
    pub since: u64,
}

impl QueryReads {
    /// Reads of every partition at one moment with respect to microbatches: all snapshots are
    /// opened while holding `gate` for reading (the coordinator holds it for writing while it
    /// applies a batch).
    pub fn consistent(
        stores: &[Option<Arc<PStateStore>>],
        remote: Option<RemoteReads>,
        catalog: Arc<Catalog>,
        select_values_max: usize,
        gate: &std::sync::RwLock<()>,
    ) -> Result<Self, redb::Error> {
        let _read = gate.read().expect("poisoned");
        let snapshots = stores
            .iter()
            .map(|s| s.as_ref().map(|s| s.begin_read()).transpose())
            .collect::<Result<_, _>>()?;
        Ok(Self {
            catalog,
            stores: stores.to_vec(),
            snapshots,
            remote,
            select_values_max,
        })
    }

    /// The partition holding `path` of `pstate` (see [`Catalog::home_partition`]).
    pub fn home_partition(
        &self,
        pstate: &str,
        path: &[crate::pstate::Navigator],
    ) -> Result<Option<u32>, crate::pstate::AccessError> {
        self.catalog.home_partition(pstate, path, self.partitions())
    }

    pub fn partitions(&self) -> u32 {
        self.snapshots.len() as u32
    }

    /// What `path` selects in `pstate` on each of `partitions` (in that order), read in
    /// parallel when there are several and reading one takes long enough to pay for threads.
    pub fn select(
        &self,
        pstate: &str,
        path: &[Navigator],
        partitions: &[u32],
    ) -> Result<Vec<Vec<Value>>, AccessError> {
        let catalog = Arc::clone(&self.catalog);
        let schema = catalog.schema(pstate)?;
        crate::pstate::check_leading_key(schema, pstate, path)?;
        let (snapshots, stores, remote) = (&self.snapshots, &self.stores, &self.remote);
        let limit = self.select_values_max;
        let one = |p: u32| -> Result<Vec<Value>, AccessError> {
            let (Some(snapshot), Some(store)) = (&snapshots[p as usize], &stores[p as usize])
            else {
                let r = remote.as_ref().ok_or_else(|| {
                    AccessError::new("partition-elsewhere", format!("partition {p} is not here"))
                })?;
                let id = crate::cluster::remote::PartitionId {
                    module: r.module.clone(),
                    since: r.since,
                    partition: p,
                };
                return r.link.select(&id, pstate, path, limit);
            };
            let mut view = SnapshotView { store, snapshot };
            crate::pstate::select_with(&mut view, &catalog, pstate, limit, path)
        };
        // The first partition is read here and timed: when reading one partition is cheap
        // (small data), starting threads would cost more than it saves, so the rest follow
        // sequentially; when it is not, the rest are read in parallel.
        let Some((&first, rest)) = partitions.split_first() else {
            return Ok(Vec::new());
        };
        let started = std::time::Instant::now();
        let mut out = vec![one(first)?];
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(rest.len());
        if threads <= 1 || started.elapsed() < PARALLEL_READ_AFTER {
            for &p in rest {
                out.push(one(p)?);
            }
            return Ok(out);
        }
        let chunks: Vec<&[u32]> = rest.chunks(rest.len().div_ceil(threads)).collect();
        std::thread::scope(|s| {
            let one = &one;
            let others: Vec<_> = chunks[1..]
                .iter()
                .map(|c| s.spawn(move || c.iter().map(|&p| one(p)).collect::<Result<Vec<_>, _>>()))
                .collect();
            for &p in chunks[0] {
                out.push(one(p)?);
            }
            for h in others {
                out.extend(h.join().expect("a query read panicked")?);
            }
            Ok(out)
        })
    }
}

/// A partition read slower than this makes a query read the remaining partitions in parallel.
const PARALLEL_READ_AFTER: std::time::Duration = std::time::Duration::from_micros(200);

/// Why a query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("module `{module}` has no query `{query}`")]
    Unknown { module: String, query: String },
    /// The guest answered with an error (its own code, or the code of a refused host call).
    #[error("query `{query}` failed: {code}: {message}")]
    Failed {
        query: String,
        code: String,
        message: String,
    },
    /// The guest trapped, ran past its deadline or out of memory.
    #[error("query `{query}` failed: {error}")]
    Guest { query: String, error: GuestError },
    #[error("the query's answer is not valid CBOR: {0}")]
    BadAnswer(String),
    #[error("storage: {0}")]
    Storage(String),
}

/// A module's queries and the instances that run them.
pub struct Queries {
    module: Arc<str>,
    runtime: Arc<Runtime>,
    pre: Pre,
    names: BTreeSet<String>,
    stores: Vec<Option<Arc<PStateStore>>>,
    remote: Option<RemoteReads>,
    catalog: Arc<Catalog>,
    /// See [`QueryReads::consistent`].
    apply_gate: Arc<std::sync::RwLock<()>>,
    /// Idle instances; a query takes one (or instantiates a new one) and gives it back.
    idle: Mutex<Vec<GuestInstance>>,
}

/// Idle query instances kept per module.
const IDLE_INSTANCES_MAX: usize = 8;

impl Queries {
    pub fn new(
        module: &str,
        runtime: Arc<Runtime>,
        pre: Pre,
        names: BTreeSet<String>,
        stores: Vec<Option<Arc<PStateStore>>>,
        catalog: Arc<Catalog>,
        apply_gate: Arc<std::sync::RwLock<()>>,
    ) -> Self {
        Self {
            module: module.into(),
            runtime,
            pre,
            names,
            stores,
            remote: None,
            catalog,
            apply_gate,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Reads partitions that have no store here on their hosts (a spread module).
    pub fn with_remote(mut self, remote: Option<RemoteReads>) -> Self {
        self.remote = remote;
        self
    }

    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// Runs query `name` with `args`. Blocking (call it off the async reactor).
    pub fn run(&self, name: &str, args: &Value) -> Result<Value, QueryError> {
        if !self.names.contains(name) {
            return Err(QueryError::Unknown {
                module: self.module.to_string(),
                query: name.to_string(),
            });
        }
        let pooled = self.idle.lock().expect("poisoned").pop();
        let mut instance = match pooled {
            Some(i) => i,
            None => GuestInstance::new(
                Arc::clone(&self.runtime),
                self.pre.clone(),
                &self.module,
                Box::new(Imports::new(
                    &self.module,
                    self.runtime.limits().path_navigators_max,
                )),
            )
            .map_err(|error| QueryError::Guest {
                query: name.to_string(),
                error,
            })?,
        };
        let reads = QueryReads::consistent(
            &self.stores,
            self.remote.clone(),
            Arc::clone(&self.catalog),
            self.runtime.limits().select_values_max,
            &self.apply_gate,
        )
        .map_err(|e| QueryError::Storage(e.to_string()))?;
        let partitions = self.stores.len() as u32;
        let imports = instance
            .imports_mut::<Imports>()
            .expect("query instances are made with `Imports`");
        imports.set_query(Some(reads));
        let result = instance.query(name, &to_cbor(args), partitions);
        let fault = instance.imports_mut::<Imports>().and_then(|imports| {
            imports.set_query(None);
            imports.take_storage_fault()
        });
        // A failed call already replaced the instance's store; either way it is reusable.
        let mut idle = self.idle.lock().expect("poisoned");
        if idle.len() < IDLE_INSTANCES_MAX {
            idle.push(instance);
        }
        drop(idle);
        if let Some(e) = fault {
            // A read failed on the host's side: a server fault, whatever the guest answered.
            return Err(QueryError::Storage(e.message));
        }
        match result {
            Ok(Ok(bytes)) => from_cbor(&bytes).map_err(|e| QueryError::BadAnswer(e.to_string())),
            Ok(Err((code, message))) => Err(QueryError::Failed {
                query: name.to_string(),
                code,
                message,
            }),
            Err(error) => Err(QueryError::Guest {
                query: name.to_string(),
                error,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pstate::{Schema, Session, TransformOp};

    /// Reads of every partition, whether sequential (small) or parallel (large), come back
    /// complete and in partition order, from the snapshots opened together.
    #[test]
    fn fan_out_reads_every_partition_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::default();
        catalog
            .schemas
            .insert("m".into(), Schema::parse("map<int, int>").unwrap());
        let catalog = Arc::new(catalog);
        const PARTITIONS: u32 = 4;
        let stores: Vec<Option<Arc<PStateStore>>> = (0..PARTITIONS)
            .map(|p| {
                Some(Arc::new(
                    PStateStore::open(&dir.path().join(format!("p{p}"))).unwrap(),
                ))
            })
            .collect();
        let mut expected = vec![0i64; PARTITIONS as usize];
        for (p, store) in stores.iter().flatten().enumerate() {
            let mut s = Session::new(
                Arc::clone(store),
                Arc::clone(&catalog),
                p as u32,
                PARTITIONS,
                100_000,
            );
            for k in 0..20_000i64 {
                let key = Value::Integer(k.into());
                if crate::pstate::partition_of_key(&key, PARTITIONS).unwrap() != p as u32 {
                    continue;
                }
                s.transform(
                    "m",
                    &[Navigator::Key(key)],
                    &TransformOp::Set(Value::Integer(1.into())),
                )
                .unwrap();
                s.end_record(true);
                expected[p] += 1;
            }
            store.commit_writes(&s.take_writes(), true).unwrap();
        }
        let all: Vec<u32> = (0..PARTITIONS).collect();
        for path in [vec![Navigator::MapVals], vec![Navigator::Count]] {
            let reads = QueryReads::consistent(
                &stores,
                None,
                Arc::clone(&catalog),
                100_000,
                &Default::default(),
            )
            .unwrap();
            let got = reads.select("m", &path, &all).unwrap();
            assert_eq!(got.len(), PARTITIONS as usize);
            for (p, values) in got.iter().enumerate() {
                if path == [Navigator::Count] {
                    assert_eq!(values, &vec![Value::Integer(expected[p].into())]);
                } else {
                    assert_eq!(values.len() as i64, expected[p]);
                }
            }
        }
        // One partition, and none.
        let reads = QueryReads::consistent(
            &stores,
            None,
            Arc::clone(&catalog),
            100_000,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            reads.select("m", &[Navigator::Count], &[2]).unwrap().len(),
            1
        );
        assert!(reads
            .select("m", &[Navigator::Count], &[])
            .unwrap()
            .is_empty());
        assert_eq!(
            reads
                .select("nope", &[Navigator::Count], &all)
                .unwrap_err()
                .code,
            "unknown-pstate"
        );
    }
}
