//! The host imports: what a guest call may do — read and write its partition's PStates,
//! hop, log (topology handlers), or read any partition through a snapshot (queries).
//!
//! Owns [`Imports`], the implementation of the contract's `host` interface that
//! [`crate::runtime`] delegates to (so the runtime knows wasmtime only, not PStates or
//! queries). Invariants: a handler writes only through its [`Session`] (its partition, its
//! overlay, its PState writer claim); a query has no session, so every transform and hop is
//! refused; a hop names a handler its topology declares; every value crossing the boundary is
//! decoded and validated here before it reaches a PState.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::pstate::{Cmp, Navigator, Range, Session, TransformOp};
use crate::query::QueryReads;
use crate::runtime::{wit, HostImports};
use crate::value::{from_cbor, Value};

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

/// What the calls of one guest instance may do.
pub struct Imports {
    module: Arc<str>,
    /// PState access for handler calls; `None` (queries, `define`) refuses it.
    session: Option<Session>,
    /// Hops the call in progress asked for, in order.
    hops: Vec<EmittedHop>,
    /// Reads of the query in progress (then `session` is `None` and nothing can be written).
    query: Option<QueryReads>,
    /// The topology (or query) of the call in progress, for log lines.
    running: String,
    path_navigators_max: usize,
    /// Per topology, the hop handlers it declares: a hop to another name is refused at once.
    hop_handlers: Arc<BTreeMap<String, Vec<String>>>,
    /// A storage failure (damage or I/O) a read hit during the call in progress, whatever the
    /// guest did with the error it got: the partition fails on it instead of dead-lettering.
    storage_fault: Option<crate::partition::seams::StorageError>,
}

/// The guest's view of an access error; a storage failure is also recorded in `fault`.
fn access(
    fault: &mut Option<crate::partition::seams::StorageError>,
    e: crate::pstate::AccessError,
) -> wit::Error {
    if matches!(e.code, "storage" | "damaged") && fault.is_none() {
        *fault = Some(crate::partition::seams::StorageError {
            message: e.message.clone(),
            damaged: e.code == "damaged",
        });
    }
    wit_error(e.code, e.message)
}

impl Imports {
    /// Imports for `define` and queries: no PState session.
    pub fn new(module: &str, path_navigators_max: usize) -> Self {
        Self {
            module: module.into(),
            session: None,
            hops: Vec::new(),
            query: None,
            running: String::new(),
            path_navigators_max,
            hop_handlers: Arc::default(),
            storage_fault: None,
        }
    }

    /// Imports for topology handlers, acting on `session`; a hop must name a handler its
    /// topology declares in `hop_handlers`.
    pub fn for_handlers(
        module: &str,
        path_navigators_max: usize,
        session: Session,
        hop_handlers: Arc<BTreeMap<String, Vec<String>>>,
    ) -> Self {
        Self {
            session: Some(session),
            hop_handlers,
            ..Self::new(module, path_navigators_max)
        }
    }

    /// The session handler calls act on.
    pub fn session_mut(&mut self) -> &mut Option<Session> {
        &mut self.session
    }

    /// Takes the storage failure a read of the last calls hit, if any.
    pub fn take_storage_fault(&mut self) -> Option<crate::partition::seams::StorageError> {
        self.storage_fault.take()
    }

    /// Takes the hops the last call emitted.
    pub fn take_hops(&mut self) -> Vec<EmittedHop> {
        std::mem::take(&mut self.hops)
    }

    /// The next query call reads through `reads` (`None` after it); returns the reads set
    /// before.
    pub fn set_query(&mut self, reads: Option<QueryReads>) -> Option<QueryReads> {
        std::mem::replace(&mut self.query, reads)
    }
}

