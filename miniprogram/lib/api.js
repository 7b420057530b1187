// Calls to the wxlogin gateway from the mini-program: wx.request as a promise, errors made readable.
'use strict';

/** An error of a gateway call: `code` is the gateway's error code, or 'network' when nothing came back. */
class ApiError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.code = code;
    this.status = status || 0;
  }
}

/** What the user reads for each error code (Chinese: this page runs inside WeChat). */
const MESSAGES = {
  network: '网络错误，请检查网络后重试',
  unavailable: '服务暂时不可用，请稍后重试',
  already_scanned: '该二维码已被其他微信扫描',
  scene_expired: '二维码已过期，请在电脑上刷新后重新扫码',
  scene_cancelled: '本次登录已取消，请在电脑上刷新后重新扫码',
  scene_not_found: '二维码无效，请在电脑上刷新后重新扫码',
  already_confirmed: '本次登录已确认',
  already_redeemed: '本次登录已完成',
  scene_state_conflict: '登录状态已变化，请重新扫码',
  scan_token_invalid: '请重新扫码',
  scene_not_scanned: '请重新扫码',
  code_invalid: '微信登录失败，请重试',
  code_required: '微信登录失败，请重试',
  code_in_progress: '正在登录，请稍候',
  user_blocked: '该微信账号暂时无法登录',
  rate_limited: '操作太频繁，请稍后再试',
  missing_scene: '没有读到二维码信息，请重新扫码'
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

/** `wx.login()` as a promise of a fresh code (codes are single-use and live 5 minutes). */
function wxLogin(wx) {
  return new Promise((resolve, reject) => {
    wx.login({
      success: (res) => (res && res.code ? resolve(res.code) : reject(new ApiError('code_invalid'))),
      fail: () => reject(new ApiError('network', 'wx.login failed'))
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
          reject(new ApiError(error.code || 'http_' + res.statusCode, error.message, res.statusCode));
        },
        fail: (res) => reject(new ApiError('network', (res && res.errMsg) || 'request failed'))
      });
    });
  }

  // `code` is optional for scan and confirm: the key is left out, not sent empty, when there is none.
  const withCode = (body, code) => (code ? Object.assign(body, {code}) : body);

  return {
    scan: (scene, code) => call('POST', '/api/mp/scan', withCode({scene}, code)),
    confirm: (scene, scanToken, code) => call('POST', '/api/mp/confirm', withCode({scene, scan_token: scanToken}, code)),
    cancel: (scene, scanToken) => call('POST', '/api/mp/cancel', {scene, scan_token: scanToken}),
    login: (code) => call('POST', '/api/mp/login', {code}),
    me: (token) => call('GET', '/api/me', null, token),
    logout: (token) => call('POST', '/api/logout', null, token)
  };
}

module.exports = {ApiError, MESSAGES, messageFor, retryable, wxLogin, createApi};
