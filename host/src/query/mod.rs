//! Query topologies: guest functions run on demand, reading any partition's PStates.
//!
//! Owns [`QueryReads`] — what a query's host imports read — and [`Queries`], a module's pool
//! of guest instances kept for queries only, so a query never waits behind (or blocks) a
//! partition worker. Invariants: a query writes nothing (transforms and hops are refused by
//! the host imports); each partition is read from one redb snapshot, all taken together when
//! the query starts (between two microbatch applies: the module's apply gate) and kept until
//! the query ends, so a query never sees a partition change under it nor half of a
//! microbatch; a partition on another host of a cluster (a spread module) is read from one
//! snapshot its owner takes at the query's first read of it and holds until the query ends
//! (`cluster::pinned`) — if that snapshot is lost mid-query (the partition moved), the query
//! answers [`QueryError::Unavailable`] (503, retry) whatever the guest did with the error;
//! a query is bounded by the `query_deadline_ms` limit and the instance memory cap like any
//! guest call, and a failed query's instance is replaced.

use std::collections::{BTreeMap, BTreeSet};
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
    remote: Option<Pinned>,
    select_values_max: usize,
}

/// How a query reads the partitions of a spread module that run on other hosts: each read
/// is a select on the partition's owner, from the snapshot the owner took at the query's
/// first read of that partition and holds for it (`cluster::pinned`).
#[derive(Clone)]
pub struct RemoteReads {
    pub link: Arc<crate::cluster::remote::Link>,
    pub module: String,
    pub since: u64,
    /// This host's id (it names the query to the owners).
    pub host: String,
    /// How long an owner holds a query's snapshot at most: the query deadline and a margin.
    pub hold_ms: u64,
}

impl RemoteReads {
    /// Partition `p` of this module incarnation, as the cluster names it.
    fn partition(&self, p: u32) -> crate::cluster::remote::PartitionId {
        crate::cluster::remote::PartitionId {
            module: self.module.clone(),
            since: self.since,
            partition: p,
        }
    }
}

/// One query's reads of other hosts' partitions.
struct Pinned {
    reads: RemoteReads,
    query: crate::cluster::remote::QueryRef,
    /// The partitions read there so far, each with the host holding its snapshot.
    held: Mutex<BTreeMap<u32, String>>,
    /// The first read refused because a partition was unavailable or its snapshot lost.
    unavailable: Mutex<Option<String>>,
}

impl Pinned {
    fn select(
        &self,
        p: u32,
        pstate: &str,
        path: &[Navigator],
        limit: usize,
    ) -> Result<Vec<Value>, AccessError> {
        let r = &self.reads;
        let id = r.partition(p);
        let pin = crate::cluster::remote::Pin {
            query: self.query.clone(),
            first: !self.held.lock().expect("poisoned").contains_key(&p),
            hold_ms: r.hold_ms,
        };
        match r.link.select_pinned(&id, pstate, path, limit, pin) {
            Ok((values, host)) => {
                self.held.lock().expect("poisoned").entry(p).or_insert(host);
                Ok(values)
            }
            Err(e) => {
                if matches!(e.code, "partition-unavailable" | "snapshot-lost") {
                    let mut unavailable = self.unavailable.lock().expect("poisoned");
                    unavailable.get_or_insert_with(|| e.message.clone());
                }
                Err(e)
            }
        }
    }
}

impl Drop for Pinned {
    /// The query ended: its owners drop the snapshots they hold for it.
    fn drop(&mut self) {
        let r = &self.reads;
        for (&p, host) in self.held.get_mut().expect("poisoned").iter() {
            r.link.end_query(&r.partition(p), host, self.query.clone());
        }
    }
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
        let remote = remote.map(|reads| Pinned {
            query: crate::cluster::remote::QueryRef::next(&reads.host),
            reads,
            held: Mutex::default(),
            unavailable: Mutex::default(),
        });
        Ok(Self {
            catalog,
            stores: stores.to_vec(),
            snapshots,
            remote,
            select_values_max,
        })
    }

    /// Why a read of another host's partition was refused as unavailable (it moved, or its
    /// snapshot for this query was lost), if one was: the query then answers 503.
    pub fn unavailable(&self) -> Option<String> {
        let remote = self.remote.as_ref()?;
        remote.unavailable.lock().expect("poisoned").clone()
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
                return r.select(p, pstate, path, limit);
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
    /// A partition on another host could not be read from one snapshot for the whole query
    /// (it moved, or no host owns it now): retry.
    #[error("{0}")]
    Unavailable(String),
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
        let (reads, fault) = instance
            .imports_mut::<Imports>()
            .map(|imports| (imports.set_query(None), imports.take_storage_fault()))
            .unwrap_or_default();
        let unavailable = reads.as_ref().and_then(QueryReads::unavailable);
        drop(reads);
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
        if let Some(why) = unavailable {
            // Not one snapshot of every partition it read: no answer, whatever the guest said.
            return Err(QueryError::Unavailable(why));
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
