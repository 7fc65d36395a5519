//! Test fixture for PState migrations, version 3 of `profiles`: `profiles-next` without its
//! migration (same schema), which may replace it once the migration is done, and is refused
//! while it runs.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, Depot, Module, PStateDef, Partitioner, Result};

#[derive(Deserialize)]
struct Named {
    key: String,
    name: String,
}

const NAMES: Depot<Named> = Depot::new("names");
const PROFILES: PStateDef<String, BTreeMap<String, String>> = PStateDef::new("profiles");

struct ProfilesFinal;

impl Module for ProfilesFinal {
    fn define(m: &mut Definition) {
        m.depot(NAMES, Partitioner::hash("key"));
        m.pstate_of(PROFILES);
        m.stream_topology("profile").on(NAMES, profile);
    }
}

fn split(name: &str) -> BTreeMap<String, String> {
    let (first, last) = name.split_once(' ').unwrap_or((name, ""));
    BTreeMap::from([
        ("first".to_string(), first.to_string()),
        ("last".to_string(), last.to_string()),
        ("v".to_string(), "2".to_string()),
    ])
}

fn profile(ctx: &Ctx, n: Named) -> Result<()> {
    ctx.pstate(PROFILES).set(&n.key, &split(&n.name))
}

sluice_sdk::export_module!(ProfilesFinal);
