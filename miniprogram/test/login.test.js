// The scan-login page against a real gateway: WXLOGIN_GATEWAY_URL and WXLOGIN_SIM_URL must point at a
// running stack (tests/integration/test_miniprogram.py starts one and runs this file).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const {createLoginPage} = require('../lib/login-page');
const {createWx, mountPage, httpJson} = require('./fake-wx');

const GATEWAY = process.env.WXLOGIN_GATEWAY_URL;
const SIM = process.env.WXLOGIN_SIM_URL;
const SITE = process.env.WXLOGIN_SITE_NAME || 'wxlogin demo';
const EXPIRED = process.env.WXLOGIN_EXPIRED_SCENE;
const live = {skip: !(GATEWAY && SIM) && 'WXLOGIN_GATEWAY_URL / WXLOGIN_SIM_URL not set'};

/**
 * The web site's side: a code shown in a browser, its state, the login it completes. Each call spends
 * one of the gateway's per-IP issue burst (tests/integration/test_miniprogram.py raises it to 30, one
 * of them the expired scene's; the default is 10).
 */
async function browserCode() {
  const issued = await httpJson('POST', GATEWAY + '/api/login/qrcode', null);
  assert.equal(issued.status, 201);
  const {scene, ticket} = issued.data;
  return {
    scene,
    state: async () => {
      const url = GATEWAY + '/api/login/status?scene=' + encodeURIComponent(scene) + '&wait=0';
      return (await httpJson('GET', url, null, {'X-Login-Ticket': ticket})).data.state;
    },
    complete: () => httpJson('POST', GATEWAY + '/api/login/complete', {scene, ticket})
  };
}

// The page's retries in these tests: Retry-After is honoured as it is (1 s here), other waits are short.
const RETRY = {attempts: 4, budget: 20000, base: 20, cap: 2000};

/**
 * A phone: the page on a `wx` stand-in, plus what these tests need to see and steer beyond fake-wx:
 * `scans()` / `confirms()` are the bodies the page sent (a missing `code` key is a code-less call),
 * `times(path)` when; `seen` every setData patch; `logins` decides what the next wx.login calls give
 * before the simulator's codes do (a code, or null for a failed wx.login); `once[path]` steers the next
 * call to that path (a list steers the next calls, one each): `{edit(res)}` changes the gateway's
 * answer, `{answer}` is answered in the gateway's place without sending, `{lose: true}` is sent but
 * its answer is lost on the way back (the page sees a network failure).
 */
function phone({account = null, currentPages} = {}) {
  const wx = createWx({simUrl: SIM, account});
  const sent = [];
  const logins = [];
  const once = {};
  const seen = [];

  const request = wx.request;
  wx.request = (options) => {
    const path = new URL(options.url).pathname;
    sent.push({path, data: Object.assign({}, options.data), at: Date.now()});
    let steer = once[path];
    if (Array.isArray(steer)) {
      steer = steer.shift();
      if (!once[path].length) delete once[path];
    } else {
      delete once[path];
    }
    if (steer && steer.answer) {
      wx.calls.requests.push({method: options.method, url: options.url});
      setImmediate(() => options.success(steer.answer));
      return {abort() {}};
    }
    if (steer && steer.lose) {
      return request(Object.assign({}, options, {success: () => options.fail({errMsg: 'request:fail timeout'})}));
    }
    if (!steer) return request(options);
    return request(Object.assign({}, options, {success: (res) => options.success(steer.edit(res) || res)}));
  };

  const login = wx.login;
  wx.login = (options) => {
    if (!logins.length) return login(options);
    const code = logins.shift();
    wx.calls.login += 1;
    if (code === null) return setImmediate(() => options.fail({errMsg: 'login:fail'}));
    wx.calls.codes.push(code);
    setImmediate(() => options.success({code, errMsg: 'login:ok'}));
  };

  const config = {server: GATEWAY, timeout: 5000, retry: RETRY};
  const page = mountPage(createLoginPage({wx, config, currentPages}));
  const setData = page.setData;
  page.setData = function (patch) { seen.push(Object.assign({}, patch)); setData.call(this, patch); };
  const bodies = (path) => sent.filter((r) => r.path === path).map((r) => r.data);
  const times = (path) => sent.filter((r) => r.path === path).map((r) => r.at);
  return {
    wx, page, logins, once, seen, times,
    scans: () => bodies('/api/mp/scan'), confirms: () => bodies('/api/mp/confirm')
  };
}

