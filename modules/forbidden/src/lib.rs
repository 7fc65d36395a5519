//! A module that reads the filesystem. Its `wasi:filesystem` import is linked without
//! authority (no preopened directory): it deploys, and every read fails inside the guest; the
//! error is the handler's ack-return value.

use serde::Deserialize;
use sluice_sdk::{AckReturn, Ctx, Definition, Module, Partitioner, Result, Schema};

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

fn read(_ctx: &Ctx, r: Any) -> Result<AckReturn<String>> {
    Ok(AckReturn(match std::fs::read_to_string(&r.path) {
        Ok(s) => format!("read {} bytes", s.len()),
        Err(e) => format!("error: {e}"),
    }))
}

sluice_sdk::export_module!(Forbidden);
