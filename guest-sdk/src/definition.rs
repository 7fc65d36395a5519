//! Typed declarations: what `define` returns to the host.

use std::rc::Rc;

use serde::de::DeserializeOwned;

use crate::bindings::sluice::module::types as wit;
use crate::{decode, encode, Ctx, HandlerOutput, QueryCtx, Result};

/// How a depot routes an appended record to a partition.
#[derive(Debug, Clone)]
pub enum Partitioner {
    /// By the stable hash of a field; nested fields are dotted: `"user.id"`.
    Hash(Vec<String>),
    /// Spread evenly.
    Random,
    /// The appender names the partition (`?partition=k`).
    Direct,
}

impl Partitioner {
    /// Hash by the field at this dotted path, e.g. `"word"` or `"user.id"`.
    pub fn hash(field: &str) -> Self {
        Partitioner::Hash(field.split('.').map(str::to_string).collect())
    }
}

/// The shape of a PState. Build with the constructors; a PState's schema is a `map` whose keys
/// partition it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(String);

impl Schema {
    pub fn bool() -> Self {
        Schema("bool".into())
    }
    pub fn int() -> Self {
        Schema("int".into())
    }
    pub fn float() -> Self {
        Schema("float".into())
    }
    pub fn string() -> Self {
        Schema("string".into())
    }
    pub fn bytes() -> Self {
        Schema("bytes".into())
    }
    /// Any value at all (not checked).
    pub fn any() -> Self {
        Schema("any".into())
    }
    pub fn map(key: Schema, value: Schema) -> Self {
        Schema(format!("map<{}, {}>", key.0, value.0))
    }
    pub fn set(element: Schema) -> Self {
        Schema(format!("set<{}>", element.0))
    }
    pub fn list(element: Schema) -> Self {
        Schema(format!("list<{}>", element.0))
    }
    /// A record: a map with these fixed string fields (each optional).
    pub fn record(fields: &[(&str, Schema)]) -> Self {
        let body: Vec<String> = fields
            .iter()
            .map(|(n, s)| format!("{n}: {}", s.0))
            .collect();
        Schema(format!("{{{}}}", body.join(", ")))
    }
    /// Store this collection element by element: it can hold millions of elements, be
    /// range-read with one seek, and report its size in O(1). Allowed for the PState's value or
    /// a record field, not inside another subindexed collection.
    pub fn subindexed(self) -> Self {
        Schema(format!("subindexed {}", self.0))
    }
    /// The schema's text form, as the host shows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

type Handler = Rc<dyn Fn(&Ctx, &[u8]) -> Result<Option<Vec<u8>>>>;
type QueryFn = Rc<dyn Fn(&QueryCtx, &[u8]) -> Result<Vec<u8>>>;

/// The name under which a topology's record handler is declared.
const RECORD_HANDLER: &str = "on-record";

/// A stream topology being declared.
pub struct StreamTopology {
    microbatch: bool,
    name: String,
    depots: Vec<String>,
    handler: Option<Handler>,
    hop_handlers: Vec<(String, Handler)>,
}

impl StreamTopology {
    /// Subscribe to a depot: the handler runs for each record appended to it.
    pub fn reads(&mut self, depot: &str) -> &mut Self {
        self.depots.push(depot.to_string());
        self
    }

    /// The function run for each record, decoded into `R`.
    pub fn handler<R, O, F>(&mut self, f: F) -> &mut Self
    where
        R: DeserializeOwned,
        O: HandlerOutput,
        F: Fn(&Ctx, R) -> Result<O> + 'static,
    {
        self.handler = Some(Rc::new(move |ctx, bytes| {
            let record: R = decode(bytes, "the record")?;
            f(ctx, record)?.into_ack()
        }));
        self
    }

