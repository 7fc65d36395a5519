//! A module's declarations, as its `define` export returns them, and their validation.
//!
//! Invariant: a [`Validated`] definition has unique, well-formed names; every PState schema
//! parses and is a top-level map; every topology reads only declared depots.

use std::collections::{BTreeMap, BTreeSet};

use crate::depot::{Depot, Partitioner};
use crate::pstate::{Catalog, Schema};
use crate::runtime::wit;
use crate::topology::{Topology, TopologyKind};

#[derive(Debug, Clone)]
pub struct DepotDecl {
    pub name: String,
    pub partitioner: Partitioner,
    /// A tick depot: the host appends a tick to every partition this often.
    pub tick_interval_ms: Option<u64>,
    /// How long its records are kept (declared by the module; a deployment may override).
    pub retention: Retention,
}

pub use crate::depot::Retention;

#[derive(Debug, Clone)]
pub struct PStateDecl {
    pub name: String,
    pub schema: String,
    /// Stored whole on [`GLOBAL_PARTITION`].
    pub global: bool,
    /// The module's `migrate` rewrites this PState's stored values when an update changes its
    /// schema (`pstate::migration`).
    pub migrate: bool,
}

pub use crate::pstate::GLOBAL_PARTITION;
/// The shortest tick interval a tick depot may declare.
pub const TICK_INTERVAL_MS_MIN: u64 = 10;

#[derive(Debug, Clone)]
pub struct TopologyDecl {
    pub name: String,
    pub depots: Vec<String>,
    pub handler: String,
    pub hop_handlers: Vec<String>,
}

/// What `define` returned.
#[derive(Debug, Clone)]
pub struct Definition {
    pub depots: Vec<DepotDecl>,
    pub pstates: Vec<PStateDecl>,
    pub stream_topologies: Vec<TopologyDecl>,
    pub microbatch_topologies: Vec<TopologyDecl>,
    pub partitions_hint: Option<u32>,
    /// Query topologies, by name.
    pub queries: Vec<String>,
}

/// A definition the host can run.
#[derive(Debug)]
pub struct Validated {
    pub depots: BTreeMap<String, Depot>,
    pub catalog: Catalog,
    pub topologies: Vec<Topology>,
    pub queries: BTreeSet<String>,
}

/// The most declarations of each kind a module may make.
pub const DECLARATIONS_MAX: usize = 256;

