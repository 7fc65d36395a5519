//! Word count: depot `words` (records `{"word": "apple"}`, hash-partitioned by `word`),
//! PState `counts` (word → count), and a stream topology that increments `counts[word]` and
//! returns the new count as its ack-return value.

use serde::Deserialize;
use sluice_sdk::{AckReturn, Ctx, Definition, Module, Partitioner, Path, Result, Schema};

#[derive(Deserialize)]
struct Word {
    word: String,
}

struct Wordcount;

impl Module for Wordcount {
    fn define(m: &mut Definition) {
        m.depot("words", Partitioner::hash("word"));
        m.pstate("counts", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("wordcount").reads("words").handler(count);
    }
}

fn count(ctx: &Ctx, record: Word) -> Result<AckReturn<i64>> {
    let counts = ctx.pstate("counts");
    let path = Path::key(&record.word);
    counts.increment(&path, 1)?;
    Ok(AckReturn(counts.get(&path)?.unwrap_or(0)))
}

sluice_sdk::export_module!(Wordcount);
