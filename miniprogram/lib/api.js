// Calls to the wxlogin gateway from the mini-program: wx.request as a promise, errors made readable.
'use strict';

/**
 * An error of a gateway call: `code` is the gateway's error code, 'network' when nothing came back
 * (`message` is wx.request's errMsg), 'domain_not_listed' when WeChat refused to send the request to a
 * server outside the request domain list; for wx.login, 'login_failed' (`message`: its errMsg) or
 * 'mock_code' (WeChat DevTools' tourist mode). `retryAfter` is the answer's Retry-After in seconds
 * (null when it had none).
 */
class ApiError extends Error {
  constructor(code, message, status, retryAfter) {
    super(message || code);
    this.code = code;
    this.status = status || 0;
    this.retryAfter = retryAfter == null ? null : retryAfter;
  }
}

/** What the user reads for each error code (Chinese: this page runs inside WeChat). */
const MESSAGES = {
  network: '网络错误，请检查网络后重试',
  busy: '网络繁忙，正在重试…',
  scan_unheard: '扫码未能完成，请在电脑上刷新二维码后重新扫码',
  unavailable: '服务暂时不可用，请稍后重试',
  already_scanned: '该二维码已被其他微信扫描',
  scene_expired: '二维码已过期，请在电脑上刷新后重新扫码',
  scene_cancelled: '本次登录已取消，请在电脑上刷新后重新扫码',
  scene_not_found: '二维码无效，请在电脑上刷新后重新扫码',
  already_confirmed: '本次登录已确认',
  already_redeemed: '本次登录已完成',
  scene_state_conflict: '登录状态已变化，请重新扫码',
  scan_token_invalid: '请重新扫码',
  launch_scene_refused: '为了你的账号安全，请用微信“扫一扫”直接扫描电脑屏幕上的二维码登录；不能从聊天里的卡片或其他小程序打开',
  scene_not_scanned: '请重新扫码',
  code_invalid: '微信登录失败，请重试',
  code_required: '微信登录失败，请重试',
  code_in_progress: '正在登录，请稍候',
  user_blocked: '该微信账号暂时无法登录',
  rate_limited: '操作太频繁，请稍后再试',
  missing_scene: '没有读到二维码信息，请重新扫码',
  login_failed: '微信登录失败，请稍后重试',
  domain_not_listed: '无法连接登录服务，请稍后重试',
  login_code_invalid: '登录码不正确，请核对后重新输入',
  // A link code refused (docs/linking.md); the computer shows why as well.
  already_linked: '这个微信已绑定该网站的另一个账号，不能再绑定其他账号。如需更换，请先在网站上解除原来的绑定',
  account_already_linked: '网站的这个账号已绑定了另一个微信，不能再绑定',
  scene_purpose_mismatch: '二维码无效，请在电脑上刷新后重新扫码'
};

/** The text for an error (or an error code). */
function messageFor(err) {
  const code = typeof err === 'string' ? err : err && err.code;
  if (MESSAGES[code]) return MESSAGES[code];
  if (err && err.status >= 500) return MESSAGES.unavailable;
  return (err && err.message) || MESSAGES.unavailable;
}

/** Network failures and 5xx can be retried as they are; other errors need a new scan. */
function retryable(err) {
  return !!err && (err.code === 'network' || err.status === 429 || err.status >= 500);
}

/**
 * Failures the page waits out and retries by itself: no answer at all, 503 (a service behind the
 * gateway is down: bus, store, WeChat, an RPC timeout), 429 (busy) and a proxy's 502/504.
 */
function transient(err) {
  return !!err && (err.code === 'network' || [429, 502, 503, 504].indexOf(err.status) >= 0);
}

/** How the page retries: attempts per request, the time it may take in all, waits (ms). */
const RETRY = {attempts: 8, budget: 60000, base: 500, cap: 10000};

/** The wait before the next attempt: the answer's Retry-After if any, else backoff; capped, jittered. */
function retryDelay(err, attempt, policy) {
  const ms = err.retryAfter != null ? err.retryAfter * 1000 : policy.base * Math.pow(2, attempt);
  const capped = Math.min(policy.cap, ms);
  return capped + Math.random() * Math.min(500, capped / 4);
}

/**
 * `attempt()` (a function returning a promise) again after each transient failure, until it succeeds,
 * fails for another reason, or the attempts, the budget or `deadline` (epoch ms: the scene's expiry)
 * would be exceeded; then the last error. `onWait(err, ms)` is told before each wait.
 */
function withRetry(attempt, {policy = RETRY, deadline = null, onWait = () => {}} = {}) {
  const started = Date.now();
  let tries = 0;
  const run = () => attempt().catch((err) => {
    if (!transient(err) || tries + 1 >= policy.attempts) throw err;
    const wait = retryDelay(err, tries, policy);
    const end = Date.now() + wait;
    if (end > started + policy.budget || (deadline && end > deadline)) throw err;
    tries += 1;
    onWait(err, wait);
    return new Promise((resolve) => setTimeout(resolve, wait)).then(run);
  });
  return run();
}

/** Retry-After in seconds (a number or an HTTP date), from a wx.request answer's headers. */
function retryAfterOf(header) {
  if (!header) return null;
  const key = Object.keys(header).find((name) => name.toLowerCase() === 'retry-after');
  const value = key === undefined ? '' : String(header[key]);
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}

