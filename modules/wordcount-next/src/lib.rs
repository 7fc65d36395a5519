//! A new build of `wordcount`, for module-update tests: the same depots, PStates and
//! topologies (so it can take over a deployed `wordcount`'s data), plus a new PState `lengths`
//! (word → its length) kept by a new topology `lengths` — which, being new, starts from the
//! beginning of the `words` depot and so also covers words appended before the update — and a
//! new query `total` (the sum of all counts).

use serde::Deserialize;
use sluice_sdk::{
    AckReturn, Ctx, Definition, HopTarget, Module, Partitioner, Path, QueryCtx, Result, Schema,
};

#[derive(Deserialize)]
struct Word {
    word: String,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
}

#[derive(Deserialize)]
struct NoArgs {}

struct WordcountNext;

impl Module for WordcountNext {
    fn define(m: &mut Definition) {
        m.depot("words", Partitioner::hash("word"));
        m.depot("sentences", Partitioner::Random);
        m.pstate("counts", Schema::map(Schema::string(), Schema::int()));
        m.pstate("lengths", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("wordcount").reads("words").handler(count);
        m.stream_topology("sentences")
            .reads("sentences")
            .handler(split)
            .hop_handler("count-word", count_word);
        m.stream_topology("lengths").reads("words").handler(length);
        m.query("total", total);
    }
}

fn count(ctx: &Ctx, record: Word) -> Result<AckReturn<i64>> {
    let counts = ctx.pstate("counts");
    let path = Path::key(&record.word);
    counts.increment(&path, 1)?;
    Ok(AckReturn(counts.get(&path)?.unwrap_or(0)))
}

fn split(ctx: &Ctx, s: Sentence) -> Result<()> {
    for word in s.text.split_whitespace() {
        let word = word.to_lowercase();
        ctx.hop(HopTarget::Key(&word), "count-word", &word)?;
    }
    Ok(())
}

fn count_word(ctx: &Ctx, word: String) -> Result<()> {
    ctx.pstate("counts").increment(&Path::key(&word), 1)
}

fn length(ctx: &Ctx, record: Word) -> Result<()> {
    ctx.pstate("lengths").set(
        &Path::key(&record.word),
        &(record.word.chars().count() as i64),
    )
}

fn total(q: &QueryCtx, _: NoArgs) -> Result<i64> {
    Ok(q.pstate("counts")
        .select_all::<i64>(&Path::new().map_vals())?
        .into_iter()
        .flatten()
        .sum())
}

sluice_sdk::export_module!(WordcountNext);
