// Loaded with `node --import` before jco. jco 1.35 reads WIT files through tools compiled to
// WebAssembly (wasm-tools for a bundled — TypeScript or --bundle — build; StarlingMonkey's
// splicer for the default backend) running on @bytecodealliance/preview2-shim, whose copies
// under node_modules each start with no preopened directory, so the read fails ("failed to
// get path metadata", "reading file ...: No such file or directory"). Preopen the host's
// root in every copy.
import { readdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const nodeModules = fileURLToPath(new URL("../node_modules", import.meta.url));

function* shims(dir, depth = 0) {
  const scoped = join(dir, "@bytecodealliance", "preview2-shim");
  if (existsSync(join(scoped, "package.json"))) yield scoped;
  if (depth > 4) return;
  for (const scope of readdirSync(dir, { withFileTypes: true })) {
    if (!scope.isDirectory()) continue;
    const pkgs = scope.name.startsWith("@") ? readdirSync(join(dir, scope.name)).map((n) => join(dir, scope.name, n)) : [join(dir, scope.name)];
    for (const p of pkgs) {
      const nested = join(p, "node_modules");
      if (existsSync(nested)) yield* shims(nested, depth + 1);
    }
  }
}

for (const shim of new Set(shims(nodeModules))) {
  const fs = await import(pathToFileURL(join(shim, "dist/nodejs/filesystem.js")).href);
  fs._setPreopens({ "/": "/" });
}
