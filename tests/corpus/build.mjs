// Builds Signalbox's labelled request corpus from public user-agent data, deterministically
// (a seeded generator, pinned packages): requests as `signalbox eval` reads them, labels as
// `signalbox eval --labels` reads them, split into a development part and a held-out part.
//
//   node tests/corpus/build.mjs [--out target/corpus] [--seed 1]
//
// Sources (data, not code; see README.md): npm `user-agents` (BSD-2-Clause: 10,000 real
// browser user agents with their language and platform), npm `crawler-user-agents` (MIT: 1,500
// crawler patterns with 2,118 example user agents). Tool user agents and the script header
// set are written here. Header sets per browser follow what each browser sends: client hints
// only from Chromium 89 and only over HTTPS, `sec-fetch-*` only where the browser sends them
// and only over HTTPS.

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { browserHeaders } from './headers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
// Read the packages' data files directly (the user-agents package does not export its JSON).
const readJson = (p) => JSON.parse(readFileSync(path.join(here, 'node_modules', p), 'utf8'));
const browsers = readJson('user-agents/dist/user-agents.json');
const crawlers = readJson('crawler-user-agents/crawler-user-agents.json');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const out = path.resolve(root, args.out ?? 'target/corpus');
let seed = Number(args.seed ?? 1) >>> 0;

// mulberry32: a small seeded generator, so the corpus is the same on every machine.
function random() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (xs) => xs[Math.floor(random() * xs.length)];
const chance = (p) => random() < p;

// Addresses. Humans: residential ISP space (never in the shipped hosting lists), some from VPN
// exits. Crawlers, tools and scripts: mostly hosting space, some residential.
const hosting = JSON.parse(readFileSync(path.join(root, 'policy/examples/lists/hosting.json'), 'utf8')).cidrs
  .filter((c) => !c.includes(':'));
const vpn = JSON.parse(readFileSync(path.join(root, 'policy/examples/lists/vpn.json'), 'utf8')).cidrs
  .filter((c) => !c.includes(':'));
const RESIDENTIAL = ['81.62.0.0/16', '85.1.0.0/16', '24.0.0.0/12', '73.0.0.0/10', '86.128.0.0/10', '2.24.0.0/13',
  '90.0.0.0/10', '177.0.0.0/10', '49.192.0.0/11', '122.0.0.0/11', '31.16.0.0/12', '95.88.0.0/13'];
function addressIn(cidr) {
  const [base, bits] = cidr.split('/');
  const start = base.split('.').reduce((n, o) => n * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(bits));
  const n = start + Math.floor(random() * size);
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}
const residentialIp = () => addressIn(pick(RESIDENTIAL));
const vpnIp = () => addressIn(pick(vpn));
const hostingIp = () => addressIn(pick(hosting));

const PAGES = ['/', '/', '/', '/products/1842', '/products/77', '/category/shoes', '/search?q=boots', '/cart',
  '/signup', '/login'];

// Link previews and uptime monitors are reported apart: a bundle may choose to let them pass.
const PREVIEW = /slack|whatsapp|facebookexternalhit|facebookcatalog|twitterbot|telegrambot|discordbot|linkedinbot|pinterest|skypeuripreview|redditbot|embedly|iframely|vkshare|uptimerobot|pingdom|statuscake|site24x7|uptime|monitor|newrelicpinger|datadog|better ?stack|freshping|hetrixtools/i;

// HTTP libraries and tools, with the versions they have shipped.
const TOOLS = [
  (v) => `curl/${v(7, 88)}.${v(0, 9)}.${v(0, 2)}`, (v) => `curl/8.${v(0, 11)}.${v(0, 1)}`,
  (v) => `Wget/1.${v(19, 25)}`, (v) => `Wget/1.21.${v(1, 4)}`,
  (v) => `python-requests/2.${v(20, 32)}.${v(0, 3)}`, (v) => `Python-urllib/3.${v(6, 13)}`,
  (v) => `python-httpx/0.${v(20, 28)}.${v(0, 1)}`, (v) => `aiohttp/3.${v(7, 11)}.${v(0, 18)}`,
  (v) => `Go-http-client/1.1`, (v) => `Go-http-client/2.0`,
  (v) => `okhttp/4.${v(9, 12)}.${v(0, 2)}`, (v) => `okhttp/3.${v(12, 14)}.${v(0, 9)}`,
  (v) => `axios/1.${v(0, 7)}.${v(0, 9)}`, (v) => `axios/0.${v(19, 27)}.${v(0, 2)}`,
  (v) => `node-fetch/1.0 (+https://github.com/bitinn/node-fetch)`, (v) => `node`, (v) => `undici`,
  (v) => `Java/1.8.0_${v(181, 402)}`, (v) => `Java/${v(11, 21)}.0.${v(1, 9)}`,
  (v) => `Apache-HttpClient/4.5.${v(3, 14)} (Java/1.8.0_${v(200, 392)})`, (v) => `Apache-HttpClient/5.${v(1, 3)}.${v(1, 4)} (Java/17.0.${v(1, 9)})`,
  (v) => `libwww-perl/6.${v(30, 76)}`, (v) => `Ruby`, (v) => `Faraday v2.${v(0, 9)}.${v(0, 3)}`,
  (v) => `PostmanRuntime/7.${v(26, 42)}.${v(0, 3)}`, (v) => `insomnia/${v(2020, 2024)}.${v(1, 6)}.${v(0, 2)}`,
  (v) => `HTTPie/3.${v(0, 2)}.${v(0, 3)}`, (v) => `Scrapy/2.${v(5, 11)}.${v(0, 2)} (+https://scrapy.org)`,
  (v) => `GuzzleHttp/7`, (v) => `Dart/3.${v(0, 5)} (dart:io)`, (v) => `reqwest/0.${v(11, 12)}.${v(0, 9)}`,
  (v) => `Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/${v(120, 131)}.0.0.0 Safari/537.36`,
  (v) => `Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/537.36`,
];
const version = (lo, hi) => lo + Math.floor(random() * (hi - lo + 1));

