// In a component the QuickJS runtime has no console and no clock; the SDK installs a console
// writing into the host's log and makes the clock fail with a clear permanent error.
import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

register("../testing/hooks.mjs", import.meta.url);
const saved = { console: globalThis.console, Date: globalThis.Date };
delete globalThis.console;
const sdk = await import("../src/index.js");
const host = await import("../testing/fake-host.js");
const shim = { console: globalThis.console, Date: globalThis.Date };
globalThis.console = saved.console;
globalThis.Date = saved.Date;

test("console writes into the host's log", () => {
  host.setHost({});
  shim.console.log("hello", 1, [2]);
  shim.console.error("bad");
  shim.console.warn("careful");
  assert.deepStrictEqual(host.calls, [
    ["log", "info", "hello 1 [2]"],
    ["log", "error", "bad"],
    ["log", "warn", "careful"],
  ]);
  host.setHost(null);
});

test("the clock fails with no-clock, a permanent error; explicit dates still work", () => {
  for (const f of [() => shim.Date.now(), () => new shim.Date()]) {
    assert.throws(f, (e) => e instanceof sdk.SluiceError && e.code === "no-clock");
  }
  const d = new shim.Date(0);
  assert.equal(d.toISOString(), "1970-01-01T00:00:00.000Z");
  assert.ok(d instanceof saved.Date);
  assert.equal(shim.Date.UTC(2020, 0, 1), saved.Date.UTC(2020, 0, 1));
  const m = new sdk.Module();
  m.streamTopology("t").handler(() => shim.Date.now());
  assert.throws(
    () => m.guest.handle("t", "on-record", sdk.encode(1), {}),
    (e) => e.code === "no-clock",
  );
});
