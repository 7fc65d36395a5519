// A depot's handler takes the depot's record type.
use serde::Deserialize;
use sluice_sdk::{Ctx, Definition, Depot, Result};

#[derive(Deserialize)]
struct Word {
    word: String,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
}

const WORDS: Depot<Word> = Depot::new("words");

fn split(_: &Ctx, s: Sentence) -> Result<()> {
    let _ = s.text;
    Ok(())
}

fn define(m: &mut Definition) {
    m.stream_topology("wordcount").on(WORDS, split);
}

fn main() {
    let _ = define;
}