/// Whether `name` is a valid name for a module, depot, PState, topology or handler:
/// 1–64 characters of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl Definition {
    pub fn validate(&self) -> Result<Validated, String> {
        let kinds = [
            self.depots.len(),
            self.pstates.len(),
            self.stream_topologies.len() + self.microbatch_topologies.len(),
            self.queries.len(),
        ];
        if kinds.iter().any(|n| *n > DECLARATIONS_MAX) {
            return Err(format!(
                "more than {DECLARATIONS_MAX} declarations of one kind"
            ));
        }
        let check = |kind: &str, name: &str, seen: &mut BTreeSet<String>| -> Result<(), String> {
            if !valid_name(name) {
                return Err(format!(
                    "{kind} name `{name}` is invalid: use 1-64 of a-z, 0-9, '-', '_'"
                ));
            }
            if !seen.insert(name.to_string()) {
                return Err(format!("{kind} `{name}` is declared twice"));
            }
            Ok(())
        };
        let mut depots = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for d in &self.depots {
            check("depot", &d.name, &mut seen)?;
            if let Some(ms) = d.tick_interval_ms {
                if ms < TICK_INTERVAL_MS_MIN {
                    return Err(format!(
                        "tick depot `{}`: interval {ms} ms is below the minimum of {TICK_INTERVAL_MS_MIN} ms",
                        d.name
                    ));
                }
                if d.partitioner != Partitioner::Direct {
                    return Err(format!(
                        "tick depot `{}`: the host appends to every partition itself; declare it with the `direct` partitioner",
                        d.name
                    ));
                }
            }
            if d.retention.max_records == Some(0) {
                return Err(format!(
                    "depot `{}`: retention of 0 records would keep nothing; leave it unset to keep every record",
                    d.name
                ));
            }
            if let Partitioner::Hash(fields) = &d.partitioner {
                if fields.is_empty() || fields.iter().any(|f| f.is_empty()) {
                    return Err(format!(
                        "depot `{}`: hash partitioner needs a key field",
                        d.name
                    ));
                }
            }
            let mut depot = Depot::new(d.name.clone(), d.partitioner.clone());
            depot.tick_interval_ms = d.tick_interval_ms;
            depot.retention = d.retention;
            depots.insert(d.name.clone(), depot);
        }
        let mut catalog = Catalog::default();
        let mut seen = BTreeSet::new();
        for p in &self.pstates {
            check("PState", &p.name, &mut seen)?;
            let schema =
                Schema::parse(&p.schema).map_err(|e| format!("PState `{}`: {e}", p.name))?;
            if schema.as_top_level().is_none() {
                return Err(format!(
                    "PState `{}`: the top-level schema must be a map (its keys partition the PState), not `{schema}`",
                    p.name
                ));
            }
            if p.migrate && schema.has_subindexed() {
                return Err(format!(
                    "PState `{}` declares a migration but has a subindexed collection (`{schema}`): only whole top-level values migrate",
                    p.name
                ));
            }
            catalog.schemas.insert(p.name.clone(), schema);
            if p.global {
                catalog.globals.insert(p.name.clone());
            }
            if p.migrate {
                catalog.migrating.insert(p.name.clone());
            }
        }
        let mut topologies = Vec::new();
        let mut seen = BTreeSet::new();
        let all = self
            .stream_topologies
            .iter()
            .map(|t| (TopologyKind::Stream, t))
            .chain(
                self.microbatch_topologies
                    .iter()
                    .map(|t| (TopologyKind::Microbatch, t)),
            );
        for (kind, t) in all {
            check("topology", &t.name, &mut seen)?;
            if t.depots.is_empty() {
                return Err(format!("topology `{}` reads no depot", t.name));
            }
            for d in &t.depots {
                if !depots.contains_key(d) {
                    return Err(format!("topology `{}` reads unknown depot `{d}`", t.name));
                }
            }
            if t.handler.is_empty() {
                return Err(format!("topology `{}` has no handler", t.name));
            }
            let mut handlers = BTreeSet::from([t.handler.clone()]);
            for h in &t.hop_handlers {
                if !valid_name(h) {
                    return Err(format!(
                        "topology `{}`: hop handler name `{h}` is invalid",
                        t.name
                    ));
                }
                if !handlers.insert(h.clone()) {
                    return Err(format!(
                        "topology `{}`: handler `{h}` is declared twice",
                        t.name
                    ));
                }
            }
            topologies.push(Topology {
                kind,
                name: t.name.clone(),
                depots: t.depots.clone(),
                handler: t.handler.clone(),
                hop_handlers: t.hop_handlers.clone(),
            });
        }
        let mut queries = BTreeSet::new();
        for q in &self.queries {
            check("query", q, &mut queries)?;
        }
        Ok(Validated {
            depots,
            catalog,
            topologies,
            queries,
        })
    }

    /// Whether `new`, a new build of this module, can take over its data: every depot kept
    /// with its partitioner, every PState kept with a schema that reads what is stored, every
    /// topology kept of the same kind. New declarations are welcome; queries and topologies'
    /// handlers may change freely. The refusal names the declaration and the change.
    pub fn check_update(&self, new: &Definition) -> Result<(), String> {
        for d in &self.depots {
            match new.depots.iter().find(|n| n.name == d.name) {
                None => {
                    return Err(format!(
                        "depot `{}` is removed: its records would be orphaned (DELETE the module to drop its data)",
                        d.name
                    ))
                }
                Some(n) if n.partitioner != d.partitioner => {
                    return Err(format!(
                        "depot `{}`: the partitioner changes from {} to {}, which would re-route keys away from their stored data",
                        d.name,
                        d.partitioner.describe(),
                        n.partitioner.describe()
                    ))
                }
                Some(n) if n.tick_interval_ms.is_some() != d.tick_interval_ms.is_some() => {
                    return Err(format!(
                        "depot `{}` changes between a tick depot and an appended one; its records would mix both (give the new one another name)",
                        d.name
                    ))
                }
                Some(_) => {}
            }
        }
        for p in &self.pstates {
            let Some(n) = new.pstates.iter().find(|n| n.name == p.name) else {
                return Err(format!(
                    "PState `{}` is removed: its data would be orphaned (DELETE the module to drop its data)",
                    p.name
                ));
            };
            if n.global != p.global {
                let (from, to) = if p.global {
                    ("global", "partitioned")
                } else {
                    ("partitioned", "global")
                };
                return Err(format!(
                    "PState `{}` changes from {from} to {to}: its stored entries would be on the wrong partitions (give the new one another name)",
                    p.name
                ));
            }
            let (old, new_schema) = match (Schema::parse(&p.schema), Schema::parse(&n.schema)) {
                (Ok(o), Ok(n)) => (o, n),
                (_, Err(e)) => return Err(format!("PState `{}`: {e}", p.name)),
                (Err(e), _) => return Err(format!("PState `{}` (deployed): {e}", p.name)),
            };
            if n.migrate && old != new_schema {
                // The stored values are rewritten by `migrate`; they must be whole values.
                if old.has_subindexed() {
                    return Err(format!(
                        "PState `{}`: the deployed schema `{old}` has a subindexed collection, whose values cannot be migrated",
                        p.name
                    ));
                }
                continue;
            }
            old.can_become(&new_schema).map_err(|why| {
                format!(
                    "PState `{}`: the schema change `{old}` -> `{new_schema}` cannot read existing data ({why}); declare a migration for it to rewrite the stored values",
                    p.name
                )
            })?;
        }
        let kinds = |d: &Definition| -> BTreeMap<String, &'static str> {
            d.stream_topologies
                .iter()
                .map(|t| (t.name.clone(), "stream"))
                .chain(
                    d.microbatch_topologies
                        .iter()
                        .map(|t| (t.name.clone(), "microbatch")),
                )
                .collect()
        };
        let new_kinds = kinds(new);
        for (name, kind) in kinds(self) {
            if let Some(k) = new_kinds.get(&name) {
                if *k != kind {
                    return Err(format!(
                        "topology `{name}` changes from a {kind} to a {k} topology; their progress is recorded differently (give the new one another name)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The JSON shape `describe` shows.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "depots": self.depots.iter().map(|d| {
                let mut v = serde_json::json!({"name": d.name, "partitioner": d.partitioner.describe()});
                if let Some(ms) = d.tick_interval_ms {
                    v["tick_interval_ms"] = ms.into();
                }
                if !d.retention.is_unbounded() {
                    v["retention"] = d.retention.describe();
                }
                v
            }).collect::<Vec<_>>(),
            "pstates": self.pstates.iter().map(|p| {
                let mut v = serde_json::json!({
                    "name": p.name, "schema": Schema::parse(&p.schema).map(|s| s.to_string()).unwrap_or_else(|_| p.schema.clone())});
                if p.global {
                    v["global"] = true.into();
                    v["partition"] = GLOBAL_PARTITION.into();
                }
                if p.migrate {
                    v["migrate"] = true.into();
                }
                v
            }).collect::<Vec<_>>(),
            "topologies": self.stream_topologies.iter().map(|t| ("stream", t))
                .chain(self.microbatch_topologies.iter().map(|t| ("microbatch", t)))
                .map(|(kind, t)| serde_json::json!({
                "name": t.name, "kind": kind, "depots": t.depots, "handler": t.handler, "hop_handlers": t.hop_handlers})).collect::<Vec<_>>(),
            "queries": self.queries,
        })
    }
}

