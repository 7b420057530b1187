// The in-mini-program login page against a real gateway (see login.test.js for the environment).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {createMpLoginPage} = require('../lib/mplogin-page');
const {createWx, mountPage, httpJson} = require('./fake-wx');

const GATEWAY = process.env.WXLOGIN_GATEWAY_URL;
const SIM = process.env.WXLOGIN_SIM_URL;
const live = {skip: !(GATEWAY && SIM) && 'WXLOGIN_GATEWAY_URL / WXLOGIN_SIM_URL not set'};

test('wx.login → tokens for this WeChat user; logging out ends the session', live, async () => {
  const wx = createWx({simUrl: SIM});
  const app = {globalData: {session: null}};
  const page = mountPage(createMpLoginPage({wx, config: {server: GATEWAY}, app}));

  await page.onLogin();
  assert.equal(page.data.status, 'done');
  assert.equal(page.data.openid, wx.openid);
  const session = app.globalData.session;
  assert.ok(session.access_token && session.refresh_token);

  const me = await httpJson('GET', GATEWAY + '/api/me', null, {Authorization: 'Bearer ' + session.access_token});
  assert.equal(me.status, 200);
  assert.equal(me.data.openid, wx.openid);

  await page.onLogout();
  assert.equal(page.data.status, 'idle');
  assert.equal(app.globalData.session, null);
  const refresh = await httpJson('POST', GATEWAY + '/api/token/refresh', {refresh_token: session.refresh_token});
  assert.equal(refresh.status, 401);
});

test('a failed login leaves the page ready to try again', live, async () => {
  const wx = createWx({simUrl: SIM});
  const app = {globalData: {session: null}};
  const page = mountPage(createMpLoginPage({wx, config: {server: GATEWAY}, app}));
  wx.offline = true;
  await page.onLogin();
  assert.equal(page.data.status, 'idle');
  assert.equal(page.data.message, '网络错误，请检查网络后重试');
  assert.equal(app.globalData.session, null);
  wx.offline = false;
  await page.onLogin();
  assert.equal(page.data.status, 'done');
});
