// The phone-binding sample (lib/phone-page.js) against a real gateway (see login.test.js for the
// environment): privacy consent first, then getPhoneNumber's code to POST /api/mp/phone.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const {createPhonePage} = require('../lib/phone-page');
const {createWx, mountPage, httpJson} = require('./fake-wx');

const GATEWAY = process.env.WXLOGIN_GATEWAY_URL;
const SIM = process.env.WXLOGIN_SIM_URL;
const live = {skip: !(GATEWAY && SIM) && 'WXLOGIN_GATEWAY_URL / WXLOGIN_SIM_URL not set'};

/**
 * WeChat's privacy APIs as the runtime behaves (base library 2.32.3+): `needAuthorization` until the
 * user agrees; requirePrivacyAuthorize asks the registered onNeedPrivacyAuthorization listener and
 * succeeds or fails on its resolve({event}). `privacy.resolved` records what the page resolved.
 */
function withPrivacy(wx, needAuthorization = true) {
  const privacy = {need: needAuthorization, listener: null, resolved: [], contracts: 0};
  wx.getPrivacySetting = (o) => setImmediate(() => o.success({
    needAuthorization: privacy.need, privacyContractName: '《wxlogin 示例小程序隐私保护指引》'
  }));
  wx.onNeedPrivacyAuthorization = (listener) => { privacy.listener = listener; };
  wx.requirePrivacyAuthorize = (o) => {
    if (!privacy.need) return setImmediate(() => o.success({errMsg: 'requirePrivacyAuthorize:ok'}));
    privacy.listener((answer) => {
      privacy.resolved.push(answer);
      if (answer.event === 'agree') {
        privacy.need = false;
        o.success({errMsg: 'requirePrivacyAuthorize:ok'});
      } else {
        o.fail({errMsg: 'requirePrivacyAuthorize:fail privacy permission is not authorized'});
      }
    }, {referrer: 'requirePrivacyAuthorize'});
  };
  wx.openPrivacyContract = () => { privacy.contracts += 1; };
  return privacy;
}

/** A WeChat user with a phone number, this page on a `wx` of theirs, and the app's globalData. */
async function phonePage() {
  const number = '139' + String(crypto.randomInt(10000000, 99999999));
  const user = await httpJson('POST', SIM + '/sim/users', {phone: number});
  assert.equal(user.status, 201);
  const wx = createWx({simUrl: SIM});
  wx.openid = user.data.openid;
  const privacy = withPrivacy(wx);
  const app = {globalData: {session: null}};
  const page = mountPage(createPhonePage({wx, config: {server: GATEWAY}, app}));
  const phoneCode = async () => (await httpJson('POST', SIM + '/sim/phone-codes', {openid: wx.openid})).data.code;
  const phoneRequests = () => wx.calls.requests.filter((r) => r.url.endsWith('/api/mp/phone')).length;
  return {wx, app, page, privacy, number, phoneCode, phoneRequests};
}

/** The page as the runtime shows it: onLoad, onShow, then the getPrivacySetting answer. */
async function open(page) {
  page.onLoad({});
  page.onShow();
  await new Promise((resolve) => setImmediate(resolve));
}

test('consent first, then the phone: agree, getPhoneNumber, bound with a token that carries it', live, async () => {
  const {wx, app, page, privacy, number, phoneCode, phoneRequests} = await phonePage();
  await open(page);
  assert.equal(page.data.status, 'signed_out'); // nothing happens before a tap
  assert.equal(wx.calls.login, 0);
  assert.equal(page.data.needPrivacy, true); // the getPhoneNumber button is not shown yet
  assert.equal(page.data.contractName, '《wxlogin 示例小程序隐私保护指引》');

  await page.onLogin();
  assert.equal(page.data.status, 'ready');
  const before = app.globalData.session.access_token;

  // 绑定手机号: WeChat asks the page for consent; the sheet opens and waits for the user.
  const started = page.onStartBinding();
  assert.equal(page.data.privacyOpen, true);
  page.onOpenPrivacyContract();
  assert.equal(privacy.contracts, 1);
  page.onAgreePrivacy();
  await started;
  assert.deepEqual(privacy.resolved, [{buttonId: 'agree-privacy', event: 'agree'}]);
  assert.equal(page.data.privacyOpen, false);
  assert.equal(page.data.needPrivacy, false);
  assert.equal(phoneRequests(), 0);

  await page.onGetPhoneNumber({detail: {code: await phoneCode(), errMsg: 'getPhoneNumber:ok'}});
  assert.equal(page.data.status, 'bound');
  assert.equal(page.data.phone, number.slice(0, 3) + '****' + number.slice(-4));
  assert.equal(page.data.message, '');
  const session = app.globalData.session;
  assert.notEqual(session.access_token, before);
  assert.equal(session.user.phone, '+86' + number);
  const me = await httpJson('GET', GATEWAY + '/api/me', null, {Authorization: 'Bearer ' + session.access_token});
  assert.equal(me.data.phone, '+86' + number);

  page.onDone();
  assert.deepEqual(wx.calls.navigations.map((n) => n.how), ['navigateBack']);
});

test('declining the privacy guide collects nothing and leaves a way on', live, async () => {
  const {page, app, privacy, phoneRequests} = await phonePage();
  await open(page);
  await page.onLogin();
  const started = page.onStartBinding();
  assert.equal(page.data.privacyOpen, true);
  page.onDeclinePrivacy();
  await started;
  assert.deepEqual(privacy.resolved, [{event: 'disagree'}]);
  assert.equal(page.data.privacyOpen, false);
  assert.equal(page.data.needPrivacy, true);
  assert.equal(page.data.message, '需要先同意隐私保护指引，才能绑定手机号');
  assert.equal(page.data.status, 'ready');
  assert.equal(phoneRequests(), 0);
  assert.ok(app.globalData.session); // still logged in; 暂不绑定 is there
});

test('a refused phone prompt, a spent phone code and an ended session each say what happened', live, async () => {
  const {page, app, privacy, phoneCode, phoneRequests} = await phonePage();
  privacy.need = false; // agreed before
  await open(page);
  assert.equal(page.data.needPrivacy, false);
  await page.onLogin();

  await page.onGetPhoneNumber({detail: {errMsg: 'getPhoneNumber:fail user deny'}});
  assert.equal(page.data.message, '你没有允许使用手机号，可以稍后再绑定');
  await page.onGetPhoneNumber({detail: {errMsg: 'getPhoneNumber:fail no permission'}});
  assert.equal(page.data.message, '本小程序没有手机号快速验证的权限（仅认证的非个人主体小程序可用）');
  assert.equal(phoneRequests(), 0);

  const code = await phoneCode();
  await page.onGetPhoneNumber({detail: {code}});
  assert.equal(page.data.status, 'bound');
  page.onRebind();
  await page.onGetPhoneNumber({detail: {code}}); // single use: never sent twice by the page itself
  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.message, '手机号验证已失效，请再点一次绑定');

  app.globalData.session.access_token = 'not.a.token';
  await page.onGetPhoneNumber({detail: {code: await phoneCode()}});
  assert.equal(page.data.status, 'signed_out');
  assert.equal(page.data.message, '登录已失效，请重新登录后再绑定');
  assert.equal(app.globalData.session, null);
});
