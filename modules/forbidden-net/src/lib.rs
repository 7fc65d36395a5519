//! A module that opens a TCP connection. Its `wasi:sockets` import is linked without authority
//! (TCP, UDP and name lookup off): it deploys, and every connect fails inside the guest before
//! a socket exists; the error is the handler's ack-return value.

use serde::Deserialize;
use sluice_sdk::{AckReturn, Ctx, Definition, Module, Partitioner, Result, Schema};

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

fn connect(_ctx: &Ctx, t: Target) -> Result<AckReturn<String>> {
    Ok(AckReturn(match std::net::TcpStream::connect(&t.addr) {
        Ok(_) => "connected".to_string(),
        Err(e) => format!("error: {e}"),
    }))
}

sluice_sdk::export_module!(ForbiddenNet);
