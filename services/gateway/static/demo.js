/* The demo page: the SDK's login box on the left, a simulated phone on the right. */
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var sim = null;        // {sim_url, site_name}
  var openid = null;     // the simulated phone's WeChat user
  var scene = null;      // the code currently shown
  var scanToken = null;  // what the gateway gave this phone when it scanned (confirm/cancel need it)
  var identified = false; // the code sent with the scan identified this phone: the confirm needs none
  var box = null;

  function post(url, body, headers) {
    return fetch(url, {
      method: 'POST',
      headers: Object.assign({'Content-Type': 'application/json'}, headers || {}),
      body: JSON.stringify(body || {})
    }).then(function (resp) {
      return resp.json().then(function (data) {
        if (!resp.ok) {
          var err = new Error((data.error && (data.error.code + ': ' + data.error.message)) || data.error || resp.status);
          err.code = data.error && data.error.code;
          throw err;
        }
        return data;
      });
    });
  }

  function phoneReset(text) {
    $('phone-approve').hidden = true;
    $('phone-scan').hidden = false;
    $('phone-result').textContent = text || '';
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

  $('phone-scan').addEventListener('click', function () {
    if (!scene) return;
    var scanned = scene;
    identified = false;
    // As the mini-program does: the code goes with the scan, so the gateway has it exchanged while the
    // user reads the phone and the confirm waits on no WeChat call. No code: the scan works all the same.
    wxLogin()
      .then(null, function () { return null; })
      .then(function (code) { return post('/api/mp/scan', code ? {scene: scanned, code: code} : {scene: scanned}); })
      .then(function (info) {
        scanToken = info.scan_token;
        identified = info.identified === true;
        $('phone-site').textContent = info.site + ' 请求登录 · wants you to log in';
        $('phone-browser').textContent = info.requester.browser + ' · ' + info.requester.os;
        $('phone-ip').textContent = 'IP ' + info.requester.ip;
        $('phone-time').textContent = new Date(info.requester.requested_at).toLocaleString();
        $('phone-scan').hidden = true;
        $('phone-approve').hidden = false;
        $('phone-result').textContent = '';
      }, function (err) { phoneReset(String(err.message)); });
  });

  // Without a code when the scan identified the phone; else (or when the gateway asks for one after
  // all: code_required) with a fresh one, as the mini-program's confirm does.
  function confirmLogin() {
    var body = {scene: scene, scan_token: scanToken};
    if (identified) {
      return post('/api/mp/confirm', body).then(null, function (err) {
        if (err.code !== 'code_required' && err.code !== 'code_invalid') throw err;
        identified = false;
        return confirmLogin();
      });
    }
    return wxLogin().then(function (code) { body.code = code; return post('/api/mp/confirm', body); });
  }

  $('phone-confirm').addEventListener('click', function () {
    confirmLogin()
      .then(function () { phoneReset('已确认 · Confirmed'); $('phone-scan').hidden = true; },
            function (err) { phoneReset(String(err.message)); });
  });

  $('phone-cancel').addEventListener('click', function () {
    post('/api/mp/cancel', {scene: scene, scan_token: scanToken}).then(function () { phoneReset('已取消 · Cancelled'); },
      function (err) { phoneReset(String(err.message)); });
  });

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
      phoneReset('');
      box.refresh();
    };
    if (!ending) return done();
    // Ends the session on the server too: its refresh token stops working.
    fetch('/api/logout', {method: 'POST', headers: {Authorization: 'Bearer ' + ending.access_token}})
      .then(done, done);
  });

  fetch('/demo/config.json').then(function (r) { return r.json(); }).then(function (config) {
    sim = config;
    box = WxLogin.mount('#login', {
      endpoint: '',
      lang: new URLSearchParams(location.search).get('lang') || undefined,
      onCode: function (code) { scene = code.scene; phoneReset(''); },
      onSuccess: showAccount,
      onCancel: function () { phoneReset('已取消 · Cancelled'); },
      onExpired: function () { phoneReset('二维码已过期 · Expired'); }
    });
  });
})();
