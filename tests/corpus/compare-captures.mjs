// Holds the corpus's header model (headers.mjs) to what real browsers sent through Envoy in
// the browser suite (tests/browser/run writes target/browser/captures.jsonl): for every
// captured navigation, the model's headers for the same user agent, scheme and path must agree
// on what Signalbox reads — client hints, sec-fetch-*, accept, accept-encoding, and that
// accept-language is there; and Signalbox must have concluded `browser` with no User-Agent or
// header-coherence reason (x-signalbox-client / -reasons as origin saw them). Exits 1 on a
// disagreement.
//
//   node tests/corpus/compare-captures.mjs [target/browser/captures.jsonl]

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { browserHeaders } from './headers.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const file = path.resolve(root, process.argv[2] ?? 'target/browser/captures.jsonl');
const captures = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
if (captures.length === 0) {
  console.error(`${file}: no captured navigations`);
  process.exit(1);
}

const WATCHED = ['sec-ch-ua', 'sec-ch-ua-mobile', 'sec-ch-ua-platform', 'sec-fetch-site', 'sec-fetch-mode', 'sec-fetch-dest', 'accept-language'];
let compared = 0;
const problems = [];
const kinds = new Set();
for (const c of captures) {
  const ua = c.values['user-agent'] ?? '';
  const https = c.values['x-forwarded-proto'] === 'https';
  const model = Object.fromEntries(browserHeaders({ userAgent: ua, language: 'en-US' }, https, c.path.split('?')[0]));
  const browser = /Firefox\//.test(ua) ? 'firefox' : 'chromium';
  const where = `${browser} ${https ? 'https' : 'http'} ${c.protocol} ${c.path}`;
  kinds.add(`${browser} ${https ? 'https' : 'http'} ${c.protocol}`);
  for (const name of WATCHED) {
    if ((name in model) !== c.names.includes(name)) {
      problems.push(`${where}: ${name} ${c.names.includes(name) ? 'sent by the browser, missing from the model' : 'in the model, not sent by the browser'}`);
    }
  }
  for (const name of ['accept-encoding', 'accept']) {
    const real = c.values[name] ?? '';
    // The model's Chrome `accept` predates image/jxl, which this Chromium build lists: compare
    // what Signalbox reads of it (a navigation accepts text/html first).
    const same = name === 'accept' ? real.startsWith('text/html') && (model.accept ?? '').startsWith('text/html') : real === model[name];
    if (!same) problems.push(`${where}: ${name} real ${JSON.stringify(real)}, model ${JSON.stringify(model[name])}`);
  }
  // What Signalbox concluded about the real browser on the same request: a browser, with no
  // User-Agent or header-coherence reason (the signals scripts that wear a browser's user agent
  // trip must never fire on the browser itself).
  const client = c.values['x-signalbox-client'];
  const reasons = (c.values['x-signalbox-reasons'] ?? '').split(',').filter(Boolean);
  if (client !== 'browser') problems.push(`${where}: x-signalbox-client ${JSON.stringify(client)}, not browser`);
  for (const r of reasons.filter((r) => /^(headers|ua)\./.test(r))) problems.push(`${where}: the real browser tripped ${r}`);
  compared += 1;
}
console.log(`header model vs ${compared} real navigations (${[...kinds].sort().join('; ')}): ${problems.length} disagreements`);
for (const p of problems) console.log(`  ${p}`);
process.exit(problems.length === 0 ? 0 : 1);
