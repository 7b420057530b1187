// What a failure tells the person holding the phone, and, outside release builds, what the developer
// must fix: the first-hour traps of WeChat DevTools (placeholder AppID, tourist mode, domain check).
'use strict';

const {messageFor} = require('./api');

/** The AppID in project.config.json as shipped: not a mini-program, so wx.login cannot work. */
const PLACEHOLDER_APPID = 'wx0000000000000000';
/** What wx.getAccountInfoSync() says for a project opened in DevTools' tourist mode. */
const TOURIST_APPID = 'touristappid';
/** config.js's server as shipped. */
const EXAMPLE_SERVER = 'https://login.example.com';
/** The gateway of `make demo`, as DevTools on the same machine reaches it. */
const DEMO_SERVER = 'http://127.0.0.1:8080';

/**
 * Where this copy runs: `{appId, envVersion, developing}`. `developing` is true in DevTools and in
 * trial builds (envVersion develop or trial), where the page may address the developer; a runtime
 * without wx.getAccountInfoSync counts as release.
 */
function environment(wx) {
  let info = null;
  try {
    info = typeof wx.getAccountInfoSync === 'function' ? wx.getAccountInfoSync() : null;
  } catch (e) {
    info = null;
  }
  const mp = (info && info.miniProgram) || {};
  const envVersion = mp.envVersion || 'release';
  return {appId: mp.appId || '', envVersion, developing: envVersion !== 'release'};
}

/** Whether `appId` cannot be a real mini-program's (the placeholder, tourist mode, or not wx + 16 hex). */
function unusableAppId(appId) {
  return appId === PLACEHOLDER_APPID || appId === TOURIST_APPID || !/^wx[0-9a-f]{16}$/i.test(appId || '');
}

const TOURIST = '开发者工具的“游客模式”只给出假的登录 code（the code is a mock one），网关无法用它登录。' +
  '请用你自己的 AppID 或“测试号”导入项目，不要用游客模式。';

/**
 * The text for `err` on a page: the user's message in release builds; in develop and trial builds,
 * for the errors a developer causes, what is wrong and where to fix it. `config` is config.js.
 */
function explain(err, env, config) {
  const code = typeof err === 'string' ? err : err && err.code;
  const detail = (err && typeof err === 'object' && err.message) || '';
  const server = String((config && config.server) || '');
  // A mock code only exists in DevTools, whatever the build says.
  if (code === 'mock_code' || (code === 'invalid_request' && /\bcode\b/.test(detail))) return TOURIST;
  if (!env || !env.developing) return messageFor(err);

  if (code === 'network' || code === 'domain_not_listed') {
    if (!server || server === EXAMPLE_SERVER) {
      return '无法连接服务器（' + detail + '）：config.js 的 server 还是示例地址 ' + EXAMPLE_SERVER +
        '，请改成你的网关地址（对着 make demo 是 ' + DEMO_SERVER + '）。';
    }
    if (code === 'domain_not_listed') {
      return '请求被微信拦截（' + detail + '）：' + server + ' 不在 request 合法域名中。开发者工具里：详情 → 本地设置 → ' +
        '勾选“不校验合法域名”；正式版：在小程序后台 开发管理 → 开发设置 → 服务器域名 加入该域名。';
    }
    return '网络错误（' + detail + '）：连不上 ' + server + '。请检查 config.js 的 server 是否正确、网关是否在运行；' +
      '开发者工具里还要勾选 详情 → 本地设置 →“不校验合法域名”。';
  }
  if (code === 'login_failed') {
    if (unusableAppId(env.appId)) {
      return 'wx.login 失败（' + detail + '）：AppID “' + (env.appId || '无') + '” 是占位符或无效。' +
        '请在 project.config.json 填你的小程序 AppID，或在开发者工具里使用“测试号”。';
    }
    return 'wx.login 失败（' + detail + '）：请确认 AppID ' + env.appId + ' 有效，且开发者工具登录的微信是它的开发者。';
  }
  if (code === 'code_invalid') {
    return '网关不接受这个小程序的登录 code（code_invalid）：网关的 WXLOGIN_APPID 须是本小程序的 AppID（' +
      (env.appId || '未知') + '）；对着 make demo 时，微信模拟器须开启任意 code 模式（WXLOGIN_SIM_ANY_CODE 不为 off）。';
  }
  return messageFor(err);
}

module.exports = {PLACEHOLDER_APPID, TOURIST_APPID, EXAMPLE_SERVER, environment, unusableAppId, explain};
