// The JS module's guard around the real wasm-bindgen build (edge-worker/js/pkg), in Node: a
// trap inside a call drops the instance through wasm-bindgen's reset function, the request
// passes to origin unscored (fail-open bundle) or is refused with 503 (fail-closed bundle),
// and the next request is scored by a fresh instance. The trap is injected by making one call
// throw a WebAssembly.RuntimeError, as a panic (`unreachable`) would; everything else is the
// real build. Run by scripts/test: node --test edge-worker/js/test/
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { after, before, test } from 'node:test';

import * as realGlue from '../pkg/signalbox_edge_worker.js';
import { createSignalbox } from '../signalbox.mjs';

const wasmModule = new WebAssembly.Module(
  readFileSync(new URL('../pkg/signalbox_edge_worker_bg.wasm', import.meta.url)),
);
const SECRET = 'k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=';
const BUNDLE = { format_version: 1, revision: 1, min_engine_version: '0.1.0' };

let origin;
let originUrl;
const seen = [];

before(async () => {
  origin = http.createServer((req, res) => {
    seen.push(req.headers);
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('origin\n');
  });
  await new Promise((resolve) => origin.listen(0, '127.0.0.1', resolve));
  originUrl = `http://127.0.0.1:${origin.address().port}`;
});
after(() => origin.close());

/** The real glue, with `start` throwing a trap on the calls listed in `trapOn` (1-based) and
 *  the reset function counted. */
function glueWithTraps(trapOn) {
  let calls = 0;
  const counts = { resets: 0 };
  class EdgeWorker extends realGlue.EdgeWorker {
    start(...args) {
      calls += 1;
      if (trapOn.includes(calls)) throw new WebAssembly.RuntimeError('unreachable');
      return super.start(...args);
    }
  }
  const glue = {
    ...realGlue,
    EdgeWorker,
    __wbg_reset_state() {
      counts.resets += 1;
      realGlue.__wbg_reset_state();
    },
  };
  return { glue, counts };
}

function browserRequest(path) {
  return new Request(`http://shop.test${path}`, {
    headers: {
      'x-signalbox-decision': 'pass-forged',
      'user-agent': 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
      accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
      'accept-language': 'en-US,en;q=0.9',
      'x-forwarded-for': '81.62.10.4',
    },
  });
}

function variables(config) {
  return () => ({
    SIGNALBOX_CONFIG: JSON.stringify(config),
    SIGNALBOX_ORIGIN_URL: originUrl,
    SIGNALBOX_CACHE_URL: 'http://127.0.0.1:9',
    SIGNALBOX_SECRET: SECRET,
  });
}

test('a trap passes the request unscored on a fail-open bundle, then a fresh instance scores', async () => {
  const { glue, counts } = glueWithTraps([2]);
  const config = { bundle: BUNDLE, allow_unsigned: true, client_ip: { mode: 'x_forwarded_for' } };
  const handle = createSignalbox(glue, wasmModule, variables(config));

  seen.length = 0;
  const first = await handle(browserRequest('/a'), {});
  assert.equal(first.status, 200);
  assert.equal(seen.at(-1)['x-signalbox-decision'], 'pass', 'scored before the trap');

  const trapped = await handle(browserRequest('/b'), {});
  assert.equal(trapped.status, 200, 'fail-open: the trapped request still reaches origin');
  assert.equal(seen.at(-1)['x-signalbox-decision'], undefined, 'unscored: no annotation, and the forged one stripped');
  assert.equal(counts.resets, 1, 'the instance was reset');

  const after = await handle(browserRequest('/c'), {});
  assert.equal(after.status, 200);
  assert.equal(seen.at(-1)['x-signalbox-decision'], 'pass', 'a fresh instance scores again');
  assert.equal(seen.length, 3);
});

test('a trap refuses the request on a fail-closed bundle', async () => {
  const { glue, counts } = glueWithTraps([1]);
  const bundle = { ...BUNDLE, cache: { lookup: ['ip'], timeout_ms: 50, on_unavailable: 'fail_closed' } };
  const config = {
    bundle, allow_unsigned: true, client_ip: { mode: 'x_forwarded_for' },
    score_cache: { cluster: 'signalbox_cache' },
  };
  // The guard learns the bundle's choice when an instance loads; the first call traps.
  const handle = createSignalbox(glue, wasmModule, variables(config));
  seen.length = 0;
  const refused = await handle(browserRequest('/d'), {});
  assert.equal(refused.status, 503, 'fail-closed: refused');
  assert.equal(seen.length, 0, 'nothing reached origin');
  assert.equal(counts.resets, 1);
});

test('a configuration that does not load answers 503 and reaches nothing', async () => {
  const handle = createSignalbox(realGlue, wasmModule, () => ({ SIGNALBOX_ORIGIN_URL: originUrl }));
  seen.length = 0;
  const r = await handle(browserRequest('/e'), {});
  assert.equal(r.status, 503);
  assert.match(await r.text(), /not configured/);
  assert.equal(seen.length, 0);
});
