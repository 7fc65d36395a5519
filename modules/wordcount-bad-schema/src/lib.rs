//! A build of `wordcount` whose PState `counts` changes from `map<string, int>` to
//! `map<string, string>`: an update to it must be refused, naming the PState and the change.

use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, Module, Partitioner, Path, Result, Schema};

#[derive(Deserialize)]
struct Word {
    word: String,
}

struct BadSchema;

impl Module for BadSchema {
    fn define(m: &mut Definition) {
        m.depot("words", Partitioner::hash("word"));
        m.depot("sentences", Partitioner::Random);
        m.pstate("counts", Schema::map(Schema::string(), Schema::string()));
        m.stream_topology("wordcount").reads("words").handler(count);
    }
}

fn count(ctx: &Ctx, record: Word) -> Result<()> {
    ctx.pstate("counts").set(&Path::key(&record.word), "many")
}

sluice_sdk::export_module!(BadSchema);
