/* The demo page: the SDK's login box on the left, a simulated phone on the right. */
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var sim = null;        // {sim_url, site_name}
  var openid = null;     // the simulated phone's WeChat user
  var scene = null;      // the code currently shown
  var scanToken = null;  // what the gateway gave this phone when it scanned (confirm/cancel need it)
  var identified = false; // the code sent with the scan identified this phone: the confirm needs none
  var caution = false;    // a red warning is shown: Confirm needs a second press (security review M4)
  var armed = false;      // Confirm was pressed once under the warning
  var box = null;

  // What the phone says, in both languages of the page, for each answer of the gateway.
  var TEXT = {
    busy: '网络繁忙，正在重试… · Busy, retrying…',
    network: '网络错误，请重试 · Network error, please try again',
    unavailable: '服务暂时不可用，请稍后重试 · Service unavailable, please try again later',
    failed: '出错了，请重试 · Something went wrong, please try again',
    scene_expired: '二维码已过期，请在左侧刷新 · The code expired: refresh it on the left',
    scene_cancelled: '本次登录已取消，请在左侧刷新 · This login was cancelled: refresh the code on the left',
    scene_not_found: '二维码无效，请在左侧刷新 · Unknown code: refresh it on the left',
    already_scanned: '该二维码已被其他微信扫描 · Another phone already scanned this code',
    already_confirmed: '本次登录已确认 · This login is already confirmed',
    scan_token_invalid: '请重新扫码 · Please scan again',
    scene_not_scanned: '请重新扫码 · Please scan again',
    code_invalid: '微信登录失败，请重试 · WeChat login failed, please try again',
    code_required: '微信登录失败，请重试 · WeChat login failed, please try again',
    user_blocked: '该微信账号暂时无法登录 · This WeChat account cannot log in for now',
    confirmed: '已确认 · Confirmed',
    cancelled: '已取消 · Cancelled',
    notMe: '已告诉网站“不是我” · The site was told "not me"',
    again: '请看清红色提示，再点一次确认 · Read the red warning, then press Confirm again',
    mismatch: '电脑和手机不在同一个省份或国家 · The computer and the phone are in different provinces or countries',
    fromImage: '这个码是从图片里识别的 · This code was recognised in a picture',
    launch_scene_refused: '请直接扫描屏幕上的码 · Scan the code on the screen itself',
    expired: '二维码已过期 · Expired'
  };
  // Answers after which the code on the left cannot be scanned again: the phone waits for a new one.
  var SPENT = {scene_expired: true, scene_cancelled: true, scene_not_found: true, already_scanned: true, already_confirmed: true};
  // Answers the phone waits out, as the mini-program does: busy (429), a service down (503), a proxy's
  // 502/504, no answer (status 0).
  var BUSY = {0: true, 429: true, 502: true, 503: true, 504: true};
  var RETRY = {attempts: 6, capMs: 10000};

  function post(url, body, headers) {
    return fetch(url, {
      method: 'POST',
      headers: Object.assign({'Content-Type': 'application/json'}, headers || {}),
      body: JSON.stringify(body || {})
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (!resp.ok) {
          var err = new Error((data.error && data.error.message) || 'HTTP ' + resp.status);
          err.code = (data.error && data.error.code) || 'http_' + resp.status;
          err.status = resp.status;
          err.retryAfter = Number(resp.headers.get('Retry-After'));
          throw err;
        }
        return data;
      });
    }, function (lost) {
      var err = new Error(String(lost && lost.message));
      err.code = 'network';
      err.status = 0;
      throw err;
    });
  }

  /** `attempt()` again after each busy answer (saying so on the phone), after its Retry-After. */
  function patiently(attempt) {
    var tries = 0;
    function run() {
      return attempt().then(null, function (err) {
        tries += 1;
        if (!BUSY[err.status] || tries >= RETRY.attempts) throw err;
        $('phone-result').textContent = TEXT.busy;
        var ms = err.retryAfter > 0 ? err.retryAfter * 1000 : 500 * Math.pow(2, tries);
        return new Promise(function (resolve) { setTimeout(resolve, Math.min(RETRY.capMs, ms)); }).then(run);
      });
    }
    return run();
  }

  /** The phone's words for a failure: translated, never the gateway's raw English. */
  function say(err) {
    if (TEXT[err.code]) return TEXT[err.code];
    if (err.status === 0) return TEXT.network;
    if (BUSY[err.status] || err.status >= 500) return TEXT.unavailable;
    return TEXT.failed;
  }

  /** Back to the Scan button; `spent`: the code on the left is over, so Scan waits for a new one. */
  function phoneReset(text, spent) {
    $('phone-approve').hidden = true;
    $('phone-scan').hidden = false;
    $('phone-scan').disabled = !!spent || !scene;
    $('phone-result').textContent = text || '';
  }

  function phoneFailed(err) {
    phoneReset(say(err), SPENT[err.code] === true);
  }

  function ensureUser() {
    if (openid) return Promise.resolve(openid);
    return post(sim.sim_url + '/sim/users', {}).then(function (user) { openid = user.openid; return openid; });
  }

  // The phone's wx.login(): a fresh code from the simulator (codes are single-use).
  function wxLogin() {
    return ensureUser()
      .then(function (id) { return post(sim.sim_url + '/sim/codes', {openid: id}); })
      .then(function (login) { return login.code; });
  }

  /** 32 random bytes in base64url: the scan token this phone chooses (the gateway keeps its hash). */
  function ownScanToken() {
    var bytes = new Uint8Array(32);
    crypto.getRandomValues(bytes);
    return btoa(String.fromCharCode.apply(null, bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  $('phone-scan').addEventListener('click', function () {
    if (!scene || $('phone-scan').disabled) return;
    var scanned = scene;
    identified = false;
    $('phone-scan').disabled = true; // one scan at a time
    $('phone-result').textContent = '';
    // As the mini-program does: the code goes with the scan, so the gateway has it exchanged while the
    // user reads the phone and the confirm waits on no WeChat call. No code: the scan works all the same.
    wxLogin()
      .then(null, function () { return null; })
      .then(function (code) {
        // The retries of one scan send the same code and the same scan token of the phone's own, as
        // the mini-program's do: a scan that landed unheard is answered again.
        // Launch scene 1047: a camera scan, as WeChat reports it to the mini-program.
        var body = {scene: scanned, launch_scene: 1047, scan_token: ownScanToken()};
        if (code) body.code = code;
        return patiently(function () { return post('/api/mp/scan', body); });
      })
      .then(function (info) {
        scanToken = info.scan_token;
        identified = info.identified === true;
        $('phone-site').textContent = info.site + ' 请求登录 · wants you to log in';
        // Where the computer and this phone are (never the computer's address); the browser and
        // system are what the browser said of itself.
        $('phone-place').textContent = '电脑所在地 · Computer: ' + info.requester.location.label;
        $('phone-own-place').textContent = '手机所在地 · Phone: ' + info.phone.location.label;
        $('phone-browser').textContent = '浏览器自报 · Reported by the browser: ' +
          info.requester.browser + ' · ' + info.requester.os;
        $('phone-time').textContent = new Date(info.requester.requested_at).toLocaleString();
        var warnings = [];
        if (info.location_mismatch) warnings.push(TEXT.mismatch);
        if (info.launch === 'image') warnings.push(TEXT.fromImage);
        caution = warnings.length > 0;
        armed = false;
        $('phone-warning').textContent = warnings.join(' ');
        $('phone-warning').hidden = !caution;
        $('phone-scan').hidden = true;
        $('phone-scan').disabled = false;
        $('phone-approve').hidden = false;
        $('phone-result').textContent = '';
      }, phoneFailed);
  });

  // Without a code when the scan identified the phone; else (or when the gateway asks for one after
  // all: code_required) with a fresh one, as the mini-program's confirm does.
  function confirmLogin() {
    var body = {scene: scene, scan_token: scanToken};
    if (identified) {
      return patiently(function () { return post('/api/mp/confirm', body); }).then(null, function (err) {
        if (err.code !== 'code_required' && err.code !== 'code_invalid') throw err;
        identified = false;
        return confirmLogin();
      });
    }
    return wxLogin().then(function (code) {
      body.code = code;
      return patiently(function () { return post('/api/mp/confirm', body); });
    });
  }

  function approving(busy) {
    $('phone-confirm').disabled = busy;
    $('phone-not-me').disabled = busy;
    $('phone-cancel').disabled = busy;
  }

  $('phone-confirm').addEventListener('click', function () {
    if (caution && !armed) { // under a red warning the first press only arms Confirm
      armed = true;
      $('phone-result').textContent = TEXT.again;
      return;
    }
    approving(true);
    confirmLogin()
      .then(function () { approving(false); phoneReset(TEXT.confirmed, true); $('phone-scan').hidden = true; },
            function (err) { approving(false); phoneFailed(err); });
  });

  // 取消, or 不是我 (reason not_me: the site tells its user the phone's owner did not ask).
  function decline(reason, done) {
    approving(true);
    var body = {scene: scene, scan_token: scanToken};
    if (reason) body.reason = reason;
    patiently(function () { return post('/api/mp/cancel', body); })
      .then(function () { approving(false); phoneReset(done, true); },
            function (err) { approving(false); phoneFailed(err); });
  }

  $('phone-cancel').addEventListener('click', function () { decline(null, TEXT.cancelled); });
  $('phone-not-me').addEventListener('click', function () { decline('not_me', TEXT.notMe); });

  var session = null; // the tokens onSuccess handed over; in memory only, like the SDK's ticket

  function showAccount(result) {
    session = result;
    var dl = $('profile');
    dl.textContent = '';
    var user = result.user || {};
    Object.keys(user).forEach(function (k) {
      var dt = document.createElement('dt'); dt.textContent = k;
      var dd = document.createElement('dd'); dd.textContent = user[k];
      dl.appendChild(dt); dl.appendChild(dd);
    });
    $('login').hidden = true;
    $('account').hidden = false;
    $('phone-scan').hidden = true;
    $('logout').focus();
  }

  $('logout').addEventListener('click', function () {
    var ending = session;
    session = null;
    var done = function () {
      $('account').hidden = true;
      $('login').hidden = false;
      scene = null; // Scan waits for the new code
      phoneReset('');
      box.refresh();
    };
    if (!ending) return done();
    // Ends the session on the server too: its refresh token stops working.
    fetch('/api/logout', {method: 'POST', headers: {Authorization: 'Bearer ' + ending.access_token}})
      .then(done, done);
  });

  // "Log in with OIDC" (demo-oidc.js) shows the OP's login page in a window of its own: while it shows
  // a code, the phone scans that one; when it closes, the box on the left again.
  var boxScene = null;
  document.addEventListener('wxlogin-demo:code', function (event) {
    var seen = event.detail || {};
    if (seen.closed) {
      scene = boxScene;
      phoneReset('', !scene);
    } else if (seen.state === 'pending' && seen.scene !== scene) {
      scene = seen.scene;
      phoneReset('');
    }
  });

  fetch('/demo/config.json').then(function (r) { return r.json(); }).then(function (config) {
    sim = config;
    box = WxLogin.mount('#login', {
      endpoint: '',
      lang: new URLSearchParams(location.search).get('lang') || undefined,
      onCode: function (code) { scene = boxScene = code.scene; phoneReset(''); },
      onSuccess: showAccount,
      // The code on the left is over: Scan waits for the refreshed one (onCode).
      onCancel: function () { phoneReset(TEXT.cancelled, true); },
      onExpired: function () { phoneReset(TEXT.expired, true); }
    });
  });
})();
