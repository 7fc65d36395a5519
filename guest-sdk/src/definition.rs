//! What a module declares — depots, PStates, topologies, queries — kept as the dispatch table
//! of its handlers and returned to the host by `define`.
//!
//! Owns the record handler dispatch: the host calls one record handler (`on-record`) per
//! topology, and the SDK picks the handler given for the record's depot ([`StreamTopology::on`])
//! or else the topology's catch-all ([`StreamTopology::handler`]). Invariant: the definition
//! returned to the host depends only on the declarations, never on which handlers are typed.

use std::rc::Rc;

use serde::de::DeserializeOwned;

use crate::bindings::exports::sluice::module::extensions as ext;
use crate::bindings::sluice::module::types as wit;
use crate::schema::{HasSchema, Schema};
use crate::typed::{Depot, HopName, PStateDef};
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

/// The partition holding a module's global PStates (the host's choice, mirrored).
pub const GLOBAL_PARTITION: u32 = 0;

/// What the host appends to a tick depot ([`Definition::tick_depot`]) on every partition:
/// the tick's logical time, from the log (so a replay sees the same time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tick {
    /// The tick's time, in ms since the Unix epoch: a multiple of the interval.
    pub time: u64,
    /// The previous tick's time on this partition (`None` for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Intervals this tick covers: `(time - since) / interval`, more than 1 when the host was
    /// down over some (missed ticks are not run one by one: this one carries the gap).
    pub ticks: u64,
}

impl crate::HasSchema for Tick {
    fn schema() -> Schema {
        Schema::record(&[
            ("time", Schema::int()),
            ("since", Schema::int()),
            ("ticks", Schema::int()),
        ])
    }
}

/// How long a depot keeps its records on each partition ([`Definition::retention`]). Records
/// a topology has not processed yet, or that a dead letter names, are kept regardless.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    max_records: Option<u64>,
    max_age_ms: Option<u64>,
}

impl Retention {
    /// Keep the newest `n` records of each partition.
    pub const fn records(n: u64) -> Self {
        Retention {
            max_records: Some(n),
            max_age_ms: None,
        }
    }

    /// Keep the records appended in the last `ms` milliseconds.
    pub const fn max_age_ms(ms: u64) -> Self {
        Retention {
            max_records: None,
            max_age_ms: Some(ms),
        }
    }

    /// Also bound by age: a record goes when either bound says so.
    pub const fn and_max_age_ms(self, ms: u64) -> Self {
        Retention {
            max_records: self.max_records,
            max_age_ms: Some(ms),
        }
    }
}

type Handler = Rc<dyn Fn(&Ctx, &[u8]) -> Result<Option<Vec<u8>>>>;
type QueryFn = Rc<dyn Fn(&QueryCtx, &[u8]) -> Result<Vec<u8>>>;
/// `(key, stored value)` as CBOR to the new value as CBOR.
pub(crate) type MigrateFn = Rc<dyn Fn(&[u8], &[u8]) -> Result<Vec<u8>>>;

/// The name under which a topology's record handler is declared.
pub(crate) const RECORD_HANDLER: &str = "on-record";

/// A stream topology being declared.
pub struct StreamTopology {
    microbatch: bool,
    name: String,
    depots: Vec<String>,
    handler: Option<Handler>,
    depot_handlers: Vec<(String, Handler)>,
    hop_handlers: Vec<(String, Handler)>,
}

fn record_handler<R, O, F>(f: F) -> Handler
where
    R: DeserializeOwned,
    O: HandlerOutput,
    F: Fn(&Ctx, R) -> Result<O> + 'static,
{
    Rc::new(move |ctx, bytes| {
        let record: R = decode(bytes, "the record")?;
        f(ctx, record)?.into_ack()
    })
}

impl StreamTopology {
    /// Subscribe to a depot: the handler runs for each record appended to it.
    pub fn reads(&mut self, depot: impl AsRef<str>) -> &mut Self {
        self.depots.push(depot.as_ref().to_string());
        self
    }

