//! Test fixture for PState migrations, version 1: depot `names` (`{"key": "k", "name":
//! "Ada Lovelace"}`, hash by `key`); topology `profile` stores `profiles[k] = name` (a string).
//! Version 2 is `profiles-next`.

use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, Depot, Module, PStateDef, Partitioner, Result};

#[derive(Deserialize)]
struct Named {
    key: String,
    name: String,
}

const NAMES: Depot<Named> = Depot::new("names");
const PROFILES: PStateDef<String, String> = PStateDef::new("profiles");

struct Profiles;

impl Module for Profiles {
    fn define(m: &mut Definition) {
        m.depot(NAMES, Partitioner::hash("key"));
        m.pstate_of(PROFILES);
        m.stream_topology("profile").on(NAMES, profile);
    }
}

fn profile(ctx: &Ctx, n: Named) -> Result<()> {
    ctx.pstate(PROFILES).set(&n.key, &n.name)
}

sluice_sdk::export_module!(Profiles);