    /// A handler that [`Ctx::hop`] can continue on another partition, decoding the hop's
    /// payload into `P`.
    pub fn hop_handler<P, O, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        P: DeserializeOwned,
        O: HandlerOutput,
        F: Fn(&Ctx, P) -> Result<O> + 'static,
    {
        let handler: Handler = Rc::new(move |ctx, bytes| {
            let payload: P = decode(bytes, "the hop payload")?;
            f(ctx, payload)?.into_ack()
        });
        self.hop_handlers.push((name.to_string(), handler));
        self
    }
}

impl StreamTopology {
    fn to_wit(&self) -> wit::StreamTopologyDef {
        wit::StreamTopologyDef {
            name: self.name.clone(),
            depots: self.depots.clone(),
            handler: if self.handler.is_some() {
                RECORD_HANDLER.to_string()
            } else {
                String::new()
            },
            hop_handlers: self.hop_handlers.iter().map(|(n, _)| n.clone()).collect(),
        }
    }
}

/// Everything a module declares.
#[derive(Default)]
pub struct Definition {
    depots: Vec<(String, Partitioner)>,
    pstates: Vec<(String, Schema)>,
    topologies: Vec<StreamTopology>,
    queries: Vec<(String, QueryFn)>,
    partitions_hint: Option<u32>,
}

impl Definition {
    /// Declare a depot.
    pub fn depot(&mut self, name: &str, partitioner: Partitioner) -> &mut Self {
        self.depots.push((name.to_string(), partitioner));
        self
    }

    /// Declare a PState.
    pub fn pstate(&mut self, name: &str, schema: Schema) -> &mut Self {
        self.pstates.push((name.to_string(), schema));
        self
    }

    /// Declare a stream topology; chain `.reads(depot)` and `.handler(f)`.
    pub fn stream_topology(&mut self, name: &str) -> &mut StreamTopology {
        self.topologies.push(StreamTopology {
            microbatch: false,
            name: name.to_string(),
            depots: Vec::new(),
            handler: None,
            hop_handlers: Vec::new(),
        });
        self.topologies.last_mut().expect("just pushed")
    }

    /// Declare a microbatch topology (chain like a stream topology): the host gathers what
    /// accumulated in its depots on every partition into a batch and runs the handlers (and
    /// their hops) on it; all the batch's PState writes commit atomically on all partitions,
    /// exactly once even across crashes.
    pub fn microbatch_topology(&mut self, name: &str) -> &mut StreamTopology {
        let t = self.stream_topology(name);
        t.microbatch = true;
        t
    }

    /// Declare a query topology: `POST /v1/modules/{m}/queries/{name}` with JSON arguments
    /// (decoded into `A`) runs `f`, which reads PStates on any partitions (see
    /// [`PState::select_all`](crate::PState::select_all)) and returns the answer.
    pub fn query<A, R, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned,
        R: serde::Serialize,
        F: Fn(&QueryCtx, A) -> Result<R> + 'static,
    {
        let q: QueryFn = Rc::new(move |ctx, bytes| {
            let args: A = decode(bytes, "the query arguments")?;
            encode(&f(ctx, args)?)
        });
        self.queries.push((name.to_string(), q));
        self
    }

    pub(crate) fn query_fn(&self, name: &str) -> Option<QueryFn> {
        self.queries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
    }

    /// The partition count this module would like (a power of two); a deploy may override it.
    pub fn partitions_hint(&mut self, partitions: u32) -> &mut Self {
        self.partitions_hint = Some(partitions);
        self
    }

    pub(crate) fn handler(&self, topology: &str, handler: &str) -> Option<Handler> {
        let t = self.topologies.iter().find(|t| t.name == topology)?;
        if handler == RECORD_HANDLER {
            return t.handler.clone();
        }
        t.hop_handlers
            .iter()
            .find(|(n, _)| n == handler)
            .map(|(_, h)| h.clone())
    }

    pub(crate) fn to_wit(&self) -> wit::ModuleDefinition {
        wit::ModuleDefinition {
            depots: self
                .depots
                .iter()
                .map(|(name, p)| wit::DepotDef {
                    name: name.clone(),
                    partitioner: match p {
                        Partitioner::Hash(fields) => wit::Partitioner::Hash(fields.clone()),
                        Partitioner::Random => wit::Partitioner::Random,
                        Partitioner::Direct => wit::Partitioner::Direct,
                    },
                })
                .collect(),
            pstates: self
                .pstates
                .iter()
                .map(|(name, s)| wit::PstateDef {
                    name: name.clone(),
                    schema: s.0.clone(),
                })
                .collect(),
            stream_topologies: self
                .topologies
                .iter()
                .filter(|t| !t.microbatch)
                .map(StreamTopology::to_wit)
                .collect(),
            microbatch_topologies: self
                .topologies
                .iter()
                .filter(|t| t.microbatch)
                .map(StreamTopology::to_wit)
                .collect(),
            partitions_hint: self.partitions_hint,
            queries: self.queries.iter().map(|(n, _)| n.clone()).collect(),
        }
    }
}