/** What the gateway answers while a service behind it is down (HTTP 503 with Retry-After). */
function unavailable(code = 'bus_unavailable', retryAfter = '1') {
  return {
    answer: {
      statusCode: 503,
      data: {error: {code, message: 'try again shortly'}},
      header: {'Content-Type': 'application/json; charset=utf-8', 'Retry-After': retryAfter},
      errMsg: 'request:ok'
    }
  };
}

/** The page told the user it is retrying (and not that something failed) at some point. */
const showedBusy = (seen) => seen.some((patch) => patch.retrying === true && patch.message === '网络繁忙，正在重试…');

/** A code the simulated WeChat refuses (as it refuses an expired or spent one). */
const REFUSED_CODE = '0'.repeat(32);

const agree = (page) => page.onAgreeChange({detail: {value: ['agree']}});

test('the page sends a wx.login code with the scan, shows who asks, and confirms without another', live, async () => {
  const code = await browserCode();
  const {wx, page, scans, confirms} = phone();
  await page.onLoad({scene: encodeURIComponent(code.scene)});

  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.site, SITE);
  assert.ok(page.data.browser.length > 0);
  assert.equal(page.data.place, '本机/内网 (local network)'); // where the browser is, never its address
  assert.match(page.data.requestedAt, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  assert.equal(wx.calls.login, 1);
  // With how WeChat opened the page: 1047, a camera scan (security review M4).
  // And with a scan token of the page's own (32 random bytes), so that a retry is answered again.
  assert.match(page.ownScanToken, /^[A-Za-z0-9_-]{43}$/);
  const scanned = {scene: code.scene, code: wx.calls.codes[0], launch_scene: 1047, scan_token: page.ownScanToken};
  assert.deepEqual(scans(), [scanned]);
  assert.equal(page.identified, true); // the gateway exchanged it
  assert.equal(await code.state(), 'scanned'); // identified, yet nobody is logged in before the tap

  await page.onConfirm(); // not agreed yet: nothing is sent
  assert.equal(page.data.status, 'ready');
  assert.match(page.data.message, /同意/);
  assert.equal(wx.calls.login, 1);
  assert.equal(confirms().length, 0);

  agree(page);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(wx.calls.login, 1); // the tap asked WeChat for nothing
  assert.equal(confirms().length, 1);
  assert.equal('code' in confirms()[0], false);
  assert.equal(confirms()[0].scan_token, page.ownScanToken);
  assert.equal(await code.state(), 'confirmed');

  const done = await code.complete();
  assert.equal(done.status, 200);
  assert.equal(done.data.user.openid, wx.openid);
});

test('when wx.login fails the page scans without a code and confirms with one', live, async () => {
  const code = await browserCode();
  const {wx, page, logins, scans, confirms} = phone();
  logins.push(null);
  await page.onLoad({scene: code.scene});
  assert.equal(page.data.status, 'ready');
  assert.deepEqual(scans(), [{scene: code.scene, launch_scene: 1047, scan_token: page.ownScanToken}]);
  assert.equal(page.identified, false);

  agree(page);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(wx.calls.login, 2);
  assert.equal(confirms()[0].code, wx.calls.codes[0]);
  assert.equal(await code.state(), 'confirmed');
});

test('a code-less confirm answered code_required is retried once, at once, with a fresh code', live, async () => {
  const code = await browserCode();
  const {wx, page, logins, once, confirms} = phone();
  // The gateway did not identify this phone, but the page reads `identified: true` (as if the gateway
  // had lost what the scan's code gave it): the gateway's code_required must not cost the user a tap.
  logins.push(REFUSED_CODE);
  once['/api/mp/scan'] = {edit: (res) => { res.data.identified = true; }};
  await page.onLoad({scene: code.scene});
  assert.equal(page.identified, true);

  let refused = null;
  once['/api/mp/confirm'] = {edit: (res) => { refused = res; }};
  agree(page);
  await page.onConfirm();
  assert.equal(refused.statusCode, 400);
  assert.equal(refused.data.error.code, 'code_required');
  assert.equal(page.data.status, 'confirmed');
  assert.equal(page.identified, false);
  assert.equal(wx.calls.login, 2);
  assert.equal(confirms().length, 2);
  assert.equal('code' in confirms()[0], false);
  assert.equal(confirms()[1].code, wx.calls.codes[1]);
  assert.equal(await code.state(), 'confirmed');
});

