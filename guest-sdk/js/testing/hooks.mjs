// Node module hooks that resolve the component's host import (`sluice:module/host@0.2.0`) to
// the in-process stand-in ./fake-host.js, so the SDK and modules built on it load in Node.
// Use: import { register } from "node:module"; register("<this file>", import.meta.url);
// then import the SDK (or a module) dynamically.
export async function resolve(specifier, context, next) {
  if (specifier.startsWith("sluice:module/host")) {
    return { url: new URL("./fake-host.js", import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
