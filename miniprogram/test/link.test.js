// A link code on the confirm page (docs/linking.md), against a real gateway: a site's backend opens a
// link request (WXLOGIN_LINK_CLIENT / WXLOGIN_LINK_SECRET: a confidential client of the stack that
// tests/integration/test_miniprogram.py starts), its page shows the code, and the phone is told plainly
// that it links this WeChat to the site's account, with its own button; a WeChat already linked to
// another account of the site is refused, and the page says why.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {MESSAGES} = require('../lib/api');
const {WORDS, createLoginPage} = require('../lib/login-page');
const {createWx, mountPage, httpJson} = require('./fake-wx');

const GATEWAY = process.env.WXLOGIN_GATEWAY_URL;
const SIM = process.env.WXLOGIN_SIM_URL;
const CLIENT = process.env.WXLOGIN_LINK_CLIENT;
const SECRET = process.env.WXLOGIN_LINK_SECRET;
const SITE = process.env.WXLOGIN_LINK_SITE_NAME;
const live = {skip: !(GATEWAY && SIM && CLIENT && SECRET) && 'WXLOGIN_GATEWAY_URL / WXLOGIN_LINK_CLIENT not set'};

const basic = () => 'Basic ' + Buffer.from(CLIENT + ':' + SECRET).toString('base64');

/** The site: its backend opens a link request, its signed-in page shows the code. */
async function linkCode(externalId, hint) {
  const opened = await httpJson('POST', GATEWAY + '/api/link/requests', {external_id: externalId, hint},
    {Authorization: basic()});
  assert.equal(opened.status, 201, JSON.stringify(opened.data));
  const shown = await httpJson('POST', GATEWAY + '/api/login/qrcode',
    {client_id: CLIENT, link_token: opened.data.link_token});
  assert.equal(shown.status, 201, JSON.stringify(shown.data));
  return {
    scene: shown.data.scene,
    state: async () => (await httpJson('GET', GATEWAY + '/api/link/requests/' + opened.data.link_request, null,
      {Authorization: basic()})).data
  };
}

function page(wx) {
  const mounted = mountPage(createLoginPage({wx, config: {server: GATEWAY, timeout: 5000}}));
  mounted.onAgreeChange({detail: {value: ['agree']}});
  return mounted;
}

test('a link code says it binds this WeChat to the site\'s account, and 确认绑定 links it', live, async () => {
  const wx = createWx({simUrl: SIM});
  const code = await linkCode('mp-acct-1', '张*三');
  const linking = page(wx);
  await linking.onLoad({scene: encodeURIComponent(code.scene)});
  assert.equal(linking.data.status, 'ready');
  assert.equal(linking.data.purpose, 'link');
  assert.equal(linking.data.site, SITE);
  assert.equal(linking.data.ask, '将此微信绑定到 ' + SITE + ' 的账号 张*三');
  assert.equal(linking.data.confirmLabel, '确认绑定');
  await linking.onConfirm();
  assert.equal(linking.data.status, 'confirmed');
  assert.equal(linking.data.message, WORDS.link.done);
  const known = await code.state();
  assert.equal(known.state, 'linked');
  assert.equal(known.external_id, 'mp-acct-1');

  // The same WeChat and another account of the site: refused, and the page says why.
  const other = await linkCode('mp-acct-2', '李*四');
  const again = page(wx);
  await again.onLoad({scene: encodeURIComponent(other.scene)});
  assert.equal(again.data.ask, '将此微信绑定到 ' + SITE + ' 的账号 李*四');
  await again.onConfirm();
  assert.equal(again.data.status, 'failed');
  assert.equal(again.data.message, MESSAGES.already_linked);
  assert.equal((await other.state()).reason, 'already_linked');
});

test('a login code still asks to log in, with 确认登录', live, async () => {
  const issued = await httpJson('POST', GATEWAY + '/api/login/qrcode', null);
  const login = page(createWx({simUrl: SIM}));
  await login.onLoad({scene: encodeURIComponent(issued.data.scene)});
  assert.equal(login.data.purpose, 'login');
  assert.equal(login.data.ask, WORDS.login.ask());
  assert.equal(login.data.confirmLabel, '确认登录');
  await login.onCancel();
  assert.equal(login.data.message, WORDS.login.cancelled);
});