test('a code-less confirm answered code_invalid is retried the same way', live, async () => {
  const code = await browserCode();
  const {wx, page, once, confirms} = phone();
  await page.onLoad({scene: code.scene});
  assert.equal(page.identified, true);

  // The gateway has no state that answers a code-less confirm so; the page must treat it as code_required.
  once['/api/mp/confirm'] = {
    answer: {statusCode: 400, data: {error: {code: 'code_invalid', message: 'invalid code'}}, errMsg: 'request:ok'}
  };
  agree(page);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(wx.calls.login, 2);
  assert.equal(confirms().length, 2);
  assert.equal('code' in confirms()[0], false);
  assert.equal(confirms()[1].code, wx.calls.codes[1]);
  assert.equal(await code.state(), 'confirmed');
});

test('a second phone scanning the same code is told it was already scanned', live, async () => {
  const code = await browserCode();
  const first = phone();
  await first.page.onLoad({scene: code.scene});
  assert.equal(first.page.data.status, 'ready');

  const second = phone();
  await second.page.onLoad({scene: code.scene});
  assert.equal(second.page.data.status, 'failed');
  assert.equal(second.page.data.message, '该二维码已被其他微信扫描');
  assert.equal(second.page.data.canRetry, false);
});

test('取消 cancels the login and the browser sees it', live, async () => {
  const code = await browserCode();
  const {wx, page} = phone();
  await page.onLoad({scene: code.scene});
  const logins = wx.calls.login; // the scan's
  await page.onCancel();
  assert.equal(page.data.status, 'cancelled');
  assert.equal(wx.calls.login, logins); // cancelling needs no code
  assert.equal(await code.state(), 'cancelled');
  page.onClose();
  assert.equal(wx.calls.exits, 1);
});

test('an expired code says so and offers no confirm', live, async (t) => {
  if (!EXPIRED) return t.skip('WXLOGIN_EXPIRED_SCENE not set');
  const {page} = phone();
  await page.onLoad({scene: EXPIRED});
  assert.equal(page.data.status, 'failed');
  assert.equal(page.data.message, '二维码已过期，请在电脑上刷新后重新扫码');
  assert.equal(page.data.canRetry, false);
});

test('an unknown code and a missing scene are reported', live, async () => {
  const unknown = phone();
  await unknown.page.onLoad({scene: crypto.randomBytes(24).toString('base64url')});
  assert.equal(unknown.page.data.status, 'failed');
  assert.equal(unknown.page.data.message, '二维码无效，请在电脑上刷新后重新扫码');

  const empty = phone();
  await empty.page.onLoad({});
  assert.equal(empty.page.data.status, 'failed');
  assert.equal(empty.wx.calls.requests.length, 0);
  assert.equal(empty.wx.calls.login, 0);
});

test('network errors while loading and on a code-less confirm can be retried', live, async () => {
  const code = await browserCode();
  const {wx, page, scans, confirms} = phone();
  wx.offline = true;
  await page.onLoad({scene: code.scene});
  // The page retried by itself (a few times, quickly here), then gave up and offers 重试.
  assert.equal(scans().length, RETRY.attempts);
  assert.equal(page.data.status, 'failed');
  assert.equal(page.data.retrying, false);
  assert.equal(page.data.message, '网络错误，请检查网络后重试');
  assert.equal(page.data.canRetry, true);
  assert.equal(await code.state(), 'pending');

  wx.offline = false;
  await page.onRetry();
  assert.equal(page.data.status, 'ready');
  assert.equal(await code.state(), 'scanned');
  // Its own retries sent the same code; the tapped retry brought a code of its own (the first one
  // may have reached the gateway).
  const sentCodes = scans().map((body) => body.code);
  assert.deepEqual(sentCodes, [...Array(RETRY.attempts).fill(wx.calls.codes[0]), wx.calls.codes[1]]);
  assert.notEqual(wx.calls.codes[0], wx.calls.codes[1]);
  assert.equal(page.identified, true);

  agree(page);
  wx.offline = true;
  await page.onConfirm();
  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.message, '网络错误，请检查网络后重试');
  assert.equal(page.identified, true);
  assert.equal(await code.state(), 'scanned');

  wx.offline = false;
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(wx.calls.login, 2); // the two scans'; neither tap asked WeChat
  assert.equal(confirms().length, RETRY.attempts + 1); // the first tap's own retries, then the second tap
  assert.ok(confirms().every((body) => !('code' in body)));
  assert.equal(await code.state(), 'confirmed');
});

