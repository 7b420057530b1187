// How the page waits out a busy or unreachable gateway (lib/api.js): no server needed.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {ApiError, MESSAGES, base64url, newScanToken, retryAfterOf, retryDelay, transient, withRetry} = require('../lib/api');

const FAST = {attempts: 5, budget: 10000, base: 10, cap: 200};

/** An attempt that fails with `errors` in turn, then answers `answer`; counts its calls. */
function flaky(errors, answer = 'ok') {
  const left = errors.slice();
  const attempt = () => {
    attempt.calls += 1;
    return left.length ? Promise.reject(left.shift()) : Promise.resolve(answer);
  };
  attempt.calls = 0;
  return attempt;
}

const unavailable = (code = 'bus_unavailable', retryAfter = null) => new ApiError(code, 'down', 503, retryAfter);

test('503, 429, a proxy 502/504 and no answer at all are waited out; other errors are not', () => {
  assert.equal(transient(unavailable()), true);
  assert.equal(transient(new ApiError('rate_limited', '', 429, 3)), true);
  assert.equal(transient(new ApiError('http_502', '', 502)), true);
  assert.equal(transient(new ApiError('http_504', '', 504)), true);
  assert.equal(transient(new ApiError('network', 'request:fail')), true);
  assert.equal(transient(new ApiError('internal', '', 500)), false);
  assert.equal(transient(new ApiError('already_scanned', '', 409)), false);
  assert.equal(transient(new ApiError('scene_expired', '', 410)), false);
  assert.equal(MESSAGES.busy, '网络繁忙，正在重试…');
});

test('Retry-After is read whatever the case of its header, as seconds or as a date', () => {
  assert.equal(retryAfterOf({'Retry-After': '2'}), 2);
  assert.equal(retryAfterOf({'retry-after': '1'}), 1);
  assert.equal(retryAfterOf({'Content-Type': 'application/json'}), null);
  assert.equal(retryAfterOf(undefined), null);
  const soon = retryAfterOf({'Retry-After': new Date(Date.now() + 5000).toUTCString()});
  assert.ok(soon > 3 && soon <= 5, soon);
  assert.equal(retryAfterOf({'Retry-After': 'Wed, 21 Oct 2015 07:28:00 GMT'}), 0); // past: at once
});

test('the wait follows Retry-After, capped, with a little jitter; without one it backs off', () => {
  const policy = {attempts: 8, budget: 60000, base: 500, cap: 10000};
  for (let i = 0; i < 20; i += 1) {
    const wait = retryDelay(unavailable('rpc_timeout', 1), 0, policy);
    assert.ok(wait >= 1000 && wait <= 1250, wait);
    const capped = retryDelay(new ApiError('rate_limited', '', 429, 120), 0, policy);
    assert.ok(capped >= 10000 && capped <= 10500, capped);
  }
  const first = retryDelay(new ApiError('network'), 0, policy);
  const third = retryDelay(new ApiError('network'), 2, policy);
  assert.ok(first >= 500 && first <= 625, first);
  assert.ok(third >= 2000 && third <= 2500, third);
});

test('a request is retried until it succeeds, and each wait is announced', async () => {
  const attempt = flaky([unavailable(), new ApiError('network'), unavailable('store_unavailable')]);
  const waits = [];
  const answer = await withRetry(attempt, {policy: FAST, onWait: (err) => waits.push(err.code)});
  assert.equal(answer, 'ok');
  assert.equal(attempt.calls, 4);
  assert.deepEqual(waits, ['bus_unavailable', 'network', 'store_unavailable']);
});

test('an error waiting cannot fix is given up at once', async () => {
  const attempt = flaky([new ApiError('already_scanned', '', 409)]);
  await assert.rejects(withRetry(attempt, {policy: FAST}), {code: 'already_scanned'});
  assert.equal(attempt.calls, 1);
});

test('retries are bounded: by attempts, by the budget, and never past the scene expiry', async () => {
  const down = () => Array.from({length: 20}, () => unavailable());

  const limited = flaky(down());
  await assert.rejects(withRetry(limited, {policy: FAST}), {code: 'bus_unavailable'});
  assert.equal(limited.calls, FAST.attempts);

  const budget = flaky(down());
  await assert.rejects(withRetry(budget, {policy: Object.assign({}, FAST, {budget: 25})}), {code: 'bus_unavailable'});
  assert.ok(budget.calls < FAST.attempts, budget.calls);

  // The scene expires in 1.5 s and the gateway asks for 1 s: one retry fits, a second would not.
  const expiring = flaky(Array.from({length: 5}, () => unavailable('bus_unavailable', 1)));
  const deadline = Date.now() + 1500;
  const policy = Object.assign({}, FAST, {cap: 5000});
  await assert.rejects(withRetry(expiring, {policy, deadline}), {code: 'bus_unavailable'});
  assert.equal(expiring.calls, 2);
  assert.ok(Date.now() <= deadline, 'a retry went past the expiry');
});

// --- the page's own scan token (a retried scan is answered again) --------------------------------

test('base64url encodes as RFC 4648 §5 without padding', () => {
  const bytes = (...values) => new Uint8Array(values).buffer;
  assert.equal(base64url(bytes()), '');
  assert.equal(base64url(bytes(0xfb)), '-w');
  assert.equal(base64url(bytes(0xfb, 0xff)), '-_8');
  assert.equal(base64url(bytes(0xfb, 0xff, 0xbf)), '-_-_');
  const random = require('node:crypto').randomBytes(32);
  assert.equal(base64url(random.buffer.slice(random.byteOffset, random.byteOffset + 32)), random.toString('base64url'));
});

test('a scan token is 32 bytes of getRandomValues, or none where the runtime has none', async () => {
  const bytes = new Uint8Array(32).fill(7).buffer;
  const asked = [];
  const wx = {getRandomValues: (options) => { asked.push(options.length); options.success({randomValues: bytes}); }};
  assert.equal(await newScanToken(wx), 'BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc');
  assert.deepEqual(asked, [32]);
  assert.equal(await newScanToken({}), ''); // a base library before 2.20.2: the gateway mints one
  assert.equal(await newScanToken({getRandomValues: (options) => options.fail({errMsg: 'fail'})}), '');
  const short = {getRandomValues: (options) => options.success({randomValues: new Uint8Array(8).buffer})};
  assert.equal(await newScanToken(short), ''); // never a weak token
});
