// Deno (`deno serve`): the edge worker as a fetch handler. Settings come from the process
// environment (SIGNALBOX_*); SIGNALBOX_CONFIG_FILE names a file holding SIGNALBOX_CONFIG
// instead (an environment string is capped at 128 KiB on Linux, less than a bundle with its
// lists). Run with --allow-net --allow-env --allow-read.
import * as glue from "./pkg/signalbox_edge_worker.js";
import { createSignalbox } from "./signalbox.mjs";

const wasmModule = await WebAssembly.compile(
  await Deno.readFile(new URL("./pkg/signalbox_edge_worker_bg.wasm", import.meta.url)),
);
const variables = Object.fromEntries(
  Object.entries(Deno.env.toObject()).filter(([k]) => k.startsWith("SIGNALBOX_")),
);
if (variables.SIGNALBOX_CONFIG_FILE) {
  variables.SIGNALBOX_CONFIG = await Deno.readTextFile(variables.SIGNALBOX_CONFIG_FILE);
}
const handle = createSignalbox(glue, wasmModule, () => variables);

export default {
  // Deno gives the peer's address apart: it is the client address.
  fetch(request, info) {
    return handle(request, null, info?.remoteAddr?.hostname);
  },
};
