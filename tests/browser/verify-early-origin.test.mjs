// No browser: the verify endpoint while origin answers on the request headers alone (as many
// origins do, e.g. a 404 that never reads the body). A real Chromium form POST sent its body
// after its headers and hit this: the filter let the headers on to origin and held origin's
// early answer while waiting for the body, and the browser waited for nothing.
//   - The challenge page's way (solution in the query of an empty POST): the filter answers
//     from the headers: 303 + clearance, whatever origin would have said.
//   - A form body that comes 300 ms after the headers (API clients): an answer, never a hang;
//     if origin's answer comes first it goes on with x-signalbox-* stripped.
// Each transport of one Envoy process ('unrelated': its verify budget is otherwise unused).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { TRANSPORTS, VERIFY_PATH, postWithDelayedBody, request, shopOrigin, solvedChallenge } from './lib.mjs';

const UA = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36';

describe('verify while origin answers early', () => {
  for (const t of TRANSPORTS) {
    test(`${t.name}: solution in the query of an empty POST (the page's way) -> the filter's 303 + clearance`, async () => {
      const shop = shopOrigin('unrelated', t);
      const solved = await solvedChallenge(shop, UA);
      const q = new URLSearchParams({ challenge: solved.challenge, counter: String(solved.counter) });
      const r = await request(`${shop}${VERIFY_PATH}?${q}`, {
        method: 'POST',
        headers: { 'user-agent': UA, 'content-type': 'application/x-www-form-urlencoded', 'content-length': '0', 'x-suite-answer-early': '1' },
        timeoutMs: 5_000,
      });
      assert.equal(r.status, 303, `verify answered ${r.status} ${r.body.trim()}`);
      assert.match(String(r.headers['set-cookie'] ?? ''), new RegExp(`^${t.cookie}=`), `set-cookie should set ${t.cookie}; got: ${r.headers['set-cookie']}`);
    });

    test(`${t.name}: form body 300 ms after the headers, origin answers on the headers -> an answer, never a hang`, async () => {
      const shop = shopOrigin('unrelated', t);
      const solved = await solvedChallenge(shop, UA);
      const body = new URLSearchParams({ challenge: solved.challenge, counter: String(solved.counter) }).toString();
      const r = await postWithDelayedBody(`${shop}${VERIFY_PATH}`, {
        'user-agent': UA, 'content-type': 'application/x-www-form-urlencoded', 'x-suite-answer-early': '1',
      }, body, 300, { h2: t.listener === 'h2', timeoutMs: 5_000 }).catch((e) => {
        throw new Error(`${e.message}: origin's early answer was held and the filter's reply never came (the stream hangs)`);
      });
      console.log(`# ${t.name}: delayed form body answered ${r.status} by ${Number(r.status) === 303 ? 'the filter' : `origin (${r.body.trim()})`}`);
      assert.ok(Number(r.status) >= 200, `a status: ${r.status}`);
      assert.equal(r.headers['x-signalbox-leak'], undefined, 'origin\'s x-signalbox-* headers are stripped');
    });
  }
});
