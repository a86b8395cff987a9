// Debian's Chromium on the score cache's dashboard (/ui): tests/browser/run starts a real
// signalbox-cache (embedded store) and this file seeds it through its API (decision records,
// events, a fleet report), then logs in through the form and checks that each page shows the
// seeded subjects, values and charts, that a decision added in the UI reaches the edges'
// decision stream, and that a read-only login cannot add one. A screenshot of each page is
// saved (target/browser/screenshots/dashboard-*.png).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cfg, inFreshContext, launchChromium, screenshotPath } from './lib.mjs';

const cache = cfg.cache;
const base = `http://127.0.0.1:${cache.port}`;

async function api(method, path, token, body) {
  const r = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  assert.ok(r.ok, `${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function logIn(page, token) {
  await page.goto(`${base}/ui`);
  assert.match(page.url(), /\/ui\/login$/, 'not logged in: the login form');
  await page.type('input[name=token]', token);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
}

describe('chromium on the dashboard', () => {
  let B;
  const now = Date.now();

  before(async () => {
    const record = (id, ago, decision, client, reason) => ({
      request_id: id, at_ms: now - ago, node_id: 'edge-eu-1', revision: 7, decision, score: 70,
      level: 'high', reasons: [{ code: reason, points: 25 }], rules: ['deny-curl'], client,
      method: 'GET', path: '/login', route: 'login', ip_hash: 'ab12',
    });
    await api('POST', '/v1/decisions/log', cache.readToken, { records: [
      record('r1', 60_000, 'challenge', 'automation', 'ua.automation'),
      record('r2', 120_000, 'challenge', 'automation', 'ua.automation'),
      record('r3', 600_000, 'challenge', 'browser', 'ip.hosting'),
      record('r4', 900_000, 'block', 'spoofed_bot;bot="googlebot"', 'crawler.spoofed'),
      record('r5', 1_800_000, 'block', 'automation', 'ua.automation'),
      record('r6', 2_400_000, 'pass', 'browser', 'ip.hosting'),
    ] });
    await api('POST', '/v1/events', cache.ingestToken, { events: [0, 1, 2].map((i) => ({
      id: `dash-e${i}`, subject: { scope: 'user', key: 'mallory' }, type: 'failed_login',
      severity: 'medium', impact: 10,
    })) });
    await api('POST', '/v1/fleet', cache.readToken, {
      node_id: 'edge-eu-1', stable_revision: 7, last_error: null, clock_skew_ms: 0,
      reported_at: Math.floor(now / 1000),
    });
    B = await launchChromium();
  });
  after(async () => {
    await B?.close();
  });

  test('an admin sees every page with the seeded values and adds a decision the stream carries', async () => {
    await inFreshContext(B.browser, async (context, page) => {
      await logIn(page, cache.adminToken);
      assert.equal(new URL(page.url()).pathname, '/ui');
      // The session cookie: HttpOnly, SameSite=Strict; the token is nowhere in the page or URL.
      const cookies = await page.cookies();
      const session = cookies.find((c) => c.name === 'signalbox_session');
      assert.ok(session, JSON.stringify(cookies));
      assert.equal(session.httpOnly, true);
      assert.equal(session.sameSite, 'Strict');
      assert.ok(!page.url().includes(cache.adminToken));
      assert.equal(await page.evaluate(() => document.cookie), '', 'the session is not readable by scripts');

      // Overview: totals, the chart's bars add up, reasons and classes, the fleet.
      const totals = await page.$eval('#decision-totals', (e) => e.textContent);
      assert.match(totals, /6 of 6 records/);
      assert.match(totals, /challenge 3/);
      assert.match(totals, /block 2/);
      const bars = await page.$$eval('#decisions-chart rect[data-decision]', (rs) =>
        rs.map((r) => [r.dataset.decision, Number(r.dataset.count), r.getBBox().height]));
      const sum = (d) => bars.filter(([k]) => k === d).reduce((n, [, c]) => n + c, 0);
      assert.deepEqual([sum('pass'), sum('challenge'), sum('throttle'), sum('block')], [1, 3, 0, 2]);
      assert.ok(bars.every(([, , h]) => h > 0), 'every bar is drawn');
      assert.equal(await page.$eval('#reason-chart g[data-label="ua.automation"]', (g) => g.dataset.count), '3');
      assert.equal(await page.$eval('#class-chart g[data-label="browser"]', (g) => g.dataset.count), '2');
      const classBars = await page.$$eval('#class-time-chart rect[data-class]', (rs) =>
        rs.map((r) => [r.dataset.class, Number(r.dataset.count)]));
      const byClass = (c) => classBars.filter(([k]) => k === c).reduce((n, [, x]) => n + x, 0);
      assert.deepEqual([byClass('automation'), byClass('browser'), byClass('spoofed_bot')], [3, 2, 1]);
      assert.ok(await page.$('#fleet tr[data-node="edge-eu-1"]'));
      await page.screenshot({ path: screenshotPath('dashboard-overview'), fullPage: true });

      // Subjects: mallory ranked, her page with the history chart, factors and events.
      await Promise.all([page.waitForNavigation(), page.click('nav a[href="/ui/subjects"]')]);
      assert.ok(await page.$('#subjects tr[data-subject="user:mallory"]'));
      await page.screenshot({ path: screenshotPath('dashboard-subjects'), fullPage: true });
      await Promise.all([page.waitForNavigation(), page.click('#subjects tr[data-subject="user:mallory"] a')]);
      assert.equal(await page.$$eval('#history-chart circle[data-score]', (c) => c.length), 3);
      assert.equal(await page.$$eval('#events tr[data-event="failed_login"]', (r) => r.length), 3);
      assert.ok(await page.$('#factors tr[data-factor="event.failed_login"]'));
      await page.screenshot({ path: screenshotPath('dashboard-subject'), fullPage: true });

      // Decision log: filtered by decision, one record's explanation opened.
      await page.goto(`${base}/ui/log`);
      await page.type('input[name=decision]', 'block');
      await Promise.all([page.waitForNavigation(), page.click('form.card button')]);
      assert.match(await page.$eval('#log-total', (e) => e.textContent), /^2 records/);
      await page.click('#log tr[data-request="r4"] summary');
      const explained = await page.$eval('#log tr[data-request="r4"] details', (d) => d.open && d.textContent);
      assert.match(explained, /crawler\.spoofed \+25/);
      assert.match(explained, /revision 7/);
      await page.screenshot({ path: screenshotPath('dashboard-log'), fullPage: true });

      // Manual decisions: added through the form, carried by the edges' stream, then removed.
      await page.goto(`${base}/ui/decisions`);
      await page.select('select[name=action]', 'ban');
      await page.select('select[name=scope]', 'ip');
      await page.type('input[name=key]', '198.51.100.23');
      await page.type('input[name=reason]', 'card testing seen by the fraud team');
      // A duration as people write it: ten minutes.
      await page.$eval('input[name=duration_seconds]', (e) => { e.value = ''; });
      await page.type('input[name=duration_seconds]', '10m');
      await Promise.all([page.waitForNavigation(), page.click('#add-decision button')]);
      assert.ok(await page.$('#decisions tr[data-decision-id]'), 'the decision is listed');
      const inForce = await api('GET', '/v1/decisions', cache.adminToken);
      const added = inForce.decisions.find((d) => d.key === '198.51.100.23');
      const left = added.expires_at - Date.now() / 1000;
      assert.ok(left > 540 && left <= 600, `expires in ${left} s, not 10 minutes`);
      const stream = await api('GET', '/v1/decisions/stream?since=0', cache.readToken);
      assert.ok(JSON.stringify(stream).includes('198.51.100.23'), JSON.stringify(stream));
      await page.screenshot({ path: screenshotPath('dashboard-decisions'), fullPage: true });
      await Promise.all([page.waitForNavigation(), page.click('#decisions tr[data-decision-id] button')]);
      assert.equal(await page.$('#decisions tr[data-decision-id]'), null, 'removed');
      assert.ok(await page.$('#no-decisions'), 'the empty list says so');
    });
  });

  test('a read-only (view) login sees decisions but cannot add one', async () => {
    await inFreshContext(B.browser, async (context, page) => {
      await logIn(page, cache.viewToken);
      await page.goto(`${base}/ui/decisions`);
      assert.ok(await page.$('#read-only'));
      assert.equal(await page.$('#add-decision'), null, 'no form for a read-only session');
      // A post built by hand with the session's own CSRF token: the API's scope refuses it.
      const status = await page.evaluate(async () => {
        const csrf = document.querySelector('input[name=csrf]').value;
        const body = new URLSearchParams({ csrf, action: 'ban', scope: 'ip', key: '198.51.100.99',
          duration_seconds: '600', reason: 'forged' });
        return (await fetch('/ui/decisions', { method: 'POST', body })).status;
      });
      assert.equal(status, 403);
      const listed = await api('GET', '/v1/decisions', cache.adminToken);
      assert.ok(!JSON.stringify(listed).includes('198.51.100.99'));
    });
  });

  test('a wrong token is refused at the login form', async () => {
    await inFreshContext(B.browser, async (context, page) => {
      await logIn(page, 'not-a-token');
      assert.ok(await page.$('#login-error'));
      const cookies = await page.cookies();
      assert.ok(!cookies.some((c) => c.name === 'signalbox_session'));
    });
  });
});
