// Debian's Chromium through the edge worker in each of its runtimes: the WASI HTTP component
// in our wasi-http host, and the JS build in workerd and in Deno (tests/browser/run starts
// them with `signalbox-harness serve-edge`, secret S1, in front of the suite's origin). The
// page solves the challenge and lands on origin; a clearance issued by one runtime is then
// accepted by another for the same host and client.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  HTTP_COOKIE, cfg, challengedNavigation, clearanceCookies, explain, inFreshContext,
  launchChromium, request, screenshotPath,
} from './lib.mjs';

const edges = cfg.edges ?? {};

describe('chromium through the edge workers', () => {
  let B;
  const clearances = {};

  before(async () => {
    assert.ok(Object.keys(edges).length === 3, `three edge runtimes expected in suite.json, got ${JSON.stringify(edges)}`);
    B = await launchChromium();
  });
  after(async () => {
    await B?.close();
  });

  for (const runtime of Object.keys(edges)) {
    test(`${runtime}: a challenged navigation is solved by the page and lands on origin`, async () => {
      await inFreshContext(B.browser, async (context, page) => {
        const r = await challengedNavigation(page, `http://shop.test:${edges[runtime]}/signup?plan=pro`);
        assert.equal(r.challenge.status, 403, `first response should be the challenge page: ${r.chain}`);
        assert.match(r.challenge.headers['content-type'] ?? '', /^text\/html/);
        assert.equal(r.outcome, 'origin', explain(r));
        assert.equal(r.verify?.status, 303, `verify should answer 303: ${r.chain}`);
        assert.equal(r.reflect.path, '/signup?plan=pro', 'origin received the path and query');
        assert.equal(r.reflect.decision, 'pass', 'origin was told x-signalbox-decision: pass');
        await page.screenshot({ path: screenshotPath(`edge-${runtime}`) });
        const cookie = (await clearanceCookies(context)).find((c) => c.name === HTTP_COOKIE);
        assert.ok(cookie, `${runtime} set no ${HTTP_COOKIE}`);
        clearances[runtime] = cookie.value;
      });
    });
  }

  // The binding is the client's /24, its User-Agent and the host (without port): the wasi-http
  // host and Deno both see the browser at 127.0.0.1; workerd here has no client address
  // (Cloudflare's cf-connecting-ip is absent on loopback), so its clearances bind to none.
  for (const [issuer, acceptor] of [['wasi-http', 'deno'], ['deno', 'wasi-http']]) {
    test(`a clearance from ${issuer} is accepted by ${acceptor}`, async () => {
      assert.ok(clearances[issuer], `no clearance from ${issuer} (its test failed)`);
      const url = `http://shop.test:${edges[acceptor]}/signup?plan=pro`;
      // Built here, not by the browser: marked so origin does not capture it as a browser's.
      const headers = {
        'x-suite-synthetic': '1',
        'user-agent': B.userAgent,
        accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
        'accept-language': 'en-US,en;q=0.9',
        'accept-encoding': 'gzip, deflate',
        'sec-fetch-mode': 'navigate',
        'sec-fetch-site': 'none',
        'sec-fetch-dest': 'document',
      };
      const without = await request(url, { headers });
      assert.equal(without.status, 403, `without the cookie ${acceptor} should challenge`);
      const withCookie = await request(url, { headers: { ...headers, cookie: `${HTTP_COOKIE}=${clearances[issuer]}` } });
      assert.equal(withCookie.status, 200, `${acceptor} refused ${issuer}'s clearance: ${withCookie.body.slice(0, 200)}`);
      assert.ok(withCookie.headers['x-suite-origin'], 'the request reached origin');
    });
  }
});
