// Shared helpers of the browser suite: the configuration tests/browser/run wrote, launching
// Debian's chromium and firefox-esr with puppeteer-core (never a downloaded browser), the
// challenge flow as a real person's browser goes through it, and a Node client that fetches a
// real challenge and solves it (for the CSRF pages).

import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

if (!process.env.SUITE_CONFIG) {
  throw new Error('SUITE_CONFIG is not set: run the suite with tests/browser/run, which starts Envoy and the servers');
}
export const cfg = JSON.parse(readFileSync(process.env.SUITE_CONFIG, 'utf8'));

export const VERIFY_PATH = '/.signalbox/verify';
export const HTTPS_COOKIE = '__Host-signalbox-clearance';
export const HTTP_COOKIE = 'signalbox-clearance';

/** The three ways a browser reaches shop: `protocol` is Envoy's %PROTOCOL%, `nextHop` the
 *  browser's PerformanceNavigationTiming.nextHopProtocol. */
export const TRANSPORTS = [
  { name: 'http', scheme: 'http', listener: 'http', protocol: 'HTTP/1.1', nextHop: 'http/1.1', cookie: HTTP_COOKIE, secure: false },
  { name: 'https-h2', scheme: 'https', listener: 'h2', protocol: 'HTTP/2', nextHop: 'h2', cookie: HTTPS_COOKIE, secure: true },
  { name: 'https-h1', scheme: 'https', listener: 'h1', protocol: 'HTTP/1.1', nextHop: 'http/1.1', cookie: HTTPS_COOKIE, secure: true },
];
export const transport = (name) => TRANSPORTS.find((t) => t.name === name);

/** `http(s)://shop.test:PORT` of one listener of one Envoy process. */
export function shopOrigin(envoy, t) {
  const e = cfg.envoys[envoy];
  if (!e) throw new Error(`no Envoy '${envoy}' in ${process.env.SUITE_CONFIG}`);
  return `${t.scheme}://shop.test:${e[t.listener]}`;
}
export const attackerOrigin = () => `http://evil.test:${cfg.attackerPort}`;

export const screenshotPath = (name) => path.join(cfg.screenshots, `${name}.png`);

/** A URL's path and query. */
export const pathOf = (u) => { const x = new URL(u); return x.pathname + x.search; };

/** Runs `fn(context, page)` in a fresh browser context (no cookies), closed afterwards. */
export async function inFreshContext(browser, fn) {
  const context = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(20_000);
    page.setDefaultNavigationTimeout(20_000);
    return await fn(context, page);
  } finally {
    await context.close().catch(() => {});
  }
}

/** Bounded wait with a clear message. */
export async function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// --- browsers ------------------------------------------------------------------------------

function recordPid(browser, name) {
  const pid = browser.process()?.pid;
  if (!pid) return () => {};
  mkdirSync(cfg.pids, { recursive: true });
  const file = path.join(cfg.pids, `${name}-${pid}`);
  writeFileSync(file, String(pid));
  return () => rmSync(file, { force: true });
}

function profileDir(name) {
  const base = path.join(cfg.out, 'profiles');
  mkdirSync(base, { recursive: true });
  return mkdtempSync(path.join(base, `${name}-`));
}

const CHROMIUM_ARGS = [
  '--no-sandbox', // we run as root in CI
  '--headless=new',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--host-resolver-rules=MAP shop.test 127.0.0.1, MAP evil.test 127.0.0.1',
];

/** Records a launched browser's pid (stopped at exit) and returns how to close it for good. */
function closer(browser, name, userDataDir) {
  const forget = recordPid(browser, name);
  return async () => {
    await browser.close().catch(() => browser.process()?.kill('SIGKILL'));
    forget();
    rmSync(userDataDir, { recursive: true, force: true });
  };
}

/**
 * Debian's Chromium, headless, trusting the suite's certificate by its SPKI hash (so HTTPS
 * pages are secure contexts, as with a real certificate).
 *
 * User-Agent: headless Chromium says "HeadlessChrome/N"; a person's Chromium says "Chrome/N".
 * We launch once to read the real UA and relaunch with only that token changed (same version,
 * so the client hints, which say "Chromium" N, still agree). Reason: the suite proves that a
 * person passes; with the headless token the default bundle adds ua.headless (60), which can
 * lift the level to critical and the difficulty to 18 bits, measuring a bot's challenge, not a
 * person's. One test checks that the HeadlessChrome UA is still challenged, not blocked.
 */
