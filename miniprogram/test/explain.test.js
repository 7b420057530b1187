// What the pages say for each first-hour failure (lib/explain.js, lib/api.js): no server needed.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {ApiError, createApi, transient, wxLogin} = require('../lib/api');
const {environment, explain, unusableAppId} = require('../lib/explain');

const DEVTOOLS = {appId: 'wx0000000000000000', envVersion: 'develop', developing: true};
const OWN_APP = {appId: 'wx1234567890abcdef', envVersion: 'develop', developing: true};
const RELEASE = {appId: 'wx1234567890abcdef', envVersion: 'release', developing: false};
const DEMO = {server: 'http://127.0.0.1:8080'};
const SHIPPED = {server: 'https://login.example.com'};

/** Messages, pinned: the developer reads them in DevTools, the user in release builds. */
const TOURIST = '开发者工具的“游客模式”只给出假的登录 code（the code is a mock one），网关无法用它登录。' +
  '请用你自己的 AppID 或“测试号”导入项目，不要用游客模式。';
const PLACEHOLDER = 'wx.login 失败（login:fail appid invalid）：AppID “wx0000000000000000” 是占位符或无效。' +
  '请在 project.config.json 填你的小程序 AppID，或在开发者工具里使用“测试号”。';
const CODE_INVALID = '网关不接受这个小程序的登录 code（code_invalid）：网关的 WXLOGIN_APPID 须是本小程序的 AppID（' +
  'wx1234567890abcdef）；对着 make demo 时，微信模拟器须开启任意 code 模式（WXLOGIN_SIM_ANY_CODE 不为 off）。';
const DOMAIN = '请求被微信拦截（request:fail url not in domain list）：http://127.0.0.1:8080 不在 request 合法域名中。' +
  '开发者工具里：详情 → 本地设置 → 勾选“不校验合法域名”；正式版：在小程序后台 开发管理 → 开发设置 → 服务器域名 加入该域名。';
const UNREACHABLE = '网络错误（request:fail errcode:-102 cronet_error_code:-102 error_msg:net::ERR_CONNECTION_REFUSED）：' +
  '连不上 http://127.0.0.1:8080。请检查 config.js 的 server 是否正确、网关是否在运行；' +
  '开发者工具里还要勾选 详情 → 本地设置 →“不校验合法域名”。';
const EXAMPLE = '无法连接服务器（request:fail url not in domain list）：config.js 的 server 还是示例地址 ' +
  'https://login.example.com，请改成你的网关地址（对着 make demo 是 http://127.0.0.1:8080）。';

test('the build and AppID come from wx.getAccountInfoSync; without it the page is a release build', () => {
  assert.deepEqual(environment({}), {appId: '', envVersion: 'release', developing: false});
  const wx = {getAccountInfoSync: () => ({miniProgram: {appId: 'wx0000000000000000', envVersion: 'develop'}})};
  assert.deepEqual(environment(wx), DEVTOOLS);
  const trial = {getAccountInfoSync: () => ({miniProgram: {appId: 'wx1234567890abcdef', envVersion: 'trial'}})};
  assert.equal(environment(trial).developing, true);
  assert.equal(environment({getAccountInfoSync: () => { throw new Error('no'); }}).developing, false);
  assert.equal(unusableAppId('wx0000000000000000'), true);
  assert.equal(unusableAppId('touristappid'), true);
  assert.equal(unusableAppId(''), true);
  assert.equal(unusableAppId('wx1234567890abcdef'), false);
});

test('in DevTools each failure says what is wrong and where to fix it, never just 网络错误', () => {
  const loginFailed = new ApiError('login_failed', 'login:fail appid invalid');
  assert.equal(explain(loginFailed, DEVTOOLS, DEMO), PLACEHOLDER);
  assert.equal(explain(loginFailed, OWN_APP, DEMO),
    'wx.login 失败（login:fail appid invalid）：请确认 AppID wx1234567890abcdef 有效，且开发者工具登录的微信是它的开发者。');
  assert.equal(explain(new ApiError('code_invalid', 'invalid code', 400), OWN_APP, DEMO), CODE_INVALID);
  assert.equal(explain(new ApiError('mock_code', 'the code is a mock one'), DEVTOOLS, DEMO), TOURIST);
  // The gateway's answer to a mock code that reached it (an older page, another client).
  const refused = new ApiError('invalid_request', 'invalid or missing fields: code', 400);
  assert.equal(explain(refused, OWN_APP, DEMO), TOURIST);
  assert.equal(explain(new ApiError('domain_not_listed', 'request:fail url not in domain list'), OWN_APP, DEMO), DOMAIN);
  const refusedConnection = 'request:fail errcode:-102 cronet_error_code:-102 error_msg:net::ERR_CONNECTION_REFUSED';
  assert.equal(explain(new ApiError('network', refusedConnection), OWN_APP, DEMO), UNREACHABLE);
  // config.js as shipped: that is the first thing to fix, whatever the errMsg.
  assert.equal(explain(new ApiError('domain_not_listed', 'request:fail url not in domain list'), OWN_APP, SHIPPED), EXAMPLE);
  // Errors a developer does not cause read as they do for users.
  assert.equal(explain(new ApiError('scene_expired', 'x', 410), OWN_APP, DEMO), '二维码已过期，请在电脑上刷新后重新扫码');
});

test('a release build tells the user, not the developer', () => {
  assert.equal(explain(new ApiError('network', 'request:fail timeout'), RELEASE, DEMO), '网络错误，请检查网络后重试');
  assert.equal(explain(new ApiError('login_failed', 'login:fail'), RELEASE, DEMO), '微信登录失败，请稍后重试');
  assert.equal(explain(new ApiError('code_invalid', 'x', 400), RELEASE, DEMO), '微信登录失败，请重试');
  assert.equal(explain(new ApiError('domain_not_listed', 'request:fail url not in domain list'), RELEASE, DEMO),
    '无法连接登录服务，请稍后重试');
  assert.equal(explain(new ApiError('mock_code', 'the code is a mock one'), RELEASE, DEMO), TOURIST);
});

test('wx.login: a failure keeps its errMsg, a tourist-mode mock code is not a code', async () => {
  const failing = {login: (o) => setImmediate(() => o.fail({errMsg: 'login:fail appid invalid'}))};
  await assert.rejects(wxLogin(failing), {code: 'login_failed', message: 'login:fail appid invalid'});
  const tourist = {login: (o) => setImmediate(() => o.success({code: 'the code is a mock one', errMsg: 'login:ok'}))};
  await assert.rejects(wxLogin(tourist), {code: 'mock_code'});
  const real = {login: (o) => setImmediate(() => o.success({code: '0a1B2c3D4e5F6g7H8i9J', errMsg: 'login:ok'}))};
  assert.equal(await wxLogin(real), '0a1B2c3D4e5F6g7H8i9J');
});

test('a server outside the request domain list is not a network trouble to wait out', async () => {
  const wx = {request: (o) => setImmediate(() => o.fail({errMsg: 'request:fail url not in domain list'}))};
  const err = await createApi(wx, DEMO).scan('s'.repeat(32)).catch((e) => e);
  assert.equal(err.code, 'domain_not_listed');
  assert.equal(err.message, 'request:fail url not in domain list');
  assert.equal(transient(err), false);
  const offline = {request: (o) => setImmediate(() => o.fail({errMsg: 'request:fail timeout'}))};
  const lost = await createApi(offline, DEMO).scan('s'.repeat(32)).catch((e) => e);
  assert.equal(lost.code, 'network');
  assert.equal(transient(lost), true);
});
