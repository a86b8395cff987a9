// Debian's Firefox ESR (headless, WebDriver BiDi) against Signalbox in real Envoy: the main
// flow over HTTPS (HTTP/2 and HTTP/1.1) and plain HTTP. If Firefox cannot be launched or
// driven, every test fails with the driver's own error (never skipped).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  TRANSPORTS, VERIFY_PATH, challengedNavigation, clearanceCookies, explain, inFreshContext,
  launchFirefox, pathOf, screenshotPath, shopOrigin,
} from './lib.mjs';

describe('firefox', () => {
  let F = null; // { browser, close, userAgent }
  let launchError = null;

  before(async () => {
    try {
      F = await launchFirefox();
      console.log(`# firefox ${await F.browser.version()} over WebDriver BiDi; User-Agent: ${F.userAgent}`);
    } catch (e) {
      launchError = e;
      console.log(`# Firefox could not be driven: ${e.stack ?? e}`);
    }
  });
  after(async () => {
    await F?.close();
  });

  function browser() {
    if (launchError) throw new Error(`Firefox could not be launched/driven over WebDriver BiDi: ${launchError.message}`, { cause: launchError });
    return F.browser;
  }

  const fresh = (fn) => inFreshContext(browser(), fn);

  for (const t of TRANSPORTS) {
    describe(`firefox over ${t.name}`, () => {
      test('navigate -> the page solves -> origin 2xx -> clearance cookie -> the next navigation passes', async (tt) => {
        await fresh(async (context, page) => {
          const shop = shopOrigin('main', t);
          let solved = false;
          await tt.test('challenged navigation to /signup?plan=pro&ref=x ends on origin at the same path and query', async () => {
            const r = await challengedNavigation(page, `${shop}/signup?plan=pro&ref=x`);
            assert.equal(r.challenge.status, 403, `first response should be the challenge page: ${r.chain}`);
            assert.equal(r.outcome, 'origin', explain(r));
            assert.equal(pathOf(r.final.url), '/signup?plan=pro&ref=x');
            assert.equal(r.reflect.path, '/signup?plan=pro&ref=x');
            assert.equal(r.reflect.decision, 'pass');
            assert.equal(r.reflect.protocol, t.protocol, 'downstream protocol as Envoy saw it');
            assert.equal(r.reflect.forwardedProto, t.scheme);
            assert.ok((r.reflect.cookie ?? '').includes(`${t.cookie}=`), `origin saw the clearance cookie; cookie header: ${r.reflect.cookie}`);
            const cookies = await clearanceCookies(context);
            const c = cookies.find((k) => k.name === t.cookie);
            assert.ok(c, `the clearance cookie ${t.cookie}; the browser holds: ${cookies.map((k) => k.name).join(', ') || 'none'}`);
            assert.equal(c.secure, t.secure, 'Secure');
            assert.equal(c.httpOnly, true, 'HttpOnly');
            await page.screenshot({ path: screenshotPath(`firefox-${t.name}-origin-after-solve`) });
            console.log(`# firefox ${t.name}: solved in ${r.ms} ms (nextHopProtocol ${r.nextHop}): ${r.chain}`);
            solved = true;
          });
          await tt.test('the next navigation to /signup passes without a challenge', async () => {
            assert.ok(solved, 'needs the clearance from the step before, which failed');
            const res = await page.goto(`${shop}/signup`, { waitUntil: 'domcontentloaded' });
            assert.equal(res.status(), 200, `expected origin's 200 directly, got ${res.status()} at ${res.url()}`);
            assert.equal(res.headers()['x-suite-origin'], '1');
            assert.notEqual(new URL(res.url()).pathname, VERIFY_PATH);
            const reflect = JSON.parse(await page.$eval('#reflect', (el) => el.textContent));
            assert.equal(reflect.decision, 'pass');
            assert.equal(reflect.path, '/signup');
          });
        });
      });
    });
  }
});
