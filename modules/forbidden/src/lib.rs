//! A module that reads the filesystem, which Sluice forbids: deploying it must be refused,
//! naming the `wasi:filesystem` import.

use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, Error, Module, Partitioner, Result, Schema};

#[derive(Deserialize)]
struct Any {
    path: String,
}

struct Forbidden;

impl Module for Forbidden {
    fn define(m: &mut Definition) {
        m.depot("paths", Partitioner::Random);
        m.pstate("files", Schema::map(Schema::string(), Schema::string()));
        m.stream_topology("read").reads("paths").handler(read);
    }
}

fn read(_ctx: &Ctx, r: Any) -> Result<()> {
    let s = std::fs::read_to_string(&r.path).map_err(|e| Error::new("io", e.to_string()))?;
    Err(Error::new("read", s))
}

sluice_sdk::export_module!(Forbidden);