export async function launchChromium() {
  const launch = async (extra) => {
    const userDataDir = profileDir('chromium');
    const browser = await within(60_000, 'launching Chromium', puppeteer.launch({
      browser: 'chrome',
      executablePath: cfg.chromium,
      headless: true,
      userDataDir,
      args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${cfg.spki}`, ...extra],
      protocolTimeout: 60_000,
    }));
    return { browser, close: closer(browser, 'chromium', userDataDir) };
  };
  const probe = await launch([]);
  const headlessUA = await probe.browser.userAgent();
  await probe.close();
  const userAgent = headlessUA.replace('HeadlessChrome/', 'Chrome/');
  const { browser, close } = await launch([`--user-agent=${userAgent}`]);
  return { browser, close, userAgent, headlessUA, name: 'chromium' };
}

/**
 * Debian's Firefox ESR over WebDriver BiDi. `acceptInsecureCerts` makes it accept the suite's
 * self-signed certificate; `network.dns.localDomains` resolves shop.test and evil.test to
 * loopback.
 */
export async function launchFirefox() {
  const userDataDir = profileDir('firefox');
  const browser = await within(90_000, 'launching Firefox over WebDriver BiDi', puppeteer.launch({
    browser: 'firefox',
    executablePath: cfg.firefox,
    headless: true,
    userDataDir,
    acceptInsecureCerts: true,
    protocolTimeout: 60_000,
    extraPrefsFirefox: {
      'network.dns.localDomains': 'shop.test,evil.test',
      // Nothing but loopback: no captive-portal, telemetry or update traffic.
      'network.captive-portal-service.enabled': false,
      'network.connectivity-service.enabled': false,
      'app.update.enabled': false,
      'toolkit.telemetry.enabled': false,
      'datareporting.policy.dataSubmissionEnabled': false,
    },
  }));
  const close = closer(browser, 'firefox', userDataDir);
  const userAgent = await browser.userAgent();
  return { browser, close, userAgent, name: 'firefox' };
}

// --- the challenge flow in a browser ---------------------------------------------------------

const describeResponse = (r) => `${r.status} ${r.url}`;

/**
 * Navigates `page` to `url`, expecting Signalbox's challenge page, and waits until the page
 * has solved it and the browser has landed on origin's page (or the verify endpoint refused
 * it, or `timeoutMs` passed). Returns every main-frame document response in order, the
 * challenge, verify and final responses, the milliseconds from navigation start to origin's
 * 2xx, what origin reflected, and the browser's own view of the protocol.
 */
export async function challengedNavigation(page, url, { timeoutMs = 30_000 } = {}) {
  const docs = [];
  let settle;
  const settled = new Promise((resolve) => { settle = resolve; });
  const onResponse = (r) => {
    const req = r.request();
    if (!req.isNavigationRequest() || r.frame() !== page.mainFrame()) return;
    const entry = { url: r.url(), status: r.status(), headers: r.headers(), at: Date.now(), response: r };
    docs.push(entry);
    const u = new URL(entry.url);
    if (u.pathname === VERIFY_PATH && entry.status !== 303 && entry.status !== 302) settle('verify-refused');
    else if (entry.status >= 200 && entry.status < 300 && entry.headers['x-suite-origin']) settle('origin');
    else if (u.pathname !== VERIFY_PATH && entry.status !== 403) settle('unexpected');
  };
  const failures = [];
  const onFailed = (req) => {
    if (!req.isNavigationRequest() || req.frame() !== page.mainFrame()) return;
    failures.push(`${req.method()} ${req.url()} failed: ${req.failure()?.errorText ?? 'unknown error'}`);
    settle('failed');
  };
  page.on('response', onResponse);
  page.on('requestfailed', onFailed);
  const started = Date.now();
  let gotoError = null;
  const nav = page.goto(url, { waitUntil: 'domcontentloaded', timeout: timeoutMs }).catch((e) => { gotoError = e; });
  let outcome;
  try {
    outcome = await within(timeoutMs, `the challenge at ${url} to be solved and origin reached`, settled);
  } catch (e) {
    const seen = docs.map(describeResponse).join(' -> ') || 'no document response';
    throw new Error(`${e.message}; responses so far: ${seen}${gotoError ? `; goto: ${gotoError.message}` : ''}`);
  } finally {
    page.off('response', onResponse);
    page.off('requestfailed', onFailed);
  }
  await nav;
  const result = {
    outcome,
    docs,
    started,
    challenge: docs[0] ?? null,
    verify: docs.find((d) => new URL(d.url).pathname === VERIFY_PATH) ?? null,
    final: docs.at(-1),
    ms: null,
    reflect: null,
    nextHop: null,
    chain: [...docs.map(describeResponse), ...failures].join(' -> '),
  };
  if (outcome === 'origin') {
    result.ms = result.final.at - started;
    await page.waitForSelector('#reflect', { timeout: 10_000 });
    result.reflect = JSON.parse(await page.$eval('#reflect', (el) => el.textContent));
    result.nextHop = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol ?? null);
  } else if (outcome === 'verify-refused') {
    result.verifyBody = await result.verify.response.text().catch((e) => `(body unreadable: ${e.message})`);
    result.verifyRequestHeaders = result.verify.response.request().headers();
  }
  return result;
}

/** A readable reason when a challenged navigation did not reach origin. */
export function explain(result) {
  if (result.outcome === 'verify-refused') {
    const h = result.verifyRequestHeaders ?? {};
    return `the verify endpoint refused the challenge page's own POST: ${result.verify.status} ${result.verifyBody} ` +
      `(request origin: ${h.origin ?? '(none)'}, sec-fetch-site: ${h['sec-fetch-site'] ?? '(none)'}, ` +
      `referer: ${h.referer ?? '(none)'}); responses: ${result.chain}`;
  }
  return `did not reach origin: ${result.chain}`;
}

/** The clearance cookies the browser context holds for shop.test. */
export async function clearanceCookies(context) {
  const all = await context.cookies();
  return all.filter((c) => c.name === HTTPS_COOKIE || c.name === HTTP_COOKIE);
}

// --- a Node client (for the CSRF pages' solved challenges) ------------------------------------

/** One request to an Envoy listener, as `shop.test:PORT` (the binding covers the host). */
export function request(urlText, { method = 'GET', headers = {}, body = null, timeoutMs = 10_000 } = {}) {
  const url = new URL(urlText);
  const lib = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request({
      host: '127.0.0.1',
      port: url.port,
      method,
      path: url.pathname + url.search,
      servername: url.hostname,
      rejectUnauthorized: false, // the suite's own self-signed certificate
      headers: { host: url.host, ...headers, ...(body ? { 'content-length': Buffer.byteLength(body) } : {}) },
      timeout: timeoutMs,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const buf = Buffer.concat(chunks);
        resolve({ status: res.statusCode, headers: res.headers, body: buf.toString('utf8'), bytes: buf.length });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from ${urlText} in ${timeoutMs} ms`)));
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

/**
 * A POST whose body is sent `delayMs` after its headers (HTTP/1.1, or HTTP/2 with `h2`), so
 * that origin can answer on the headers alone before the filter has the body.
 */
export async function postWithDelayedBody(urlText, headers, body, delayMs, { h2 = false, timeoutMs = 10_000 } = {}) {
  const url = new URL(urlText);
  if (!h2) {
    const lib = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = lib.request({
        host: '127.0.0.1', port: url.port, method: 'POST', path: url.pathname, servername: url.hostname,
        rejectUnauthorized: false, agent: false, timeout: timeoutMs,
        headers: { host: url.host, ...headers, 'content-length': Buffer.byteLength(body) },
      }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`no answer from ${urlText} in ${timeoutMs} ms`)));
      req.on('error', reject);
      req.flushHeaders();
      setTimeout(() => req.end(body), delayMs);
    });
  }
  const session = http2.connect(`https://127.0.0.1:${url.port}`, { servername: url.hostname, rejectUnauthorized: false });
  try {
    return await new Promise((resolve, reject) => {
      session.on('error', reject);
      const stream = session.request({
        ':method': 'POST', ':path': url.pathname, ':authority': url.host, ':scheme': 'https',
        ...headers, 'content-length': String(Buffer.byteLength(body)),
      }, { endStream: false });
      let head = null;
      let timedOut = false;
      const chunks = [];
      stream.setTimeout(timeoutMs, () => { timedOut = true; stream.close(http2.constants.NGHTTP2_CANCEL); });
      stream.on('response', (h) => { head = h; });
      stream.on('data', (c) => chunks.push(c));
      stream.on('close', () => {
        if (timedOut) reject(new Error(`no answer from ${urlText} in ${timeoutMs} ms`));
        else if (!head) reject(new Error(`HTTP/2 stream to ${urlText} closed without a response (rst code ${stream.rstCode})`));
        else resolve({ status: head[':status'], headers: head, body: Buffer.concat(chunks).toString('utf8') });
      });
      stream.on('error', (e) => { if (!timedOut) reject(e); });
      setTimeout(() => stream.end(body), delayMs);
    });
  } finally {
    session.close();
  }
}

/** Leading zero bits of SHA-256("<challenge>:<counter>"), as the filter counts them. */
export function workBits(challenge, counter) {
  const d = createHash('sha256').update(`${challenge}:${counter}`).digest();
  let bits = 0;
  for (const byte of d) {
    if (byte === 0) { bits += 8; continue; }
    bits += Math.clz32(byte) - 24;
    break;
  }
  return bits;
}

export function solve(challenge, difficulty, maxTries = 1 << 26) {
  for (let counter = 0; counter < maxTries; counter++) {
    if (workBits(challenge, counter) >= difficulty) return counter;
  }
  throw new Error(`no solution for difficulty ${difficulty} in ${maxTries} tries`);
}

/** A real challenge from shop's JSON form (fetched with the browser's User-Agent, so it is
 *  bound to the same client as the browser), solved. */
export async function solvedChallenge(shop, userAgent) {
  const r = await request(`${shop}/api/csrf-probe`, {
    headers: { 'user-agent': userAgent, accept: 'application/json', 'accept-language': 'en-US,en;q=0.9', 'accept-encoding': 'identity' },
  });
  if (r.status !== 403 || !String(r.headers['content-type']).startsWith('application/json')) {
    throw new Error(`expected a 403 JSON challenge from ${shop}/api/csrf-probe, got ${r.status} ${r.headers['content-type']}: ${r.body.slice(0, 200)}`);
  }
  const j = JSON.parse(r.body);
  if (typeof j.challenge !== 'string') throw new Error(`no challenge in ${r.body}`);
  return { ...j, counter: solve(j.challenge, j.difficulty) };
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : Math.round((s[m - 1] + s[m]) / 2);
};
