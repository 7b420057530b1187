// The confirm screen against QR relay (security review M4, L2), on a real gateway: where the computer
// and the phone are (never the computer's address), a red warning and a second, deliberate tap when
// they are far apart or the code came as a picture, share cards refused, and 不是我 told to the browser.
// The gateway of tests/integration/test_miniprogram.py believes X-Forwarded-For from 127.0.0.1, so
// the browser and the phone here come from real public addresses, placed by the offline database.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {MESSAGES} = require('../lib/api');
const {noteCameraScan} = require('../lib/launch');
const {NOT_ME_DONE, createLoginPage} = require('../lib/login-page');
const {createWx, mountPage, httpJson} = require('./fake-wx');

const GATEWAY = process.env.WXLOGIN_GATEWAY_URL;
const SIM = process.env.WXLOGIN_SIM_URL;
const live = {skip: !(GATEWAY && SIM) && 'WXLOGIN_GATEWAY_URL / WXLOGIN_SIM_URL not set'};

const BEIJING_MOBILE = '39.156.66.10'; // 北京市 · 移动
const SHENZHEN_BROADBAND = '113.108.81.189'; // 广东省深圳市 · 电信
const FOSHAN_MOBILE = '117.136.12.1'; // 广东省佛山市 · 移动
const SECOND_TAP_MS = 300; // the page's pause before a second tap counts (1.5 s in the mini-program)

/** A code shown in a browser at `ip` (X-Forwarded-For through the trusted proxy); its status. */
async function browserCode(ip) {
  const issued = await httpJson('POST', GATEWAY + '/api/login/qrcode', null, ip ? {'X-Forwarded-For': ip} : {});
  assert.equal(issued.status, 201);
  const {scene, ticket} = issued.data;
  const status = async () => {
    const url = GATEWAY + '/api/login/status?scene=' + encodeURIComponent(scene) + '&wait=0';
    return (await httpJson('GET', url, null, {'X-Login-Ticket': ticket})).data;
  };
  return {scene, status};
}

/** The login page on a phone at `ip`, opened as `launchScene` says; `scans()` are the scan bodies. */
function phone({ip = null, launchScene = 1047} = {}) {
  const wx = createWx({simUrl: SIM});
  wx.launchScene = launchScene;
  const sent = [];
  const request = wx.request;
  wx.request = (options) => {
    sent.push({path: new URL(options.url).pathname, data: Object.assign({}, options.data)});
    const header = Object.assign({}, options.header, ip ? {'X-Forwarded-For': ip} : {});
    return request(Object.assign({}, options, {header}));
  };
  const page = mountPage(createLoginPage({wx, config: {server: GATEWAY, timeout: 5000, secondTapMs: SECOND_TAP_MS}}));
  page.onAgreeChange({detail: {value: ['agree']}});
  const bodies = (path) => sent.filter((r) => r.path === path).map((r) => r.data);
  return {wx, page, scans: () => bodies('/api/mp/scan'), confirms: () => bodies('/api/mp/confirm')};
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test('the page shows where the computer and the phone are, never the computer\'s address', live, async () => {
  const code = await browserCode(SHENZHEN_BROADBAND);
  const {page, scans} = phone({ip: FOSHAN_MOBILE});
  await page.onLoad({scene: encodeURIComponent(code.scene)});
  assert.equal(page.data.status, 'ready');
  assert.equal(scans()[0].launch_scene, 1047);
  assert.equal(page.data.place, '广东省深圳市 · 电信');
  assert.equal(page.data.phonePlace, '广东省佛山市 · 移动');
  assert.ok(!JSON.stringify(page.data).includes(SHENZHEN_BROADBAND));
  // One province: no warning, one tap confirms.
  assert.equal(page.data.mismatch, false);
  assert.equal(page.data.fromImage, false);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
});

test('a computer in another province: a red warning, and only a second, deliberate tap confirms', live, async () => {
  const code = await browserCode(BEIJING_MOBILE);
  const {page, confirms} = phone({ip: SHENZHEN_BROADBAND});
  await page.onLoad({scene: encodeURIComponent(code.scene)});
  assert.equal(page.data.mismatch, true);
  assert.equal(page.data.place, '北京市 · 移动');
  assert.equal(page.data.phonePlace, '广东省深圳市 · 电信');

  await page.onConfirm(); // the first tap only arms the button
  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.armed, true);
  assert.match(page.data.message, /红色提示/);
  await page.onConfirm(); // a reflexive double tap does not count
  assert.equal(page.data.status, 'ready');
  assert.equal(confirms().length, 0);
  assert.equal((await code.status()).state, 'scanned');

  await pause(SECOND_TAP_MS + 50);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
  assert.equal(confirms().length, 1);
  assert.equal((await code.status()).state, 'confirmed');
});

