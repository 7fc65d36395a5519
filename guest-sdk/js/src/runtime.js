// The QuickJS runtime of a component has no `console` and no clock (the build stubs WASI,
// since the host forbids the filesystem imports the runtime's WASI layer needs). When the SDK
// finds no console, it installs one that writes into the host's log, and makes the clock's
// entry points fail with a clear permanent error instead of a trap (which the host would
// retry as transient).

import { log } from "./module.js";
import { SluiceError } from "./error.js";

function noClock() {
  throw new SluiceError(
    "no-clock",
    "a Sluice JavaScript module has no clock (Date.now() and new Date() are unavailable): put the time in the record",
  );
}

if (typeof globalThis.console === "undefined") {
  globalThis.console = {
    log: log.info,
    info: log.info,
    debug: log.debug,
    trace: log.trace,
    warn: log.warn,
    error: log.error,
  };
  const RealDate = globalThis.Date;
  class Date extends RealDate {
    constructor(...args) {
      if (args.length === 0) noClock();
      super(...args);
    }
    static now() {
      return noClock();
    }
  }
  globalThis.Date = Date;
}