// WeChat DevTools' tourist mode answers wx.login with a sentence ("the code is a mock one"); a real
// code is one printable word, which is also all the gateway accepts.
const REAL_CODE = /^[\x21-\x7e]+$/;

/**
 * `wx.login()` as a promise of a fresh code (codes are single-use and live 5 minutes). It fails with
 * 'login_failed' (the errMsg as message: an invalid or placeholder AppID ends here) or 'mock_code'.
 */
function wxLogin(wx) {
  return new Promise((resolve, reject) => {
    wx.login({
      success: (res) => {
        const code = res && res.code;
        if (!code) return reject(new ApiError('login_failed', (res && res.errMsg) || 'login:fail no code'));
        if (!REAL_CODE.test(code)) return reject(new ApiError('mock_code', code));
        return resolve(code);
      },
      fail: (res) => reject(new ApiError('login_failed', (res && res.errMsg) || 'login:fail'))
    });
  });
}

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Bytes (an ArrayBuffer) as unpadded base64url. */
function base64url(buffer) {
  const bytes = new Uint8Array(buffer);
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] || 0) << 8) | (bytes[i + 2] || 0);
    const chars = Math.ceil(Math.min(3, bytes.length - i) * 4 / 3);
    for (let j = 0; j < chars; j += 1) out += BASE64URL[(n >> (18 - 6 * j)) & 63];
  }
  return out;
}

/**
 * This phone's own scan token: 32 bytes of `wx.getRandomValues` in base64url (43 characters). Sent with
 * the scan and with every retry of it, it lets the gateway answer a retry whose first answer was lost
 * (the scan landed, the answer did not) as it answered the first, where a token the gateway minted
 * per request could only be refused `already_scanned`. '' where the runtime has no getRandomValues
 * (base library before 2.20.2) or it fails: the gateway then mints the token, as before.
 */
function newScanToken(wx) {
  return new Promise((resolve) => {
    if (typeof wx.getRandomValues !== 'function') return resolve('');
    wx.getRandomValues({
      length: 32,
      success: (res) => {
        const token = res && res.randomValues ? base64url(res.randomValues) : '';
        resolve(token.length === 43 ? token : '');
      },
      fail: () => resolve('')
    });
  });
}

/** A client of the gateway at `config.server`. */
function createApi(wx, config) {
  const base = String(config.server || '').replace(/\/+$/, '');

  function call(method, path, body, token) {
    return new Promise((resolve, reject) => {
      const header = {'Content-Type': 'application/json'};
      if (token) header.Authorization = 'Bearer ' + token;
      wx.request({
        url: base + path,
        method,
        data: body || {},
        header,
        timeout: config.timeout || 10000,
        success: (res) => {
          const data = res.data || {};
          if (res.statusCode >= 200 && res.statusCode < 300) return resolve(data);
          const error = data.error || {};
          const code = error.code || 'http_' + res.statusCode;
          reject(new ApiError(code, error.message, res.statusCode, retryAfterOf(res.header)));
        },
        fail: (res) => {
          const errMsg = (res && res.errMsg) || 'request:fail';
          // Not a network trouble that waiting fixes: the server is missing from the request domain list.
          const code = /domain list/i.test(errMsg) ? 'domain_not_listed' : 'network';
          reject(new ApiError(code, errMsg));
        }
      });
    });
  }

  // `code` is optional for scan and confirm: the key is left out, not sent empty, when there is none.
  const withCode = (body, code) => (code ? Object.assign(body, {code}) : body);

  return {
    // `launchScene`: how WeChat opened the page (lib/launch.js); left out when the runtime does not say.
    // `scanToken`: the phone's own (newScanToken), the same in every retry; left out when it has none.
    scan: (scene, code, launchScene, scanToken) => {
      const body = withCode(launchScene ? {scene, launch_scene: launchScene} : {scene}, code);
      return call('POST', '/api/mp/scan', scanToken ? Object.assign(body, {scan_token: scanToken}) : body);
    },
    // A typed login code opens its scene like a scan (the same answer, plus `scene`); the wx.login
    // code is required: code entries are limited per WeChat user.
    // `scanToken` as for scan: a retry with the same code and token is answered as the first entry.
    enterCode: (loginCode, code, scanToken) =>
      call('POST', '/api/mp/enter_code', scanToken ? {login_code: loginCode, code, scan_token: scanToken} : {login_code: loginCode, code}),
    confirm: (scene, scanToken, code) => call('POST', '/api/mp/confirm', withCode({scene, scan_token: scanToken}, code)),
    // `reason` 'not_me' (the 不是我 button) tells the browser why; none: a plain 取消 ('declined').
    cancel: (scene, scanToken, reason) =>
      call('POST', '/api/mp/cancel', reason ? {scene, scan_token: scanToken, reason} : {scene, scan_token: scanToken}),
    login: (code) => call('POST', '/api/mp/login', {code}),
    phone: (code, token) => call('POST', '/api/mp/phone', {code}, token),
    me: (token) => call('GET', '/api/me', null, token),
    logout: (token) => call('POST', '/api/logout', null, token)
  };
}

module.exports = {
  ApiError, MESSAGES, RETRY, messageFor, retryable, transient, retryDelay, withRetry, retryAfterOf, wxLogin, newScanToken, base64url, createApi
};
