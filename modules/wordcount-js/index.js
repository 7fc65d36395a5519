// Word count: the `wordcount` conformance module (docs/conformance.md), in JavaScript.
import { Module, Partitioner, Path, Schema, Target } from "../../guest-sdk/js/src/index.js";

const m = new Module();
m.depot("words", Partitioner.hash("word"));
m.depot("sentences", Partitioner.random());
m.pstate("counts", Schema.map(Schema.string(), Schema.int()));
m.streamTopology("wordcount").reads("words").handler(count, { word: Schema.string() });
m.streamTopology("sentences")
  .reads("sentences")
  .handler(split, { text: Schema.string() })
  .hopHandler("count-word", countWord, Schema.string());
m.query("top-words", topWords, { n: Schema.optional(Schema.int()) });
export const guest = m.guest;

// {"word": "apple"}: count it where the word lives; answer the new count (the ack-return value).
function count(ctx, { word }) {
  const counts = ctx.pstate("counts");
  const at = Path.key(word);
  counts.increment(at, 1);
  return counts.get(at);
}

// {"text": "the cat and the hat"}: hop to each word's partition, which counts it there.
function split(ctx, { text }) {
  for (const word of text.toLowerCase().split(/\s+/)) {
    if (word) ctx.hop(Target.key(word), "count-word", word);
  }
}

function countWord(ctx, word) {
  ctx.pstate("counts").increment(Path.key(word), 1);
}

// {"n": 3}: the n most frequent words of all partitions, highest count first, ties by word.
function topWords(q, { n = 10 }) {
  return q
    .pstate("counts")
    .selectAll(Path.all()) // one list of [word, count] entries per partition
    .flat()
    .sort(([w1, c1], [w2, c2]) => c2 - c1 || (w1 < w2 ? -1 : w1 > w2 ? 1 : 0))
    .slice(0, n)
    .map(([word, count]) => ({ word, count }));
}
