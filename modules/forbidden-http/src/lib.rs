//! A module that imports `wasi:http` (what StarlingMonkey-based JavaScript builds carry by
//! default), which Sluice does not link: deploying it must be refused, naming the import and
//! how to build without it, before any compiling.

use sluice_sdk::{Ctx, Definition, Module, Partitioner, Result, Schema};

mod http {
    // Only the import's name matters: the host refuses it by name, in the binary.
    wit_bindgen::generate!({
        inline: "
            package wasi:http@0.3.0;
            interface outgoing-handler { handle: func(url: string) -> u32; }
            world fetcher { import outgoing-handler; }
        ",
        world: "fetcher",
    });
}

struct ForbiddenHttp;

impl Module for ForbiddenHttp {
    fn define(m: &mut Definition) {
        m.depot("urls", Partitioner::Random);
        m.pstate("status", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("fetch").reads("urls").handler(fetch);
    }
}

fn fetch(_ctx: &Ctx, url: String) -> Result<()> {
    http::wasi::http::outgoing_handler::handle(&url);
    Ok(())
}

sluice_sdk::export_module!(ForbiddenHttp);
