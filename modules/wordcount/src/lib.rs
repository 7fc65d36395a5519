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
    AckReturn, Ctx, Definition, Depot, Hop, HopTarget, Module, PStateDef, Partitioner, Path,
    QueryCtx, Result,
};

#[derive(Deserialize)]
struct Word {
    word: String,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
}

const WORDS: Depot<Word> = Depot::new("words");
const SENTENCES: Depot<Sentence> = Depot::new("sentences");
const COUNTS: PStateDef<String, i64> = PStateDef::new("counts");
const COUNT_WORD: Hop<String> = Hop::new("count-word");

struct Wordcount;

impl Module for Wordcount {
    fn define(m: &mut Definition) {
        m.depot(WORDS, Partitioner::hash("word"));
        m.depot(SENTENCES, Partitioner::Random);
        m.pstate_of(COUNTS);
        m.stream_topology("wordcount").on(WORDS, count);
        m.stream_topology("sentences")
            .on(SENTENCES, split)
            .hop_handler(COUNT_WORD, count_word);
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
        .pstate(COUNTS)
        .select_all::<(String, i64)>(&Path::new().all())?
        .into_iter()
        .flatten()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    all.truncate(args.n);
    Ok(all)
}

fn count(ctx: &Ctx, w: Word) -> Result<AckReturn<i64>> {
    let counts = ctx.pstate(COUNTS);
    counts.increment(&w.word, 1)?;
    Ok(AckReturn(counts.get(&w.word)?.unwrap_or(0)))
}

fn split(ctx: &Ctx, s: Sentence) -> Result<()> {
    for word in s.text.split_whitespace() {
        let word = word.to_lowercase();
        ctx.hop(HopTarget::Key(&word), COUNT_WORD, &word)?;
    }
    Ok(())
}

fn count_word(ctx: &Ctx, word: String) -> Result<()> {
    ctx.pstate(COUNTS).increment(&word, 1)
}

sluice_sdk::export_module!(Wordcount);