    /// Subscribe to `depot` with its own handler: `f` runs for each of its records, decoded
    /// into the depot's record type (a handler for another type does not compile). Chain one
    /// `on` per depot; a topology with both `on` and [`handler`](Self::handler) runs the
    /// latter for the depots that have no `on`.
    pub fn on<R, O, F>(&mut self, depot: Depot<R>, f: F) -> &mut Self
    where
        R: DeserializeOwned,
        O: HandlerOutput,
        F: Fn(&Ctx, R) -> Result<O> + 'static,
    {
        if !self.depots.iter().any(|d| d == depot.name()) {
            self.depots.push(depot.name().to_string());
        }
        self.depot_handlers.retain(|(d, _)| d != depot.name());
        self.depot_handlers
            .push((depot.name().to_string(), record_handler(f)));
        self
    }

    /// The function run for each record of every depot read with [`reads`](Self::reads),
    /// decoded into `R` (the untyped API: prefer one [`on`](Self::on) per depot).
    pub fn handler<R, O, F>(&mut self, f: F) -> &mut Self
    where
        R: DeserializeOwned,
        O: HandlerOutput,
        F: Fn(&Ctx, R) -> Result<O> + 'static,
    {
        self.handler = Some(record_handler(f));
        self
    }

    /// A handler that [`Ctx::hop`] can continue on another partition, decoding the hop's
    /// payload into `P`. `name` is a [`Hop<P>`](crate::Hop) (the payload type is checked at
    /// both ends) or a `&str`.
    pub fn hop_handler<H, P, O, F>(&mut self, name: H, f: F) -> &mut Self
    where
        H: HopName<P>,
        P: DeserializeOwned,
        O: HandlerOutput,
        F: Fn(&Ctx, P) -> Result<O> + 'static,
    {
        let handler: Handler = Rc::new(move |ctx, bytes| {
            let payload: P = decode(bytes, "the hop payload")?;
            f(ctx, payload)?.into_ack()
        });
        self.hop_handlers
            .push((name.hop_name().to_string(), handler));
        self
    }
}