test('after a scan WeChat did not identify, every confirm tap brings a new wx.login code', live, async () => {
  const code = await browserCode();
  const {wx, page, logins, scans, confirms} = phone();
  logins.push(REFUSED_CODE);
  await page.onLoad({scene: code.scene});
  assert.equal(page.data.status, 'ready'); // the scan stands: only the identification failed
  assert.equal(scans()[0].code, REFUSED_CODE);
  assert.equal(page.identified, false);
  assert.equal(await code.state(), 'scanned');

  // A network error on confirm keeps the page; the next tap uses a new wx.login code.
  agree(page);
  wx.offline = true;
  await page.onConfirm();
  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.message, '网络错误，请检查网络后重试');
  assert.equal(await code.state(), 'scanned');

  wx.offline = false;
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(wx.calls.login, 3);
  assert.notEqual(wx.calls.codes[1], wx.calls.codes[2]);
  // The first tap's retries sent its code again; the second tap brought a new one.
  const first = Array(RETRY.attempts).fill(wx.calls.codes[1]);
  assert.deepEqual(confirms().map((body) => body.code), [...first, wx.calls.codes[2]]);
  assert.equal(await code.state(), 'confirmed');
  const done = await code.complete();
  assert.equal(done.status, 200);
  assert.equal(done.data.user.openid, wx.openid);
});

test('a scan answered 503 with Retry-After says 网络繁忙，正在重试… and goes on after the wait', live, async () => {
  const code = await browserCode();
  const {wx, page, once, seen, scans, times} = phone();
  once['/api/mp/scan'] = [unavailable('bus_unavailable'), unavailable('store_unavailable')];
  await page.onLoad({scene: code.scene});

  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.retrying, false);
  assert.equal(page.data.message, '');
  assert.ok(showedBusy(seen));
  assert.ok(!seen.some((patch) => patch.status === 'failed'));
  // Every attempt carried the one code; each came after the Retry-After (1 s), plus a little jitter.
  assert.equal(scans().length, 3);
  assert.ok(scans().every((body) => body.code === wx.calls.codes[0] && body.scan_token === page.ownScanToken));
  assert.equal(wx.calls.login, 1);
  const at = times('/api/mp/scan');
  for (let i = 1; i < at.length; i += 1) {
    assert.ok(at[i] - at[i - 1] >= 950 && at[i] - at[i - 1] < 2000, at[i] - at[i - 1]);
  }
  assert.equal(page.identified, true);
  assert.equal(await code.state(), 'scanned');
});

test('a confirm answered 503 is retried until the gateway is back and confirms once', live, async () => {
  const code = await browserCode();
  const {wx, page, once, seen, confirms} = phone();
  await page.onLoad({scene: code.scene});
  assert.equal(page.identified, true);

  agree(page);
  once['/api/mp/confirm'] = [unavailable('rpc_timeout'), unavailable('service_unavailable')];
  const tapped = page.onConfirm();
  assert.equal(page.data.status, 'confirming');
  await tapped;
  assert.equal(page.data.status, 'confirmed');
  assert.equal(page.data.retrying, false);
  assert.ok(showedBusy(seen));
  assert.equal(confirms().length, 3);
  assert.ok(confirms().every((body) => !('code' in body)));
  assert.equal(wx.calls.login, 1); // the scan's only
  assert.equal(await code.state(), 'confirmed');
  const done = await code.complete();
  assert.equal(done.status, 200);
  assert.equal(done.data.user.openid, wx.openid);
});

test('a confirm whose answer was lost is sent again with the same code and counts as confirmed', live, async () => {
  const code = await browserCode();
  const {wx, page, logins, once, confirms} = phone();
  logins.push(REFUSED_CODE); // the scan does not identify: the confirm brings a code
  await page.onLoad({scene: code.scene});
  assert.equal(page.identified, false);

  agree(page);
  once['/api/mp/confirm'] = [{lose: true}];
  await page.onConfirm();
  // The first confirm landed; its repeat (same code) is answered `confirmed` by the gateway, not
  // refused, and nothing is confirmed twice.
  assert.equal(page.data.status, 'confirmed');
  assert.equal(confirms().length, 2);
  assert.equal(confirms()[0].code, wx.calls.codes[1]);
  assert.equal(confirms()[1].code, wx.calls.codes[1]);
  assert.equal(wx.calls.login, 2);
  assert.equal(await code.state(), 'confirmed');
  const done = await code.complete();
  assert.equal(done.status, 200);
  assert.equal(done.data.user.openid, wx.openid);
});