// What scripts send: their library's header set, whatever user agent they copy.
const SCRIPT_HEADERS = [
  [['accept', '*/*'], ['accept-encoding', 'gzip, deflate'], ['connection', 'keep-alive']], // python-requests
  [['accept', '*/*']], // curl
  [['accept-encoding', 'gzip']], // Go
  [['accept', 'application/json, text/plain, */*'], ['accept-encoding', 'gzip, compress, deflate, br']], // axios
  [['accept', '*/*'], ['accept-language', '*'], ['accept-encoding', 'gzip, deflate'], ['sec-fetch-mode', 'cors']], // undici / fetch
];
const CURRENT_CHROME = (major) => `Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/${major}.0.0.0 Safari/537.36`;

const lines = [];
let n = 0;
// `group`: what must fall on one side of the split (see below).
const add = (label, group, ua, headers, ip, scheme, page) => {
  n += 1;
  const request = { id: `${label}-${n}`, method: 'GET', path: page, headers, client_ip: ip };
  if (scheme === 'http') request.scheme = 'http';
  lines.push({ label, group, ua, request });
};

for (const entry of browsers) {
  const https = chance(0.9);
  const page = pick(PAGES);
  const ip = chance(0.92) ? residentialIp() : vpnIp();
  add('human', entry.userAgent, entry.userAgent, browserHeaders(entry, https, page), ip, https ? 'https' : 'http', page);
}
for (const c of crawlers) {
  for (const ua of c.instances ?? []) {
    const label = PREVIEW.test(c.pattern) || PREVIEW.test(ua) ? 'preview' : 'crawler';
    const headers = [['host', 'shop.example'], ['user-agent', ua], ['accept', chance(0.5) ? '*/*' : 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8'],
      ['accept-encoding', pick(['gzip', 'gzip, deflate', 'gzip, deflate, br'])]];
    if (chance(0.4)) headers.push(['accept-language', 'en-US,en;q=0.5']);
    add(label, c.pattern, ua, headers, chance(0.85) ? hostingIp() : residentialIp(), 'https', pick(PAGES));
  }
}
for (let i = 0; i < 1000; i += 1) {
  const tool = Math.floor(random() * TOOLS.length);
  const ua = TOOLS[tool](version);
  add('automation', `tool ${tool}`, ua, [['host', 'shop.example'], ['user-agent', ua], ...pick(SCRIPT_HEADERS)], chance(0.85) ? hostingIp() : residentialIp(), 'https', pick(PAGES));
}
for (let i = 0; i < 1000; i += 1) {
  const ua = CURRENT_CHROME(version(128, 131));
  const set = Math.floor(random() * SCRIPT_HEADERS.length);
  add('scripted', `${ua}\n${set}`, ua, [['host', 'shop.example'], ['user-agent', ua], ...SCRIPT_HEADERS[set]], chance(0.85) ? hostingIp() : residentialIp(), 'https', pick(PAGES));
}

// The split: a request is held out when the first byte of SHA-256("<label>\n<group>") is below
// 77 (about 30% of groups). A group goes one way whole: for browsers the user agent (so no
// held-out user agent is seen while tuning, whatever its duplicates); for crawlers and
// previews the crawler-user-agents *pattern* (so a held-out crawler family is never one whose
// examples shaped our patterns); for tools the tool; for scripts the user agent and the
// library header set.
const heldOut = (l) => createHash('sha256').update(`${l.label}\n${l.group}`).digest()[0] < 77;
mkdirSync(out, { recursive: true });
const summary = {};
for (const [part, keep] of [['dev', (l) => !heldOut(l)], ['heldout', heldOut]]) {
  const chosen = lines.filter(keep);
  const requests = chosen.map((l) => JSON.stringify(l.request)).join('\n') + '\n';
  const labels = chosen.map((l) => JSON.stringify({ id: l.request.id, label: l.label })).join('\n') + '\n';
  writeFileSync(path.join(out, `${part}.requests.jsonl`), requests);
  writeFileSync(path.join(out, `${part}.labels.jsonl`), labels);
  const counts = {};
  for (const l of chosen) counts[l.label] = (counts[l.label] ?? 0) + 1;
  summary[part] = {
    requests: chosen.length,
    labels: counts,
    sha256: createHash('sha256').update(requests).update(labels).digest('hex'),
  };
}
console.log(JSON.stringify(summary, null, 2));
