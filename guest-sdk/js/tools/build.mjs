#!/usr/bin/env node
// Builds a Sluice module written with this SDK into a WebAssembly component:
//   node guest-sdk/js/tools/build.mjs <entry.js|entry.ts> -o <out.wasm> [--root <dir>] [--wit <path>]
// `--root` (default: the deepest directory holding both the entry and this repository) is the
// module root: every file the entry imports (the SDK's sources included) must be under it. `--wit`
// defaults to <repository>/wit/sluice.wit. Needs `npm ci` in guest-sdk/js first.
//
// The build: jco componentize with the QuickJS backend (componentize-qjs), its synchronous
// runtime, and WASI stubbed (the host refuses the wasi:filesystem imports of the unstubbed
// runtime); a TypeScript entry is bundled (and its types stripped) by jco first.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, extname, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const sdk = resolve(here, "..");
const repo = resolve(sdk, "../..");

export const FLAGS = ["--backend", "quickjs", "--backend-qjs-disable-async", "--backend-qjs-stub-wasi"];

function usage(msg) {
  if (msg) console.error(`build: ${msg}`);
  console.error("usage: node guest-sdk/js/tools/build.mjs <entry.js|entry.ts> -o <out.wasm> [--root <dir>] [--wit <path>]");
  process.exit(2);
}

const args = process.argv.slice(2);
let entry;
let out;
let root;
let wit = resolve(repo, "wit/sluice.wit");
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "-o" || a === "--out") out = args[++i];
  else if (a === "--root") root = args[++i];
  else if (a === "--wit") wit = args[++i];
  else if (a === "-h" || a === "--help") usage();
  else if (a.startsWith("-")) usage(`unknown option ${a}`);
  else if (entry === undefined) entry = a;
  else usage(`unexpected argument ${a}`);
}
if (!entry || !out) usage();

// The deepest directory above both paths.
function commonAncestor(a, b) {
  const pa = a.split(sep);
  const pb = b.split(sep);
  let i = 0;
  while (i < pa.length && i < pb.length && pa[i] === pb[i]) i++;
  return pa.slice(0, i).join(sep) || sep;
}
root ??= commonAncestor(dirname(resolve(entry)), repo);

// Without this export the build succeeds and every deploy traps in `define`.
const source = readFileSync(resolve(entry), "utf8");
if (!/export\s+(const|let|var)\s+guest\b|export\s*\{[^}]*\bguest\b[^}]*\}/.test(source)) {
  usage(`${entry} does not export \`guest\`: end it with \`export const guest = m.guest;\` (the host calls the component's guest interface)`);
}

const jco = resolve(sdk, "node_modules/@bytecodealliance/jco/dist/jco.js");
const ts = [".ts", ".mts", ".cts"].includes(extname(entry));
const cmd = [
  "--import",
  resolve(here, "preopen.mjs"),
  jco,
  "componentize",
  // Absolute paths: jco resolves the entry again after changing into --cwd.
  resolve(entry),
  "--cwd",
  resolve(root),
  "--wit",
  resolve(wit),
  "--world-name",
  "module",
  ...FLAGS,
  ...(ts ? ["--bundle"] : []),
  "-o",
  resolve(out),
];
// jco's output is printed only when the build fails (a TypeScript build warns that the host
// import `sluice:module/host@0.2.0` is left external, which is what it must be).
const r = spawnSync(process.execPath, cmd, { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
if (r.error) throw r.error;
if (r.status !== 0) process.stderr.write(r.stdout + r.stderr);
process.exit(r.status ?? 1);