impl StreamTopology {
    fn to_wit(&self) -> wit::StreamTopologyDef {
        let has_record_handler = self.handler.is_some() || !self.depot_handlers.is_empty();
        wit::StreamTopologyDef {
            name: self.name.clone(),
            depots: self.depots.clone(),
            handler: if has_record_handler {
                RECORD_HANDLER.to_string()
            } else {
                String::new()
            },
            hop_handlers: self.hop_handlers.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    fn record_handler_for(&self, depot: &str) -> Option<Handler> {
        self.depot_handlers
            .iter()
            .find(|(d, _)| d == depot)
            .map(|(_, h)| h.clone())
            .or_else(|| self.handler.clone())
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
    globals: Vec<String>,
    ticks: Vec<(String, u64)>,
    retention: Vec<(String, Retention)>,
    migrations: Vec<(String, MigrateFn)>,
}

impl Definition {
    /// Declare a depot: a [`Depot<R>`](crate::Depot) or its name.
    pub fn depot(&mut self, depot: impl AsRef<str>, partitioner: Partitioner) -> &mut Self {
        self.depots.push((depot.as_ref().to_string(), partitioner));
        self
    }

    /// Declare a PState with a schema written by hand (prefer [`pstate_of`](Self::pstate_of)).
    pub fn pstate(&mut self, name: &str, schema: Schema) -> &mut Self {
        self.pstates.push((name.to_string(), schema));
        self
    }

    /// Declare the PState `def`, with the schema `map<K, V>` derived from its types.
    pub fn pstate_of<K, V>(&mut self, def: PStateDef<K, V>) -> &mut Self
    where
        K: HasSchema,
        V: HasSchema,
    {
        self.pstate(def.name(), Schema::map(K::schema(), V::schema()))
    }

    /// Declare a global PState: stored whole on [`GLOBAL_PARTITION`], for module-wide state
    /// (a counter over every record). Handlers on other partitions reach it with a hop to
    /// [`HopTarget::Global`](crate::HopTarget::Global); selects and queries read it without
    /// naming a partition.
    pub fn global_pstate_of<K, V>(&mut self, def: PStateDef<K, V>) -> &mut Self
    where
        K: HasSchema,
        V: HasSchema,
    {
        self.globals.push(def.name().to_string());
        self.pstate_of(def)
    }

    /// Declare a tick depot: the host appends a [`Tick`] to it on every partition every
    /// `interval_ms` (at least 10); topologies read it like any depot. Clients cannot
    /// append to it.
    pub fn tick_depot(&mut self, depot: Depot<Tick>, interval_ms: u64) -> &mut Self {
        self.ticks.push((depot.name().to_string(), interval_ms));
        self.depot(depot, Partitioner::Direct)
    }

    /// Declare how the stored values of `def` become its new shape: when an update changes
    /// the PState's schema, the host runs `f` on every stored value (key, value in the old
    /// shape), on read at once and in the background until all are rewritten. `f` must be a
    /// pure function of its inputs (it can read or write no PState). Keep it in later versions
    /// until `GET /v1/modules/{m}` shows the migration `done`.
    pub fn migrate<K, Old, V, F>(&mut self, def: PStateDef<K, V>, f: F) -> &mut Self
    where
        K: DeserializeOwned,
        Old: DeserializeOwned,
        V: serde::Serialize,
        F: Fn(K, Old) -> Result<V> + 'static,
    {
        let migrate: MigrateFn = Rc::new(move |key: &[u8], value: &[u8]| {
            let key: K = decode(key, "a PState key")?;
            let old: Old = decode(value, "a stored value in its old shape")?;
            encode(&f(key, old)?)
        });
        self.migrations.push((def.name().to_string(), migrate));
        self
    }

    /// The migration declared for `pstate`.
    pub(crate) fn migration(&self, pstate: &str) -> Option<MigrateFn> {
        self.migrations
            .iter()
            .find(|(p, _)| p == pstate)
            .map(|(_, f)| Rc::clone(f))
    }

    /// Bound how long `depot` keeps its records (a deployment may set another bound).
    pub fn retention(&mut self, depot: impl AsRef<str>, retention: Retention) -> &mut Self {
        self.retention.push((depot.as_ref().to_string(), retention));
        self
    }

    /// Declare a stream topology; chain one `.on(depot, f)` per depot (or, untyped,
    /// `.reads(depot)` and `.handler(f)`) and its `.hop_handler(hop, f)`s.
    pub fn stream_topology(&mut self, name: &str) -> &mut StreamTopology {
        self.topologies.push(StreamTopology {
            microbatch: false,
            name: name.to_string(),
            depots: Vec::new(),
            handler: None,
            depot_handlers: Vec::new(),
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

    /// The handler the host calls as `handler` of `topology` for a record of `depot`.
    pub(crate) fn handler(&self, topology: &str, handler: &str, depot: &str) -> Option<Handler> {
        let t = self.topologies.iter().find(|t| t.name == topology)?;
        if handler == RECORD_HANDLER {
            return t.record_handler_for(depot);
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
                    schema: s.as_str().to_string(),
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

    pub(crate) fn extensions_to_wit(&self) -> ext::ExtensionsDef {
        ext::ExtensionsDef {
            global_pstates: self.globals.clone(),
            ticks: self
                .ticks
                .iter()
                .map(|(depot, interval_ms)| ext::TickDef {
                    depot: depot.clone(),
                    interval_ms: *interval_ms,
                })
                .collect(),
            retention: self
                .retention
                .iter()
                .map(|(depot, r)| ext::RetentionDef {
                    depot: depot.clone(),
                    max_records: r.max_records,
                    max_age_ms: r.max_age_ms,
                })
                .collect(),
            migrations: self.migrations.iter().map(|(p, _)| p.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::{AckReturn, Hop, RecordInfo};

    #[derive(Deserialize)]
    struct Deposit {
        amount: i64,
    }

    #[derive(Deserialize)]
    struct Transfer {
        id: String,
    }

    const DEPOSITS: Depot<Deposit> = Depot::new("deposits");
    const TRANSFERS: Depot<Transfer> = Depot::new("transfers");
    const CREDIT: Hop<i64> = Hop::new("credit");

    /// Runs `handler` of topology `t` as the host would for a record of `depot`; `None` when
    /// the definition has no such handler.
    fn run(m: &Definition, handler: &str, depot: &str, input: &ciborium::Value) -> Option<String> {
        let ctx = Ctx {
            record: RecordInfo {
                depot: depot.to_string(),
                partition: 0,
                offset: 0,
                partitions: 1,
                batch_id: None,
            },
        };
        let f = m.handler("t", handler, depot)?;
        let ack = f(&ctx, &encode(input).unwrap()).unwrap().unwrap();
        Some(
            decode::<ciborium::Value>(&ack, "ack")
                .unwrap()
                .as_text()?
                .to_string(),
        )
    }

    fn record(field: &str, v: ciborium::Value) -> ciborium::Value {
        ciborium::Value::Map(vec![(field.into(), v)])
    }

    #[test]
    fn each_depot_has_its_own_record_handler() {
        let mut m = Definition::default();
        m.microbatch_topology("t")
            .on(DEPOSITS, |_, d: Deposit| {
                Ok(AckReturn(format!("deposit {}", d.amount)))
            })
            .on(TRANSFERS, |_, t: Transfer| {
                Ok(AckReturn(format!("transfer {}", t.id)))
            })
            .hop_handler(CREDIT, |_, n: i64| Ok(AckReturn(format!("credit {n}"))));
        let t = &m.to_wit().microbatch_topologies[0];
        assert_eq!(t.depots, ["deposits", "transfers"]);
        assert_eq!(t.handler, RECORD_HANDLER);
        assert_eq!(t.hop_handlers, ["credit"]);

        let deposit = record("amount", 5.into());
        let transfer = record("id", "t1".into());
        assert_eq!(
            run(&m, RECORD_HANDLER, "deposits", &deposit).as_deref(),
            Some("deposit 5")
        );
        assert_eq!(
            run(&m, RECORD_HANDLER, "transfers", &transfer).as_deref(),
            Some("transfer t1")
        );
        // A hop handler runs whatever depot its tree started from.
        assert_eq!(
            run(&m, "credit", "deposits", &7.into()).as_deref(),
            Some("credit 7")
        );
        assert!(run(&m, RECORD_HANDLER, "elsewhere", &deposit).is_none());
        assert!(run(&m, "debit", "deposits", &7.into()).is_none());
    }

    #[test]
    fn a_catch_all_handler_takes_the_depots_without_their_own() {
        let mut m = Definition::default();
        m.stream_topology("t")
            .reads("deposits")
            .reads(TRANSFERS)
            .handler(|_, _: ciborium::Value| Ok(AckReturn("any")))
            .on(DEPOSITS, |_, _: Deposit| Ok(AckReturn("first")))
            .on(DEPOSITS, |_, _: Deposit| Ok(AckReturn("deposit")));
        let t = &m.to_wit().stream_topologies[0];
        assert_eq!(
            t.depots,
            ["deposits", "transfers"],
            "`on` adds no depot twice"
        );
        let deposit = record("amount", 5.into());
        assert_eq!(
            run(&m, RECORD_HANDLER, "deposits", &deposit).as_deref(),
            Some("deposit")
        );
        assert_eq!(
            run(&m, RECORD_HANDLER, "transfers", &deposit).as_deref(),
            Some("any")
        );
    }

    #[test]
    fn typed_and_untyped_declarations_define_the_same() {
        const COUNTS: PStateDef<String, i64> = PStateDef::new("counts");
        let mut typed = Definition::default();
        typed.depot(DEPOSITS, Partitioner::hash("account"));
        typed.pstate_of(COUNTS);
        let mut untyped = Definition::default();
        untyped.depot("deposits", Partitioner::hash("account"));
        untyped.pstate("counts", Schema::map(Schema::string(), Schema::int()));
        let (a, b) = (typed.to_wit(), untyped.to_wit());
        assert_eq!(a.depots[0].name, b.depots[0].name);
        assert_eq!(a.pstates[0].name, b.pstates[0].name);
        assert_eq!(a.pstates[0].schema, b.pstates[0].schema);
    }
}
