import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

// The README's example is the wordcount module, byte for byte: building the modules builds it.
test("the README's example is modules/wordcount-js/index.js", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const source = readFileSync(new URL("../../../modules/wordcount-js/index.js", import.meta.url), "utf8");
  const m = readme.match(/<!-- wordcount-js:begin -->\n```js\n([\s\S]*?)```\n<!-- wordcount-js:end -->/);
  assert.ok(m, "the README has the wordcount-js block");
  assert.equal(m[1], source);
});
