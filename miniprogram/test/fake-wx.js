// A stand-in for the `wx` object of the mini-program runtime, enough for our pages:
// wx.request goes over Node's http to the real gateway; wx.login gets a code from the WeChat simulator.
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const https = require('node:https');

/** A JSON HTTP call with Node's http; resolves {status, data, headers}. */
function httpJson(method, url, body, headers) {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const payload = body === undefined || body === null ? null : Buffer.from(JSON.stringify(body));
    const allHeaders = Object.assign({}, headers || {});
    if (payload) {
      allHeaders['Content-Type'] = allHeaders['Content-Type'] || 'application/json';
      allHeaders['Content-Length'] = String(payload.length);
    }
    const lib = target.protocol === 'https:' ? https : http;
    const req = lib.request(target, {method, headers: allHeaders, timeout: 10000}, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let data = text;
        try { data = text ? JSON.parse(text) : ''; } catch (e) { /* not JSON: keep the text */ }
        resolve({status: res.statusCode, data, headers: res.headers});
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    if (payload) req.write(payload);
    req.end();
  });
}

/**
 * A `wx` for one simulated WeChat user. `wx.offline = true` makes wx.request fail as it does without
 * network (`fail` with an errMsg), `wx.requestError` with that errMsg instead (e.g. WeChat's
 * 'request:fail url not in domain list'); `wx.calls` records what the page did. `account` is what
 * wx.getAccountInfoSync() says about the mini-program (`{appId, envVersion}`; none: an old runtime,
 * which the pages treat as a release build). `wx.scans` are the next wx.scanCode results in turn (an
 * object for success, `{fail: errMsg}` for a failure). `wx.launchScene` is what
 * wx.getEnterOptionsSync() says of how the mini-program was opened (1047, a camera scan; null: none).
 */
function createWx({simUrl, account = null}) {
  const wx = {
    offline: false,
    requestError: null,
    openid: null,
    scans: [],
    // How WeChat entered the mini-program (wx.getEnterOptionsSync().scene): 1047, a scanned code.
    launchScene: 1047,
    calls: {login: 0, codes: [], requests: [], exits: 0, navigations: [], scanOptions: []},

    request(options) {
      const method = (options.method || 'GET').toUpperCase();
      wx.calls.requests.push({method, url: options.url});
      const done = (fn, arg) => { if (fn) fn(arg); if (options.complete) options.complete(arg); };
      if (wx.offline || wx.requestError) {
        const errMsg = wx.requestError || 'request:fail net::ERR_INTERNET_DISCONNECTED';
        setImmediate(() => done(options.fail, {errMsg}));
        return {abort() {}};
      }
      const body = method === 'GET' ? null : options.data;
      httpJson(method, options.url, body, options.header).then(
        (res) => done(options.success, {statusCode: res.status, data: res.data, header: res.headers, errMsg: 'request:ok'}),
        (err) => done(options.fail, {errMsg: 'request:fail ' + err.message})
      );
      return {abort() {}};
    },

    login(options) {
      wx.calls.login += 1;
      const user = wx.openid
        ? Promise.resolve(wx.openid)
        : httpJson('POST', simUrl + '/sim/users', {}).then((r) => { wx.openid = r.data.openid; return wx.openid; });
      user
        .then((openid) => httpJson('POST', simUrl + '/sim/codes', {openid}))
        .then((r) => {
          wx.calls.codes.push(r.data.code);
          options.success && options.success({code: r.data.code, errMsg: 'login:ok'});
        }, () => options.fail && options.fail({errMsg: 'login:fail'}));
    },

    // Base library 2.20.2+; a test deletes it to play an older runtime.
    getRandomValues(options) {
      const bytes = crypto.randomBytes(options.length);
      const randomValues = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length);
      setImmediate(() => options.success && options.success({randomValues, errMsg: 'getRandomValues:ok'}));
    },

    exitMiniProgram() { wx.calls.exits += 1; },

    getEnterOptionsSync() {
      return {scene: wx.launchScene, query: {}};
    },

    scanCode(options) {
      wx.calls.scanOptions.push({onlyFromCamera: options.onlyFromCamera, scanType: options.scanType});
      const next = wx.scans.shift() || {fail: 'scanCode:fail cancel'};
      setImmediate(() => {
        if (next.fail) options.fail && options.fail({errMsg: next.fail});
        else options.success && options.success(Object.assign({errMsg: 'scanCode:ok'}, next));
      });
    },

    navigateTo(options) { navigate('navigateTo', options); },
    navigateBack(options) { navigate('navigateBack', options); },
    reLaunch(options) { navigate('reLaunch', options); }
  };
  if (account) {
    wx.getAccountInfoSync = () => ({miniProgram: Object.assign({appId: '', envVersion: 'release'}, account)});
  }

  function navigate(how, options) {
    wx.calls.navigations.push({how, url: options.url, delta: options.delta});
    setImmediate(() => {
      if (options.success) options.success({errMsg: how + ':ok'});
      if (options.complete) options.complete({errMsg: how + ':ok'});
    });
  }
  return wx;
}

/** A page instance as the runtime makes one from a Page() definition: own `data`, a `setData`. */
function mountPage(definition) {
  const page = Object.assign({}, definition);
  page.data = JSON.parse(JSON.stringify(definition.data));
  page.setData = function (patch) { Object.assign(this.data, patch); };
  return page;
}

module.exports = {createWx, mountPage, httpJson};
