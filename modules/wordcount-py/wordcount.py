"""Word count, in Python: the `wordcount` conformance module (docs/conformance.md)."""

from dataclasses import dataclass

from sluice import Module, Partitioner, Path, Schema, Target

m = Module()
m.depot("words", Partitioner.hash("word"))
m.depot("sentences", Partitioner.random())
m.pstate("counts", Schema.map(Schema.string(), Schema.int()))


@dataclass
class Word:
    word: str


wordcount = m.stream_topology("wordcount", reads="words")


@wordcount.handler
def count(ctx, record: Word):
    counts = ctx.pstate("counts")
    key = Path.key(record.word)
    counts.increment(key, 1)
    return counts.get(key)  # the ack-return value: the new count


@dataclass
class Sentence:
    text: str


sentences = m.stream_topology("sentences", reads="sentences")


@sentences.handler
def split(ctx, record: Sentence):
    for word in record.text.split():
        word = word.lower()
        ctx.hop(Target.key(word), "count-word", word)  # to the word's partition


@sentences.hop_handler("count-word")
def count_word(ctx, word: str):
    ctx.pstate("counts").increment(Path.key(word), 1)


@dataclass
class TopArgs:
    n: int = 10


@m.query("top-words")
def top_words(q, args: TopArgs):
    # Every partition's [word, count] entries, read in parallel by the host.
    entries = [e for part in q.pstate("counts").select_all(Path().all()) for e in part]
    entries.sort(key=lambda e: (-e[1], e[0]))
    return [{"word": w, "count": c} for w, c in entries[: args.n]]


Guest = m.export()  # what componentize-py exports as `sluice:module/guest`
