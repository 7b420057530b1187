// The home page (pages/index/index), what opening the mini-program normally shows: how to log in on a
// web site by scanning, a 扫一扫 button for codes on a screen, 输入网页上的登录码 for a web page open on
// this phone (which cannot be scanned), and "my account" (lib/mplogin-page.js).
// Nothing happens before a tap: no login on entry, no personal data asked for.
'use strict';

const {formatTyping, loginCodeProblem, normalizeLoginCode} = require('./logincode');
const {createMpLoginPage} = require('./mplogin-page');
const {noteCameraScan} = require('./launch');

/** The scan-login page a scanned scene opens. */
const LOGIN_PAGE = 'pages/login/index';
/** The phone-binding sample. */
const PHONE_PAGE = 'pages/phone/index';
/** What a scene looks like (the qrcode service's are 32 URL-safe characters; getwxacodeunlimit allows 32). */
const SCENE = /^[A-Za-z0-9_-]{16,32}$/;

/** The query of a page path ("pages/login/index?scene=abc&x=1") as an object, values URL-decoded once. */
function queryOf(path) {
  const query = {};
  const at = String(path).indexOf('?');
  if (at < 0) return query;
  String(path).slice(at + 1).split('&').forEach((pair) => {
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? '' : pair.slice(eq + 1);
    try {
      query[decodeURIComponent(key)] = decodeURIComponent(value);
    } catch (e) {
      query[key] = '';
    }
  });
  return query;
}

/**
 * The login scene in a wx.scanCode result, or ''. A code of this mini-program comes back with its
 * `path` ("pages/login/index?scene=…"; WeChat gives it only for this mini-program's own codes); the
 * WeChat simulator's square QR codes carry the bare scene as `result`.
 */
function sceneFromScan(res) {
  if (!res) return '';
  if (res.path) {
    const scene = queryOf(res.path).scene || '';
    return SCENE.test(scene) ? scene : '';
  }
  const text = String(res.result || '').trim();
  return SCENE.test(text) ? text : '';
}

/** The Page() definition: `app` is what getApp() returns (the session lives in app.globalData). */
function createHomePage({wx, config, app}) {
  const account = createMpLoginPage({wx, config, app});

  return Object.assign({}, account, {
    data: Object.assign({}, account.data, {scanMessage: '', loginCode: '', codeMessage: ''}),

    /** The login code input: shown as typed, upper case, a dash after four (the value it returns). */
    onLoginCodeInput(event) {
      const loginCode = formatTyping(event && event.detail && event.detail.value);
      this.setData({loginCode, codeMessage: ''});
      return loginCode;
    },

    /** 登录: the typed code opens the same confirm page as a scan of the code would. */
    onEnterCode() {
      const code = normalizeLoginCode(this.data.loginCode);
      if (!code) {
        this.setData({codeMessage: loginCodeProblem(this.data.loginCode)});
        return Promise.resolve();
      }
      this.setData({codeMessage: ''});
      return new Promise((resolve) => {
        wx.navigateTo({url: '/' + LOGIN_PAGE + '?login_code=' + code, complete: () => resolve()});
      });
    },

    onScan() {
      this.setData({scanMessage: ''});
      return new Promise((resolve) => {
        wx.scanCode({
          // The camera only: a code picked from the album is how a relayed code arrives (a chat image
          // saved, "长按识别领红包"); the login page reports this scan as a camera scan (1047).
          onlyFromCamera: true,
          scanType: ['wxCode', 'qrCode'],
          success: (res) => {
            const scene = sceneFromScan(res);
            if (!scene) {
              this.setData({scanMessage: '这不是网站登录的小程序码。请扫描网站登录框里的码。'});
              return resolve();
            }
            noteCameraScan(scene);
            wx.navigateTo({url: '/' + LOGIN_PAGE + '?scene=' + encodeURIComponent(scene), complete: () => resolve()});
          },
          fail: (res) => {
            const errMsg = (res && res.errMsg) || '';
            // Closing the scanner is the user's choice, not an error.
            if (!/cancel/i.test(errMsg)) this.setData({scanMessage: '扫码失败（' + errMsg + '），请重试'});
            resolve();
          }
        });
      });
    },

    onBindPhone() {
      wx.navigateTo({url: '/' + PHONE_PAGE});
    }
  });
}

module.exports = {LOGIN_PAGE, PHONE_PAGE, createHomePage, queryOf, sceneFromScan};
