// Cloudflare Workers (and workerd, Miniflare): the edge worker as a module Worker. The .wasm
// import is a compiled WebAssembly.Module (wrangler's CompiledWasm rule; a `wasm` module in a
// workerd config). Settings come from the Worker's vars and secrets (SIGNALBOX_*).
import * as glue from "./pkg/signalbox_edge_worker.js";
import wasmModule from "./pkg/signalbox_edge_worker_bg.wasm";
import { createSignalbox } from "./signalbox.mjs";

const handle = createSignalbox(glue, wasmModule, (env) =>
  Object.fromEntries(
    Object.entries(env || {}).filter(([k, v]) => k.startsWith("SIGNALBOX_") && typeof v === "string"),
  ),
);

export default {
  fetch(request, env, ctx) {
    return handle(request, env, undefined, ctx);
  },
};