fn topology_decl(t: wit::StreamTopologyDef) -> TopologyDecl {
    TopologyDecl {
        name: t.name,
        depots: t.depots,
        handler: t.handler,
        hop_handlers: t.hop_handlers,
    }
}

impl Definition {
    /// The declarations a module's `define` and `define-extensions` returned (not yet
    /// validated). An extension naming an undeclared depot or PState is an error.
    pub fn from_wit(
        def: wit::ModuleDefinition,
        ext: wit::ExtensionsDef,
    ) -> Result<Definition, String> {
        let depot_names: BTreeSet<&str> = def.depots.iter().map(|d| d.name.as_str()).collect();
        let pstate_names: BTreeSet<&str> = def.pstates.iter().map(|p| p.name.as_str()).collect();
        let mut ticks = BTreeMap::new();
        for t in &ext.ticks {
            if !depot_names.contains(t.depot.as_str()) {
                return Err(format!("tick depot `{}` is not a declared depot", t.depot));
            }
            if ticks.insert(t.depot.clone(), t.interval_ms).is_some() {
                return Err(format!("tick depot `{}` is declared twice", t.depot));
            }
        }
        let mut retention = BTreeMap::new();
        for r in &ext.retention {
            if !depot_names.contains(r.depot.as_str()) {
                return Err(format!(
                    "retention for `{}`, which is not a declared depot",
                    r.depot
                ));
            }
            let bound = Retention {
                max_records: r.max_records,
                max_age_ms: r.max_age_ms,
            };
            if retention.insert(r.depot.clone(), bound).is_some() {
                return Err(format!(
                    "retention for depot `{}` is declared twice",
                    r.depot
                ));
            }
        }
        for p in ext.global_pstates.iter().chain(&ext.migrations) {
            if !pstate_names.contains(p.as_str()) {
                return Err(format!("`{p}` is not a declared PState"));
            }
        }
        Ok(Definition {
            depots: def
                .depots
                .into_iter()
                .map(|d| DepotDecl {
                    tick_interval_ms: ticks.get(&d.name).copied(),
                    retention: retention.get(&d.name).copied().unwrap_or_default(),
                    name: d.name,
                    partitioner: match d.partitioner {
                        wit::Partitioner::Hash(fields) => Partitioner::Hash(fields),
                        wit::Partitioner::Random => Partitioner::Random,
                        wit::Partitioner::Direct => Partitioner::Direct,
                    },
                })
                .collect(),
            pstates: def
                .pstates
                .into_iter()
                .map(|p| PStateDecl {
                    global: ext.global_pstates.contains(&p.name),
                    migrate: ext.migrations.contains(&p.name),
                    name: p.name,
                    schema: p.schema,
                })
                .collect(),
            stream_topologies: def
                .stream_topologies
                .into_iter()
                .map(topology_decl)
                .collect(),
            microbatch_topologies: def
                .microbatch_topologies
                .into_iter()
                .map(topology_decl)
                .collect(),
            partitions_hint: def.partitions_hint,
            queries: def.queries,
        })
    }
}
