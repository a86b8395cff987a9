// Signalbox's edge worker for fetch-handler runtimes (Cloudflare Workers / workerd, Deno, …):
// the wasm-bindgen build of the request pipeline (`EdgeWorker`, edge-worker/src/js.rs) decides;
// this module only does what the runtime must do itself — the score cache's and origin's
// fetches (with AbortController timeouts), reading a verify body, building the Response — and
// guards every call into wasm: a trap drops the instance (wasm-bindgen's reset function) and
// the request passes to origin or is refused, as the bundle's cache.on_unavailable says.
// Between requests the isolate keeps its link to the score cache: the bundle poll, the
// decision stream and the rate buckets' counts run in the background of the requests that find
// them due (`ctx.waitUntil` where the runtime has it).

/** Creates the handler. `glue` is the wasm-bindgen module (`--target web` output),
 * `wasmModule` the compiled `WebAssembly.Module`, `variables(env)` returns the worker's
 * settings (an object of strings: SIGNALBOX_CONFIG, SIGNALBOX_ORIGIN_URL, …). */
export function createSignalbox(glue, wasmModule, variables) {
  let worker = null;
  // The bundle's choice for a request the worker cannot decide; fail-closed until one loaded.
  let failsOpen = false;
  // Origin's base URL, kept for a request that passes after a trap.
  let originUrl = null;

  function instance(env) {
    if (worker !== null) return worker;
    glue.initSync({ module: wasmModule });
    const w = new glue.EdgeWorker(JSON.stringify(variables(env)), Date.now());
    for (const [level, line] of JSON.parse(w.load_logs())) log(level, line);
    failsOpen = w.fails_open();
    originUrl = w.origin_url();
    worker = w;
    return w;
  }

  function dropInstance() {
    worker = null;
    // wasm-bindgen's `--experimental-reset-state-function`: a fresh instance on next use.
    if (typeof glue.__wbg_reset_state === "function") glue.__wbg_reset_state();
  }

  // The score cache's bundle poll and decision stream, when due: outside the request.
  function link(w, ctx) {
    let calls;
    try {
      calls = JSON.parse(w.link_calls(Date.now()));
    } catch (e) {
      log("warn", `signalbox: the worker failed (${e && e.message ? e.message : e})`);
      dropInstance();
      return;
    }
    if (calls.length === 0) return;
    const work = Promise.all(calls.map(async (call) => {
      const answer = await linkFetch(call);
      // The instance was reset meanwhile: its successor polls again.
      if (worker !== w) return;
      try {
        emit(JSON.parse(w.link_answer(call.kind, answer.status, answer.etag, answer.body, Date.now())));
      } catch (e) {
        log("warn", `signalbox: the worker failed (${e && e.message ? e.message : e})`);
        dropInstance();
      }
    }));
    if (ctx && typeof ctx.waitUntil === "function") ctx.waitUntil(work);
    else work.catch(() => {});
  }

  // `clientAddress`: the peer's address when the runtime gives it apart (Deno's remoteAddr);
  // `ctx`: the runtime's execution context (Workers' `waitUntil`), if any.
  return async function handle(request, env, clientAddress, ctx) {
    let w;
    try {
      w = instance(env);
    } catch (e) {
      dropInstance();
      log("warn", `signalbox: not serving: ${e && e.message ? e.message : e}`);
      return text(503, "signalbox: not configured\n");
    }
    link(w, ctx);
    const url = new URL(request.url);
    const headers = [
      [":method", request.method],
      [":path", url.pathname + url.search],
      [":authority", url.host],
      [":scheme", url.protocol.replace(/:$/, "")],
    ];
    for (const [name, value] of request.headers) headers.push([name, value]);

    let plan;
    let bodyTaken = null;
    try {
      plan = JSON.parse(w.start(JSON.stringify(headers), clientAddress ?? undefined, Date.now()));
      while (plan.action === "lookup" || plan.action === "read_body") {
        emit(plan.logs);
        if (plan.action === "lookup") {
          const answer = await lookup(plan);
          plan = JSON.parse(w.resume_lookup(plan.id, answer.status, answer.body, Date.now()));
        } else {
          const read = await readBody(request, plan.limit);
          bodyTaken = read.body;
          plan = JSON.parse(w.resume_body(plan.id, read.body, read.tooLarge, Date.now()));
        }
      }
    } catch (e) {
      // A trap (or a bug in this module): never an uncaught exception (Cloudflare's 1101).
      log("warn", `signalbox: the worker failed (${e && e.message ? e.message : e}); ${failsOpen ? "passing" : "refusing"} the request`);
      dropInstance();
      if (!failsOpen) return text(503, "signalbox: unavailable\n");
      plan = { action: "forward", set: [], strip: ["host"], response_header: null, logs: [], unscored: true };
    }
    emit(plan.logs);
    if (plan.action === "respond") {
      const out = new Headers(plan.headers);
      if (plan.response_header) out.set(plan.response_header[0], plan.response_header[1]);
      return new Response(plan.body, { status: plan.status, headers: out });
    }
    return forward(request, plan, bodyTaken, url);
  };

  async function lookup(plan) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), plan.timeout_ms);
    try {
      const r = await fetch(plan.url, { headers: plan.headers, signal: abort.signal });
      const body = new Uint8Array(await r.arrayBuffer());
      return { status: r.status, body };
    } catch {
      return { status: 0, body: new Uint8Array(0) };
    } finally {
      clearTimeout(timer);
    }
  }

  async function linkFetch(call) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), call.timeout_ms);
    try {
      const init = { method: call.method, headers: call.headers, signal: abort.signal };
      if (call.body !== null && call.body !== undefined) init.body = call.body;
      const r = await fetch(call.url, init);
      const body = new Uint8Array(await r.arrayBuffer());
      return { status: r.status, etag: r.headers.get("etag") || "", body };
    } catch {
      return { status: 0, etag: "", body: new Uint8Array(0) };
    } finally {
      clearTimeout(timer);
    }
  }

  async function forward(request, plan, bodyTaken, url) {
    const strip = new Set(plan.strip.map((n) => n.toLowerCase()));
    for (const [name] of plan.set) strip.add(name.toLowerCase());
    // Headers named in `connection` are hop-by-hop too.
    for (const token of (request.headers.get("connection") || "").split(",")) {
      if (token.trim()) strip.add(token.trim().toLowerCase());
    }
    const headers = new Headers();
    for (const [name, value] of request.headers) {
      const lower = name.toLowerCase();
      if (strip.has(lower)) continue;
      // Unscored (after a trap): no client-sent x-signalbox-* header may reach origin either.
      if (plan.unscored && lower.startsWith("x-signalbox-")) continue;
      headers.append(name, value);
    }
    for (const [name, value] of plan.set) headers.set(name, value);
    const target = originUrl + url.pathname + url.search;
    const init = { method: request.method, headers, redirect: "manual" };
    if (bodyTaken !== null) init.body = bodyTaken;
    else if (request.body !== null && request.method !== "GET" && request.method !== "HEAD") init.body = request.body;
    let answer;
    try {
      answer = await fetch(target, init);
    } catch (e) {
      log("warn", `signalbox: origin failed: ${e && e.message ? e.message : e}`);
      return text(502, "origin unavailable\n");
    }
    const out = new Headers();
    for (const [name, value] of answer.headers) {
      const lower = name.toLowerCase();
      if (lower.startsWith("x-signalbox-") || HOP_BY_HOP.has(lower)) continue;
      out.append(name, value);
    }
    if (plan.response_header) out.set(plan.response_header[0], plan.response_header[1]);
    return new Response(answer.body, { status: answer.status, statusText: answer.statusText, headers: out });
  }
}

const HOP_BY_HOP = new Set([
  "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
  "te", "trailer", "transfer-encoding", "upgrade",
]);

async function readBody(request, limit) {
  const declared = Number(request.headers.get("content-length") || "0");
  if (declared > limit) return { body: new Uint8Array(0), tooLarge: true };
  const bytes = new Uint8Array(await request.arrayBuffer());
  if (bytes.length > limit) return { body: new Uint8Array(0), tooLarge: true };
  return { body: bytes, tooLarge: false };
}

function text(status, body) {
  return new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8" } });
}

function emit(lines) {
  for (const [level, line] of lines || []) log(level, line);
}

function log(level, line) {
  if (level === "warn") console.warn(line);
  else console.log(line);
}
