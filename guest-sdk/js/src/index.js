// Sluice guest SDK for JavaScript: write Sluice modules as ES modules, build them into
// WebAssembly components with jco (QuickJS backend). See README.md.

import "./runtime.js";

export { Module, Topology, Partitioner, Schema, Ctx, QueryCtx, PState, ReadPState, log, RECORD_HANDLER } from "./module.js";
export { Path, Target } from "./path.js";
export { SluiceError } from "./error.js";
export { encode, decode, Tagged, Simple } from "./cbor.js";
export { partitionOfKey } from "./partition.js";
