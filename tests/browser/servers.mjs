// The two web servers of the browser suite, in one process (tests/browser/run starts it):
//
//   origin    behind Envoy (cluster `origin`): 200 with a small HTML page for navigations and
//             JSON for /api/*, both reflecting what arrived (method, path + query, the
//             x-signalbox-decision header, the cookie header, the downstream protocol and
//             process Envoy reported). Every answer also tries to leak x-signalbox-leak, which
//             the filter must strip.
//   attacker  http://evil.test:PORT, another site: pages that auto-submit a solved challenge
//             to shop's verify endpoint (CSRF), plainly, with referrer-policy: no-referrer, and
//             from a sandboxed iframe.
//
// Usage: node servers.mjs ORIGIN_PORT ATTACKER_PORT [CAPTURE_FILE]   (both bind 127.0.0.1 only)
//
// With CAPTURE_FILE, every top-level navigation that reaches origin is appended to it as one
// JSON line: the header names in the order they arrived (and the values of the few that tell
// the browser and transport), so tests/corpus/compare-captures.mjs can hold the corpus's
// header model to what real browsers send.

import { appendFileSync } from 'node:fs';
import http from 'node:http';

const [originPort, attackerPort] = process.argv.slice(2, 4).map(Number);
const captureFile = process.argv[4];

function capture(req) {
  if (!captureFile || req.method !== 'GET' || req.headers['sec-fetch-mode'] === 'cors') return;
  // Requests a test builds itself (not a browser's) are no evidence of what browsers send.
  if (req.headers['x-suite-synthetic']) return;
  if (!(req.headers.accept ?? '').includes('text/html')) return;
  const names = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) names.push(req.rawHeaders[i].toLowerCase());
  const keep = ['user-agent', 'accept', 'accept-encoding', 'accept-language', 'sec-ch-ua', 'sec-ch-ua-mobile',
    'sec-ch-ua-platform', 'sec-fetch-site', 'sec-fetch-mode', 'sec-fetch-dest', 'sec-fetch-user', 'priority', 'x-forwarded-proto',
    'x-signalbox-client', 'x-signalbox-reasons'];
  const values = Object.fromEntries(keep.filter((k) => k in req.headers).map((k) => [k, req.headers[k]]));
  appendFileSync(captureFile, `${JSON.stringify({ path: req.url, protocol: req.headers['x-suite-protocol'] ?? null, names, values })}\n`);
}
if (!originPort || !attackerPort) {
  console.error('usage: node servers.mjs ORIGIN_PORT ATTACKER_PORT');
  process.exit(2);
}

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

function reflect(req) {
  const h = req.headers;
  return {
    origin: 'signalbox-browser-suite',
    method: req.method,
    path: req.url,
    host: h.host ?? null,
    decision: h['x-signalbox-decision'] ?? null,
    level: h['x-signalbox-level'] ?? null,
    score: h['x-signalbox-score'] ?? null,
    reasons: h['x-signalbox-reasons'] ?? null,
    cookie: h.cookie ?? null,
    protocol: h['x-suite-protocol'] ?? null,
    envoy: h['x-suite-envoy'] ?? null,
    forwardedProto: h['x-forwarded-proto'] ?? null,
    userAgent: h['user-agent'] ?? null,
    secFetchSite: h['sec-fetch-site'] ?? null,
  };
}

const origin = http.createServer((req, res) => {
  const body = [];
  req.on('data', (c) => body.push(c));
  req.on('error', () => {});
  // Answer on the headers: a verify POST's body is held by the filter and never arrives.
  const info = reflect(req);
  capture(req);
  console.log(`[origin] ${info.envoy ?? '-'} ${info.protocol ?? '-'} ${req.method} ${req.url} decision=${info.decision}`);
  res.setHeader('x-signalbox-leak', 'origin-says-hi');
  res.setHeader('x-suite-origin', '1');
  res.setHeader('cache-control', 'no-store');
  if (req.url.startsWith('/.signalbox/')) {
    // The filter answers the verify path itself (and holds a form body), so origin normally
    // never answers. If a body ever reaches origin, the 418 shows it. With
    // x-suite-answer-early origin answers on the headers alone, as many real origins do (a
    // 404 that never reads the body): see verify-early-origin.test.mjs.
    const answer = (status, text) => {
      if (res.headersSent) return;
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(text);
    };
    if (req.headers['x-suite-answer-early']) answer(404, 'origin answered the verify path on its headers\n');
    else req.on('end', () => answer(418, 'the verify request body reached origin\n'));
    return;
  }
  if (req.url.startsWith('/api/')) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(info));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop origin</title></head>
<body style="font:16px system-ui,sans-serif;margin:2rem">
<h1 id="origin-page">Welcome to the shop (origin)</h1>
<pre id="reflect">${escapeHtml(JSON.stringify(info, null, 1))}</pre>
</body></html>
`);
});

// Attacker pages. Query: action (shop's verify URL), challenge, counter, and in=query to put
// the solution in the action's query with an empty body (as the challenge page itself does)
// instead of form fields.
function csrfForm(q) {
  const solution = new URLSearchParams({ challenge: q.get('challenge') ?? '', counter: q.get('counter') ?? '' });
  if (q.get('in') === 'query') {
    return `<form id="f" method="POST" action="${escapeHtml(`${q.get('action')}?${solution}`)}"></form>
<script>document.getElementById('f').submit();</script>`;
  }
  return `<form id="f" method="POST" action="${escapeHtml(q.get('action'))}">
<input type="hidden" name="challenge" value="${escapeHtml(q.get('challenge'))}">
<input type="hidden" name="counter" value="${escapeHtml(q.get('counter'))}">
</form>
<script>document.getElementById('f').submit();</script>`;
}

const attacker = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://evil.test');
  const q = url.searchParams;
  console.log(`[attacker] ${req.method} ${url.pathname}`);
  const html = (body, headers = {}) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...headers });
    res.end(`<!doctype html><html><head><meta charset="utf-8"><title>Totally legit</title></head><body>${body}</body></html>\n`);
  };
  switch (url.pathname) {
    case '/plain':
      return html(`<h1>Win a prize</h1>${csrfForm(q)}`);
    case '/noreferrer':
      return html(`<h1>Win a prize (no referrer)</h1>${csrfForm(q)}`, { 'referrer-policy': 'no-referrer' });
    case '/sandbox': {
      const frame = `/frame?${q.toString()}`;
      return html(`<h1>Win a prize (sandboxed frame)</h1>
<iframe id="victim" name="victim" sandbox="allow-forms allow-scripts" src="${escapeHtml(frame)}" width="600" height="200"></iframe>`);
    }
    case '/frame':
      return html(csrfForm(q));
    default:
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
  }
});

origin.listen(originPort, '127.0.0.1', () => console.log(`[servers] origin on 127.0.0.1:${originPort}`));
attacker.listen(attackerPort, '127.0.0.1', () => console.log(`[servers] attacker on 127.0.0.1:${attackerPort}`));
for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => process.exit(0));
