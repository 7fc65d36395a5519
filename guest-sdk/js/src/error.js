// The error a handler or query returns to the host: a stable code and a message for people.

/**
 * Throw one from a handler or query to fail it with `code`. The host retries the codes
 * "trap", "deadline-exceeded", "memory-limit" and "instantiate"; every other code is
 * permanent (after the attempts, the record goes to the topology's dead letters with it).
 * A host call that the host refuses (e.g. "wrong-partition", "read-only") throws one
 * carrying the host's code.
 */
export class SluiceError extends Error {
  constructor(code, message) {
    super(message === undefined ? "" : String(message));
    this.name = "SluiceError";
    this.code = String(code);
  }
}

/** The WIT `error` record for anything a handler, query or the SDK threw. */
export function toWitError(e) {
  if (e instanceof SluiceError) return { code: e.code, message: e.message };
  return { code: "guest-exception", message: describe(e) };
}

/** `<ExceptionType>: <message>` (e.g. `TypeError: x is not a function`). */
export function describe(e) {
  if (e instanceof Error) {
    const ctor = e.constructor;
    const type = (ctor && ctor !== Error && ctor.name) || e.name || "Error";
    return `${type}: ${e.message}`;
  }
  if (e !== null && typeof e === "object") {
    const ctor = e.constructor;
    return `${(ctor && ctor.name) || "Object"}: ${safeString(e)}`;
  }
  return `${typeof e}: ${safeString(e)}`;
}

function safeString(v) {
  try {
    return String(v);
  } catch {
    return "(unprintable)";
  }
}