impl HostImports for Imports {
    fn begin_call(&mut self, running: &str) {
        self.hops.clear();
        self.running.clear();
        self.running.push_str(running);
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn wit_error(code: &str, message: impl Into<String>) -> wit::Error {
    wit::Error {
        code: code.to_string(),
        message: message.into(),
    }
}

fn cbor(bytes: &[u8], what: &str) -> Result<Value, wit::Error> {
    from_cbor(bytes).map_err(|e| wit_error("invalid-value", format!("{what}: {e}")))
}

fn navigators(path: Vec<wit::Navigator>, max: usize) -> Result<Vec<Navigator>, wit::Error> {
    use wit::Navigator as N;
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
                        wit::Comparison::Eq => Cmp::Eq,
                        wit::Comparison::Ne => Cmp::Ne,
                        wit::Comparison::Lt => Cmp::Lt,
                        wit::Comparison::Le => Cmp::Le,
                        wit::Comparison::Gt => Cmp::Gt,
                        wit::Comparison::Ge => Cmp::Ge,
                    },
                    cbor(&v, "filter operand")?,
                ),
            })
        })
        .collect()
}

impl wit::Host for Imports {
    fn select(
        &mut self,
        pstate: String,
        path: Vec<wit::Navigator>,
    ) -> wit::HostResult<Result<Vec<Vec<u8>>, wit::Error>> {
        let path = match navigators(path, self.path_navigators_max) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(reads) = self.query.as_ref() {
            let partition = match reads.home_partition(&pstate, &path) {
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
                .map_err(|e| access(&mut self.storage_fault, e)));
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
            .map_err(|e| access(&mut self.storage_fault, e)))
    }

    fn select_from(
        &mut self,
        pstate: String,
        target: wit::Target,
        path: Vec<wit::Navigator>,
    ) -> wit::HostResult<Result<Vec<Vec<Vec<u8>>>, wit::Error>> {
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
            wit::Target::Key(k) => match cbor(&k, "target key").and_then(|v| {
                crate::pstate::partition_of_key(&v, partitions)
                    .map_err(|e| wit_error("invalid-key", e.to_string()))
            }) {
                Ok(p) => vec![p],
                Err(e) => return Ok(Err(e)),
            },
            wit::Target::All => (0..partitions).collect(),
            wit::Target::Partition(p) if p < partitions => vec![p],
            wit::Target::Partition(p) => {
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
                .map_err(|e| access(&mut self.storage_fault, e)));
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
            .map_err(|e| access(&mut self.storage_fault, e)))
    }

    fn transform(
        &mut self,
        pstate: String,
        path: Vec<wit::Navigator>,
        op: wit::TransformOp,
    ) -> wit::HostResult<Result<(), wit::Error>> {
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
        use wit::TransformOp as T;
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
            .map_err(|e| access(&mut self.storage_fault, e)))
    }

    fn hop(
        &mut self,
        target: wit::Target,
        handler: String,
        payload: Vec<u8>,
    ) -> wit::HostResult<Result<(), wit::Error>> {
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
            wit::Target::Key(k) => match cbor(&k, "hop key") {
                Ok(v) if crate::pstate::key::encode(&v).is_ok() => HopDest::Key(v),
                Ok(v) => {
                    return Ok(Err(wit_error(
                        "invalid-key",
                        format!("a {} cannot be a hop key", crate::value::type_name(&v)),
                    )))
                }
                Err(e) => return Ok(Err(e)),
            },
            wit::Target::All => HopDest::All,
            wit::Target::Partition(p) if p < session.partitions() => HopDest::Partition(p),
            wit::Target::Partition(p) => {
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

    fn log(&mut self, level: wit::LogLevel, message: String) -> wit::HostResult<()> {
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
            wit::LogLevel::Trace => tracing::trace!(module, topology, guest = true, "{message}"),
            wit::LogLevel::Debug => tracing::debug!(module, topology, guest = true, "{message}"),
            wit::LogLevel::Info => tracing::info!(module, topology, guest = true, "{message}"),
            wit::LogLevel::Warn => tracing::warn!(module, topology, guest = true, "{message}"),
            wit::LogLevel::Error => tracing::error!(module, topology, guest = true, "{message}"),
        }
        Ok(())
    }
}
