//! Word count.
//!
//! - Depot `words` (records `{"word": "apple"}`, hash-partitioned by `word`) and topology
//!   `wordcount`: increments `counts[word]` where the word lives and answers the new count as
//!   its ack-return value.
//! - Depot `sentences` (records `{"text": "the cat and the hat"}`, random partitioner) and
//!   topology `sentences`: splits the text into words and hops to each word's partition to
//!   increment `counts` there; a `full` ack waits for every hop.
//! - Query `top-words` (`{"n": 3}`): the `n` most frequent words over all partitions,
//!   `[{"word": "the", "count": 5}, ...]`, highest count first (ties by word).

use serde::{Deserialize, Serialize};
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

struct Wordcount;

impl Module for Wordcount {
    fn define(m: &mut Definition) {
        m.depot("words", Partitioner::hash("word"));
        m.depot("sentences", Partitioner::Random);
        m.pstate("counts", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("wordcount").reads("words").handler(count);
        m.stream_topology("sentences")
            .reads("sentences")
            .handler(split)
            .hop_handler("count-word", count_word);
        m.query("top-words", top_words);
    }
}

#[derive(Deserialize)]
struct TopArgs {
    #[serde(default = "default_n")]
    n: usize,
}

fn default_n() -> usize {
    10
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct WordCount {
    pub word: String,
    pub count: i64,
}

fn top_words(q: &QueryCtx, args: TopArgs) -> Result<Vec<WordCount>> {
    // Every partition's entries, read in parallel by the host; each partition sorted, merged.
    let mut all: Vec<WordCount> = q
        .pstate("counts")
        .select_all::<(String, i64)>(&Path::new().all())?
        .into_iter()
        .flatten()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    all.truncate(args.n);
    Ok(all)
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

sluice_sdk::export_module!(Wordcount);
