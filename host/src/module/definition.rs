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
}

#[derive(Debug, Clone)]
pub struct PStateDecl {
    pub name: String,
    pub schema: String,
}

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
            if let Partitioner::Hash(fields) = &d.partitioner {
                if fields.is_empty() || fields.iter().any(|f| f.is_empty()) {
                    return Err(format!(
                        "depot `{}`: hash partitioner needs a key field",
                        d.name
                    ));
                }
            }
            depots.insert(
                d.name.clone(),
                Depot::new(d.name.clone(), d.partitioner.clone()),
            );
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
            catalog.schemas.insert(p.name.clone(), schema);
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
            let (old, new_schema) = match (Schema::parse(&p.schema), Schema::parse(&n.schema)) {
                (Ok(o), Ok(n)) => (o, n),
                (_, Err(e)) => return Err(format!("PState `{}`: {e}", p.name)),
                (Err(e), _) => return Err(format!("PState `{}` (deployed): {e}", p.name)),
            };
            old.can_become(&new_schema).map_err(|why| {
                format!(
                    "PState `{}`: the schema change `{old}` -> `{new_schema}` cannot read existing data ({why})",
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
            "depots": self.depots.iter().map(|d| serde_json::json!({
                "name": d.name, "partitioner": d.partitioner.describe()})).collect::<Vec<_>>(),
            "pstates": self.pstates.iter().map(|p| serde_json::json!({
                "name": p.name, "schema": Schema::parse(&p.schema).map(|s| s.to_string()).unwrap_or_else(|_| p.schema.clone())})).collect::<Vec<_>>(),
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
    /// The declarations a module's `define` returned (not yet validated).
    pub fn from_wit(def: wit::ModuleDefinition) -> Definition {
        Definition {
            depots: def
                .depots
                .into_iter()
                .map(|d| DepotDecl {
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
        }
    }
}
