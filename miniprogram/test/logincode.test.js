// 输入网页上的登录码: the home page takes the code a web page open on this phone shows, and the login page
// enters it like a scan (same confirm screen, same states). The live tests need the environment of
// login.test.js (a gateway and the WeChat simulator).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {createHomePage} = require('../lib/home-page');
const {createLoginPage} = require('../lib/login-page');
const {formatTyping, loginCodeProblem, normalizeLoginCode} = require('../lib/logincode');
const {createWx, mountPage, httpJson} = require('./fake-wx');

const GATEWAY = process.env.WXLOGIN_GATEWAY_URL;
const SIM = process.env.WXLOGIN_SIM_URL;
const live = {skip: !(GATEWAY && SIM) && 'WXLOGIN_GATEWAY_URL / WXLOGIN_SIM_URL not set'};

function home(wx) {
  return mountPage(createHomePage({wx, config: {server: GATEWAY || 'http://127.0.0.1:1'}, app: {globalData: {session: null}}}));
}

/** What a web page open on a phone asks for: a scene with a login code to type. */
async function phoneBrowserIssue() {
  const issued = await httpJson('POST', GATEWAY + '/api/login/qrcode', {login_code: true});
  assert.equal(issued.status, 201);
  assert.match(issued.data.login_code, /^[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8}$/);
  return issued.data;
}

/** The login page as the home page's navigation opens it (the query as the runtime hands it over). */
async function openLoginPage(wx, url) {
  const query = Object.fromEntries(url.split('?')[1].split('&').map((pair) => pair.split('=')));
  const page = mountPage(createLoginPage({wx, config: {server: GATEWAY}, currentPages: () => [{}, {}]}));
  await page.onLoad(query);
  return page;
}

test('a login code is read however it is typed, and look-alikes are explained', () => {
  assert.equal(normalizeLoginCode('k7qx-m2pa'), 'K7QXM2PA');
  assert.equal(normalizeLoginCode(' K7QX M2PA '), 'K7QXM2PA');
  assert.equal(normalizeLoginCode('K7QX-M2P0'), ''); // 0 is not in the alphabet
  assert.equal(normalizeLoginCode('K7QX-M2P'), '');
  assert.equal(formatTyping('k7q'), 'K7Q');
  assert.equal(formatTyping('k7qxm2'), 'K7QX-M2');
  assert.equal(formatTyping('k7qx-m2pa99'), 'K7QX-M2PA');
  assert.equal(formatTyping('k7#qx m2'), 'K7QX-M2');
  assert.equal(loginCodeProblem(''), '请输入网页上显示的 8 位登录码');
  assert.match(loginCodeProblem('K7QX-M2PO'), /没有 0、1、I、O、L/);
  assert.match(loginCodeProblem('K7QX-M2'), /8 位/);
  assert.equal(loginCodeProblem('K7QX-M2PA'), '');
});

test('the home page checks the code before it opens the confirm page with it', async () => {
  const wx = createWx({simUrl: SIM || 'http://127.0.0.1:1'});
  const page = home(wx);
  assert.equal(page.data.loginCode, '');
  // The input shows what was typed in the code's own form (its return value replaces the text).
  assert.equal(page.onLoginCodeInput({detail: {value: 'k7qxm2p1'}}), 'K7QX-M2P1');
  await page.onEnterCode();
  assert.match(page.data.codeMessage, /没有 0、1、I、O、L/);
  assert.deepEqual(wx.calls.navigations, []);
  assert.equal(wx.calls.login, 0); // nothing asked of WeChat for a code that cannot be one

  page.onLoginCodeInput({detail: {value: 'k7qx-m2pa'}});
  assert.equal(page.data.codeMessage, '');
  await page.onEnterCode();
  assert.deepEqual(wx.calls.navigations, [{how: 'navigateTo', url: '/pages/login/index?login_code=K7QXM2PA', delta: undefined}]);
});

test('a typed code opens the same confirm screen as a scan, and the web page logs in', live, async () => {
  const {scene, ticket, login_code: loginCode} = await phoneBrowserIssue();
  const wx = createWx({simUrl: SIM});
  const homePage = home(wx);
  homePage.onLoginCodeInput({detail: {value: loginCode.toLowerCase()}});
  await homePage.onEnterCode();
  const page = await openLoginPage(wx, wx.calls.navigations[0].url);
  assert.equal(page.data.status, 'ready', page.data.message);
  assert.equal(page.scene, scene); // the code named this page's scene
  assert.equal(page.data.site, process.env.WXLOGIN_SITE_NAME || page.data.site);
  // The browser sees the scan as it would see a scan of the code.
  const seen = await httpJson('GET', GATEWAY + '/api/login/status?scene=' + scene + '&wait=0', null, {'X-Login-Ticket': ticket});
  assert.equal(seen.data.state, 'scanned');

  assert.equal(page.data.fromImage, false); // typed, not recognised in a picture: no red warning
  page.onAgreeChange({detail: {value: ['agree']}});
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed', page.data.message);
  assert.equal(wx.calls.login, 1); // the code sent with the entry identified the user: no second wx.login
  const done = await httpJson('POST', GATEWAY + '/api/login/complete', {scene, ticket});
  assert.equal(done.status, 200);
  assert.equal(done.data.user.openid, wx.openid);
});

test('a typed code whose answer was lost is entered again with the same code and scan token', live, async () => {
  const {scene, ticket, login_code: loginCode} = await phoneBrowserIssue();
  const wx = createWx({simUrl: SIM});
  const request = wx.request;
  const entries = [];
  wx.request = (options) => {
    if (!options.url.endsWith('/api/mp/enter_code')) return request(options);
    entries.push(options.data);
    if (entries.length > 1) return request(options);
    // The first entry reaches the gateway; its answer does not come back.
    return request(Object.assign({}, options, {success: () => options.fail({errMsg: 'request:fail timeout'})}));
  };
  const page = await openLoginPage(wx, '/pages/login/index?login_code=' + loginCode);
  assert.equal(page.data.status, 'ready', page.data.message);
  assert.equal(entries.length, 2);
  assert.deepEqual(entries[1], entries[0]); // the same wx.login code and the same scan token
  assert.match(entries[0].scan_token, /^[A-Za-z0-9_-]{43}$/);
  assert.equal(page.scene, scene);
  page.onAgreeChange({detail: {value: ['agree']}});
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed', page.data.message);
  const done = await httpJson('POST', GATEWAY + '/api/login/complete', {scene, ticket});
  assert.equal(done.status, 200);
  assert.equal(done.data.user.openid, wx.openid);
});

test('a wrong or used login code says what to do, in the words of a typed code', live, async () => {
  const wx = createWx({simUrl: SIM});
  const wrong = await openLoginPage(wx, '/pages/login/index?login_code=22222222');
  assert.equal(wrong.data.status, 'failed');
  assert.equal(wrong.data.message, '登录码不正确，请对照网页上的登录码重新输入');

  const {login_code: loginCode} = await phoneBrowserIssue();
  const first = await openLoginPage(wx, '/pages/login/index?login_code=' + loginCode);
  assert.equal(first.data.status, 'ready');
  const again = await openLoginPage(createWx({simUrl: SIM}), '/pages/login/index?login_code=' + loginCode);
  assert.equal(again.data.status, 'failed');
  assert.equal(again.data.message, '这个登录码已经用过了，请在网页上刷新后输入新的登录码');
});
