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

/** The web site's side: a code shown in a browser, its state, the login it completes. */
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

function phone() {
  const wx = createWx({simUrl: SIM});
  const page = mountPage(createLoginPage({wx, config: {server: GATEWAY, timeout: 5000}}));
  return {wx, page};
}

const agree = (page) => page.onAgreeChange({detail: {value: ['agree']}});

test('the page shows who asks, needs the agreement, and confirms with a fresh wx.login code', live, async () => {
  const code = await browserCode();
  const {wx, page} = phone();
  await page.onLoad({scene: encodeURIComponent(code.scene)});

  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.site, SITE);
  assert.ok(page.data.browser.length > 0);
  assert.equal(page.data.ip, '127.0.0.1');
  assert.match(page.data.requestedAt, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  assert.equal(await code.state(), 'scanned');

  await page.onConfirm(); // not agreed yet: nothing is sent
  assert.equal(page.data.status, 'ready');
  assert.match(page.data.message, /同意/);
  assert.equal(wx.calls.login, 0);

  agree(page);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(wx.calls.login, 1);
  assert.equal(await code.state(), 'confirmed');

  const done = await code.complete();
  assert.equal(done.status, 200);
  assert.equal(done.data.user.openid, wx.openid);
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
  await page.onCancel();
  assert.equal(page.data.status, 'cancelled');
  assert.equal(wx.calls.login, 0);
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
});

test('a network error while loading can be retried', live, async () => {
  const code = await browserCode();
  const {wx, page} = phone();
  wx.offline = true;
  await page.onLoad({scene: code.scene});
  assert.equal(page.data.status, 'failed');
  assert.equal(page.data.message, '网络错误，请检查网络后重试');
  assert.equal(page.data.canRetry, true);
  assert.equal(await code.state(), 'pending');

  wx.offline = false;
  await page.onRetry();
  assert.equal(page.data.status, 'ready');
  assert.equal(await code.state(), 'scanned');
});

test('a network error on confirm keeps the page; the next tap uses a new wx.login code', live, async () => {
  const code = await browserCode();
  const {wx, page} = phone();
  await page.onLoad({scene: code.scene});
  agree(page);
  wx.offline = true;
  await page.onConfirm();
  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.message, '网络错误，请检查网络后重试');
  assert.equal(await code.state(), 'scanned');

  wx.offline = false;
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(wx.calls.login, 2);
  assert.notEqual(wx.calls.codes[0], wx.calls.codes[1]);
  assert.equal(await code.state(), 'confirmed');
});