test('already_confirmed after a confirm of this phone went unanswered is taken as confirmed', live, async () => {
  const code = await browserCode();
  const {page, once, confirms} = phone();
  await page.onLoad({scene: code.scene});

  agree(page);
  // The first confirm lands but its answer is lost; the repeat is answered already_confirmed (as the
  // gateway does when it cannot match the repeat to the first). Only this phone's scan token can
  // confirm the scene, so that confirm was this one.
  once['/api/mp/confirm'] = [{lose: true}, {
    answer: {statusCode: 409, data: {error: {code: 'already_confirmed', message: 'x'}}, header: {}, errMsg: 'request:ok'}
  }];
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(page.data.message, '已确认登录，请回到电脑继续');
  assert.equal(confirms().length, 2);
  assert.equal(await code.state(), 'confirmed');
});

test('a scan whose answer was lost is sent again with the page\'s own scan token and answered', live, async () => {
  const code = await browserCode();
  const {wx, page, once, scans} = phone();
  once['/api/mp/scan'] = [{lose: true}]; // it reached the gateway; the answer did not come back
  await page.onLoad({scene: code.scene});
  assert.equal(scans().length, 2);
  assert.equal(scans()[1].scan_token, scans()[0].scan_token);
  assert.equal(page.data.status, 'ready');
  assert.equal(page.scanToken, page.ownScanToken);
  assert.equal(page.identified, true);
  assert.equal(wx.calls.login, 1);
  agree(page);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(await code.state(), 'confirmed');
});

test('on a runtime without getRandomValues a scan whose answer was lost asks for a new code', live, async () => {
  // Without a token of its own, the gateway mints a new scan token per request, so the page cannot
  // get back the token of a scan that landed unheard: it says so instead of "scanned by another WeChat".
  const code = await browserCode();
  const {wx, page, once, scans} = phone();
  delete wx.getRandomValues; // a base library before 2.20.2
  once['/api/mp/scan'] = [{lose: true}];
  await page.onLoad({scene: code.scene});
  assert.equal(scans().length, 2);
  assert.equal(page.data.status, 'failed');
  assert.equal(page.data.message, '扫码未能完成，请在电脑上刷新二维码后重新扫码');
  assert.equal(page.data.canRetry, false);
  assert.equal(await code.state(), 'scanned');
});

// --- WeChat DevTools against a gateway: each first-hour mistake is named (docs/miniprogram.md) -----

/** WeChat DevTools with the project's placeholder AppID, or with the developer's own. */
const PLACEHOLDER_APP = {appId: 'wx0000000000000000', envVersion: 'develop'};
const OWN_APP = {appId: 'wx1234567890abcdef', envVersion: 'develop'};

test('with the placeholder AppID wx.login fails and the page says so, before and after 确认登录', live, async () => {
  const code = await browserCode();
  const {wx, page, logins, scans, confirms} = phone({account: PLACEHOLDER_APP});
  const realLogin = wx.login;
  wx.login = (options) => { wx.calls.login += 1; setImmediate(() => options.fail({errMsg: 'login:fail appid invalid'})); };
  await page.onLoad({scene: code.scene});
  const expected = 'wx.login 失败（login:fail appid invalid）：AppID “wx0000000000000000” 是占位符或无效。' +
    '请在 project.config.json 填你的小程序 AppID，或在开发者工具里使用“测试号”。';
  assert.equal(page.data.status, 'ready'); // the scan itself works without a code
  assert.deepEqual(scans(), [{scene: code.scene, launch_scene: 1047, scan_token: page.ownScanToken}]);
  assert.equal(page.data.message, expected);

  agree(page);
  await page.onConfirm();
  assert.equal(page.data.status, 'ready'); // fix the AppID and tap again
  assert.equal(page.data.message, expected);
  assert.equal(confirms().length, 0);
  assert.equal(wx.calls.login, 2);
  assert.equal(await code.state(), 'scanned');

  wx.login = realLogin; // the AppID fixed
  assert.equal(logins.length, 0);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
});

