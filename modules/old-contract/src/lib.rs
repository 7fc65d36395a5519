//! A module built against another contract version (`sluice:module@0.1.0`, the first contract,
//! before queries, kept as it was): the host must refuse it at deploy, naming the version.

wit_bindgen::generate!({ path: "wit", world: "module" });

use exports::sluice::module::guest::Guest;
use sluice::module::types::{Error, ModuleDefinition, RecordCtx};

struct Old;

impl Guest for Old {
    fn define() -> ModuleDefinition {
        ModuleDefinition {
            depots: Vec::new(),
            pstates: Vec::new(),
            stream_topologies: Vec::new(),
            microbatch_topologies: Vec::new(),
            partitions_hint: None,
        }
    }

    fn handle(
        _t: String,
        _h: String,
        _input: Vec<u8>,
        _ctx: RecordCtx,
    ) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }
}

export!(Old);
