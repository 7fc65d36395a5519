//! Test fixture for PState migrations, version 2 of `profiles`: `profiles[k]` becomes a map
//! `{"first": …, "last": …, "v": 2}` (the schema `map<string, map<string, string>>`), and a
//! migration splits each stored name at its first space. The same depot records keep coming:
//! the topology writes the new shape. A migration applied twice would fail (a map is not the
//! string `migrate` takes), so every value reading `{"v": "2", …}` was migrated once.

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

struct ProfilesNext;

impl Module for ProfilesNext {
    fn define(m: &mut Definition) {
        m.depot(NAMES, Partitioner::hash("key"));
        m.pstate_of(PROFILES);
        m.migrate(PROFILES, |_key: String, name: String| Ok(split(&name)));
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

sluice_sdk::export_module!(ProfilesNext);
