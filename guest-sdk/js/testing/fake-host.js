// A stand-in for the `sluice:module/host` import, for tests in Node: every call goes to the
// implementation installed with setHost (by default: each call is recorded in `calls`,
// selects return nothing). A host error is thrown the way the component bindings throw it:
// an Error whose `payload` is the WIT error record ({code, message}).

export const calls = [];

const recording = {
  select: () => [],
  selectFrom: () => [[]],
  transform: () => undefined,
  hop: () => undefined,
  log: () => undefined,
};

let impl = recording;

/** Install `h` (any subset of select/selectFrom/transform/hop/log); null restores the default. */
export function setHost(h) {
  impl = h ? { ...recording, ...h } : recording;
  calls.length = 0;
}

/** What the bindings throw for a host `err(e)`. */
export function hostError(code, message) {
  const e = new Error(`${code}: ${message}`);
  e.payload = { code, message };
  return e;
}

function call(name, args) {
  calls.push([name, ...args]);
  return impl[name](...args);
}

export function select(...args) {
  return call("select", args);
}
export function selectFrom(...args) {
  return call("selectFrom", args);
}
export function transform(...args) {
  return call("transform", args);
}
export function hop(...args) {
  return call("hop", args);
}
export function log(...args) {
  return call("log", args);
}
