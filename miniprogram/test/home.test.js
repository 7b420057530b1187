// The home page (what opening the mini-program shows): 扫一扫 opens the scan page with the code's scene,
// and "my account" logs in only when tapped. The live tests need the environment of login.test.js.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {createHomePage, queryOf, sceneFromScan} = require('../lib/home-page');
const {createLoginPage} = require('../lib/login-page');
const {maskPhone} = require('../lib/mplogin-page');
const {createWx, mountPage, httpJson} = require('./fake-wx');

const GATEWAY = process.env.WXLOGIN_GATEWAY_URL;
const SIM = process.env.WXLOGIN_SIM_URL;
const live = {skip: !(GATEWAY && SIM) && 'WXLOGIN_GATEWAY_URL / WXLOGIN_SIM_URL not set'};
const SCENE = 'Ab3_-Ab3_-Ab3_-Ab3_-Ab3_-Ab3_-Ab'; // 32 URL-safe characters, as the qrcode service mints

function home(wx) {
  const app = {globalData: {session: null}};
  const page = mountPage(createHomePage({wx, config: {server: GATEWAY || 'http://127.0.0.1:1'}, app}));
  return {app, page};
}

test('the scene is read from a scanned mini-program code\'s path, or from the simulator\'s square QR', () => {
  assert.equal(sceneFromScan({scanType: 'WX_CODE', path: 'pages/login/index?scene=' + SCENE}), SCENE);
  assert.equal(sceneFromScan({path: 'pages/login/index?scene=' + encodeURIComponent(SCENE) + '&x=1'}), SCENE);
  assert.equal(sceneFromScan({scanType: 'QR_CODE', result: SCENE}), SCENE);
  assert.equal(sceneFromScan({scanType: 'QR_CODE', result: 'https://example.com/?a=1'}), '');
  assert.equal(sceneFromScan({path: 'pages/other/index?id=3'}), '');
  assert.equal(sceneFromScan({path: 'pages/login/index?scene=%E0%A4%A'}), '');
  assert.equal(sceneFromScan(undefined), '');
  assert.deepEqual(queryOf('p?a=1&b=x%20y&c'), {a: '1', b: 'x y', c: ''});
  assert.equal(maskPhone('+8613800138000'), '138****8000');
  assert.equal(maskPhone(undefined), '');
});

test('opening the home page asks for nothing; 扫一扫 opens the scan page, a cancel says nothing', async () => {
  const wx = createWx({simUrl: SIM || 'http://127.0.0.1:1'});
  const {page} = home(wx);
  assert.equal(page.data.status, 'idle'); // no login on entry
  assert.equal(wx.calls.login, 0);
  assert.equal(wx.calls.requests.length, 0);

  wx.scans.push({fail: 'scanCode:fail cancel'});
  await page.onScan();
  assert.equal(page.data.scanMessage, '');
  assert.deepEqual(wx.calls.navigations, []);

  wx.scans.push({scanType: 'QR_CODE', result: 'hello'});
  await page.onScan();
  assert.equal(page.data.scanMessage, '这不是网站登录的小程序码。请扫描网站登录框里的码。');

  wx.scans.push({scanType: 'WX_CODE', result: '…', path: 'pages/login/index?scene=' + SCENE});
  await page.onScan();
  assert.equal(page.data.scanMessage, '');
  assert.deepEqual(wx.calls.navigations, [{how: 'navigateTo', url: '/pages/login/index?scene=' + SCENE, delta: undefined}]);
  page.onBindPhone();
  assert.equal(wx.calls.navigations[1].url, '/pages/phone/index');
});

test('a code scanned from the home page logs the browser in through the scan page', live, async () => {
  const issued = await httpJson('POST', GATEWAY + '/api/login/qrcode', null);
  assert.equal(issued.status, 201);
  const {scene, ticket} = issued.data;
  const wx = createWx({simUrl: SIM});
  wx.launchScene = 1001; // the mini-program was opened from the recent list, then 扫一扫
  const {page} = home(wx);
  wx.scans.push({scanType: 'WX_CODE', path: 'pages/login/index?scene=' + encodeURIComponent(scene)});
  await page.onScan();
  // The camera only (security review M4): a picture from the album is how a relayed code arrives.
  assert.equal(wx.calls.scanOptions[0].onlyFromCamera, true);
  const url = wx.calls.navigations[0].url;
  assert.ok(url.startsWith('/pages/login/index?'), url);

  // The runtime hands the URL's query to the scan page's onLoad undecoded; the page decodes it.
  const query = Object.fromEntries(url.split('?')[1].split('&').map((pair) => pair.split('=')));
  const scanPage = mountPage(createLoginPage({wx, config: {server: GATEWAY}, currentPages: () => [{}, {}]}));
  await scanPage.onLoad(query);
  assert.equal(scanPage.data.status, 'ready'); // reported as a camera scan (1047), not refused as 1001
  scanPage.onAgreeChange({detail: {value: ['agree']}});
  await scanPage.onConfirm();
  assert.equal(scanPage.data.status, 'confirmed');
  const done = await httpJson('POST', GATEWAY + '/api/login/complete', {scene, ticket});
  assert.equal(done.status, 200);
  assert.equal(done.data.user.openid, wx.openid);
});

test('"my account": 微信登录 on tap, the bound phone masked, 退出登录', live, async () => {
  const wx = createWx({simUrl: SIM});
  const {app, page} = home(wx);
  page.onShow();
  assert.equal(page.data.status, 'idle');
  await page.onLogin();
  assert.equal(page.data.status, 'done');
  assert.equal(page.data.openid, wx.openid);
  assert.equal(page.data.phone, '');

  // Back from the phone page with a bound number: onShow shows it.
  app.globalData.session.user.phone = '+8613800138000';
  page.onShow();
  assert.equal(page.data.phone, '138****8000');

  await page.onLogout();
  assert.equal(page.data.status, 'idle');
  assert.equal(app.globalData.session, null);
});