test('a code recognised in a chat image is strongly warned about and needs the second tap', live, async () => {
  const code = await browserCode();
  const {page, scans, confirms} = phone({launchScene: 1048});
  await page.onLoad({scene: encodeURIComponent(code.scene)});
  assert.equal(scans()[0].launch_scene, 1048);
  assert.equal(page.data.status, 'ready');
  assert.equal(page.data.fromImage, true);
  assert.equal(page.data.mismatch, false); // the computer is on this machine: nothing to compare
  assert.equal(page.data.place, '本机/内网 (local network)');
  await page.onConfirm();
  assert.equal(page.data.armed, true);
  assert.equal(confirms().length, 0);
  await pause(SECOND_TAP_MS + 50);
  await page.onConfirm();
  assert.equal(page.data.status, 'confirmed');
});

test('opened from a share card the page refuses, says why, and the code is not spent', live, async () => {
  const code = await browserCode();
  const {page} = phone({launchScene: 1007});
  await page.onLoad({scene: encodeURIComponent(code.scene)});
  assert.equal(page.data.status, 'failed');
  assert.equal(page.data.message, MESSAGES.launch_scene_refused);
  assert.equal(page.data.canRetry, false);
  assert.equal((await code.status()).state, 'pending');
});

test('our own camera scanner counts as a camera scan whatever opened the mini-program', live, async () => {
  const code = await browserCode();
  // Entered from the recent list (1001), then the home page's camera-only 扫一扫 read the code.
  noteCameraScan(code.scene);
  const {page, scans} = phone({launchScene: 1001});
  await page.onLoad({scene: encodeURIComponent(code.scene)});
  assert.equal(scans()[0].launch_scene, 1047);
  assert.equal(page.data.status, 'ready');
  // Said once: the same scene opened again by another way is what WeChat says it is.
  const again = phone({launchScene: 1001});
  await again.page.onLoad({scene: encodeURIComponent((await browserCode()).scene)});
  assert.equal(again.scans()[0].launch_scene, 1001);
  assert.equal(again.page.data.status, 'failed');
});

test('不是我 cancels, and the browser is told it was not the phone\'s user who asked', live, async () => {
  const code = await browserCode(BEIJING_MOBILE);
  const {wx, page} = phone({ip: SHENZHEN_BROADBAND});
  await page.onLoad({scene: encodeURIComponent(code.scene)});
  await page.onNotMe();
  assert.equal(page.data.status, 'cancelled');
  assert.equal(page.data.message, NOT_ME_DONE);
  const cancels = wx.calls.requests.filter((r) => r.url.endsWith('/api/mp/cancel'));
  assert.equal(cancels.length, 1);
  const seen = await code.status();
  assert.equal(seen.state, 'cancelled');
  assert.equal(seen.reason, 'not_me');

  // A plain 取消 is a plain cancel.
  const other = await browserCode();
  const declining = phone();
  await declining.page.onLoad({scene: encodeURIComponent(other.scene)});
  await declining.page.onCancel();
  assert.equal(declining.page.data.message, '已取消登录');
  assert.equal((await other.status()).reason, 'declined');
});
