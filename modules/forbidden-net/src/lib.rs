//! A module that opens a TCP connection, which Sluice forbids: deploying it must be refused,
//! naming the `wasi:sockets` import.

use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, Error, Module, Partitioner, Result, Schema};

#[derive(Deserialize)]
struct Target {
    addr: String,
}

struct ForbiddenNet;

impl Module for ForbiddenNet {
    fn define(m: &mut Definition) {
        m.depot("targets", Partitioner::Random);
        m.pstate("seen", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("connect")
            .reads("targets")
            .handler(connect);
    }
}

fn connect(_ctx: &Ctx, t: Target) -> Result<()> {
    std::net::TcpStream::connect(&t.addr).map_err(|e| Error::new("io", e.to_string()))?;
    Ok(())
}

sluice_sdk::export_module!(ForbiddenNet);