test('tourist mode\'s mock code is named, and the scan still shows who asks', live, async () => {
  const code = await browserCode();
  const {wx, page, logins, scans, confirms} = phone({account: {appId: 'touristappid', envVersion: 'develop'}});
  logins.push('the code is a mock one', 'the code is a mock one');
  await page.onLoad({scene: code.scene});
  const tourist = '开发者工具的“游客模式”只给出假的登录 code（the code is a mock one），网关无法用它登录。' +
    '请用你自己的 AppID 或“测试号”导入项目，不要用游客模式。';
  assert.equal(page.data.status, 'ready');
  // The mock never reaches the gateway.
  assert.deepEqual(scans(), [{scene: code.scene, launch_scene: 1047, scan_token: page.ownScanToken}]);
  assert.equal(page.data.message, tourist);
  agree(page);
  await page.onConfirm();
  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.message, tourist);
  assert.equal(confirms().length, 0);
  assert.equal(wx.calls.login, 2);
});

test('a gateway that refuses this mini-program\'s codes is named as an AppID or any-code mismatch', live, async () => {
  const code = await browserCode();
  const {page, logins, confirms} = phone({account: OWN_APP});
  logins.push(REFUSED_CODE, REFUSED_CODE); // what a simulator with any-code off does to DevTools' codes
  await page.onLoad({scene: code.scene});
  assert.equal(page.identified, false);
  agree(page);
  await page.onConfirm();
  assert.equal(confirms().length, 1);
  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.message,
    '网关不接受这个小程序的登录 code（code_invalid）：网关的 WXLOGIN_APPID 须是本小程序的 AppID（wx1234567890abcdef）；' +
    '对着 make demo 时，微信模拟器须开启任意 code 模式（WXLOGIN_SIM_ANY_CODE 不为 off）。');
  assert.equal(await code.state(), 'scanned');
});

test('a server outside the domain list is named at once, with the setting to tick, and not retried', live, async () => {
  const code = await browserCode();
  const {wx, page, scans} = phone({account: OWN_APP});
  wx.requestError = 'request:fail url not in domain list';
  await page.onLoad({scene: code.scene});
  assert.equal(scans().length, 1);
  assert.equal(page.data.status, 'failed');
  assert.equal(page.data.message,
    '请求被微信拦截（request:fail url not in domain list）：' + GATEWAY + ' 不在 request 合法域名中。开发者工具里：' +
    '详情 → 本地设置 → 勾选“不校验合法域名”；正式版：在小程序后台 开发管理 → 开发设置 → 服务器域名 加入该域名。');
  assert.equal(await code.state(), 'pending');
});

test('in DevTools an unreachable gateway shows the errMsg and what to check', live, async () => {
  const code = await browserCode();
  const {wx, page} = phone({account: OWN_APP});
  wx.requestError = 'request:fail errcode:-102 cronet_error_code:-102 error_msg:net::ERR_CONNECTION_REFUSED';
  await page.onLoad({scene: code.scene});
  assert.equal(page.data.status, 'failed');
  assert.equal(page.data.canRetry, true);
  assert.equal(page.data.message,
    '网络错误（request:fail errcode:-102 cronet_error_code:-102 error_msg:net::ERR_CONNECTION_REFUSED）：连不上 ' +
    GATEWAY + '。请检查 config.js 的 server 是否正确、网关是否在运行；开发者工具里还要勾选 详情 → 本地设置 →“不校验合法域名”。');
  wx.requestError = null;
  await page.onRetry();
  assert.equal(page.data.status, 'ready');
});

// --- the page in the mini-program: opened from the home page, or on its own ------------------------

test('opened from the home page, 完成 goes back there; opened without a code it offers the home page', live, async () => {
  const code = await browserCode();
  const fromHome = phone({currentPages: () => [{route: 'pages/index/index'}, {route: 'pages/login/index'}]});
  await fromHome.page.onLoad({scene: code.scene});
  agree(fromHome.page);
  await fromHome.page.onConfirm();
  assert.equal(fromHome.page.data.status, 'confirmed');
  fromHome.page.onClose();
  assert.deepEqual(fromHome.wx.calls.navigations, [{how: 'navigateBack', url: undefined, delta: 1}]);
  assert.equal(fromHome.wx.calls.exits, 0);

  const bare = phone();
  await bare.page.onLoad({});
  assert.equal(bare.page.data.status, 'failed');
  assert.equal(bare.page.data.message, '没有读到二维码信息，请重新扫码');
  bare.page.onHome();
  assert.deepEqual(bare.wx.calls.navigations, [{how: 'reLaunch', url: '/pages/index/index', delta: undefined}]);
});
