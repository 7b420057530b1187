/*
 * wxlogin browser SDK: a "scan with WeChat" login box.
 *
 *   <div id="login"></div>
 *   <script src="https://login.example.com/sdk/wxlogin.js"></script>
 *   <script>WxLogin.mount('#login', {endpoint: 'https://login.example.com', onSuccess: function (r) {}})</script>
 *
 * The ticket that proves this browser asked for the code is kept in memory only.
 */
(function (global) {
  'use strict';

  var TEXT = {
    zh: {
      loading: '正在获取二维码…',
      pending: '请使用微信扫一扫登录',
      scanned: '扫码成功，请在手机上确认',
      confirmed: '已确认，正在登录…',
      done: '登录成功',
      cancelled: '你已在手机上取消登录',
      expired: '二维码已过期',
      error: '出错了，请重试',
      refresh: '刷新二维码',
      alt: '微信小程序码'
    },
    en: {
      loading: 'Loading the code…',
      pending: 'Scan with WeChat to log in',
      scanned: 'Scanned. Confirm on your phone',
      confirmed: 'Confirmed, logging in…',
      done: 'Logged in',
      cancelled: 'Login cancelled on the phone',
      expired: 'The code has expired',
      error: 'Something went wrong, try again',
      refresh: 'Refresh the code',
      alt: 'WeChat mini-program code'
    }
  };

  function pickLang(lang) {
    if (lang && TEXT[lang]) return lang;
    var nav = (global.navigator && global.navigator.language) || 'zh';
    return nav.toLowerCase().indexOf('zh') === 0 ? 'zh' : 'en';
  }

  function mount(target, options) {
    options = options || {};
    var root = typeof target === 'string' ? document.querySelector(target) : target;
    if (!root) throw new Error('WxLogin.mount: no element ' + target);
    var endpoint = (options.endpoint || '').replace(/\/+$/, '');
    var t = TEXT[pickLang(options.lang)];

    var box = document.createElement('div');
    box.className = 'wxl';
    var img = document.createElement('img');
    img.className = 'wxl-code';
    img.alt = t.alt;
    img.hidden = true;
    var status = document.createElement('p');
    status.className = 'wxl-status';
    status.setAttribute('role', 'status');
    status.setAttribute('aria-live', 'polite');
    var refresh = document.createElement('button');
    refresh.type = 'button';
    refresh.className = 'wxl-refresh';
    refresh.textContent = t.refresh;
    refresh.hidden = true;
    box.appendChild(img);
    box.appendChild(status);
    box.appendChild(refresh);
    root.innerHTML = '';
    root.appendChild(box);

    var current = null; // {scene, ticket, ws, state, finished}

    function show(key, state) {
      status.textContent = t[key] || key;
      box.setAttribute('data-state', state || key);
      refresh.hidden = !(key === 'expired' || key === 'cancelled' || key === 'error');
    }

    function call(path, body) {
      return fetch(endpoint + path, {
        method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body: body ? JSON.stringify(body) : null,
        credentials: 'omit'
      }).then(function (resp) {
        return resp.json().then(function (data) {
          if (!resp.ok) {
            var err = new Error((data.error && data.error.message) || resp.statusText);
            err.code = data.error && data.error.code;
            err.status = resp.status;
            throw err;
          }
          return data;
        });
      });
    }

    function wsUrl() {
      var base = endpoint || (global.location.protocol + '//' + global.location.host);
      return base.replace(/^http/, 'ws') + '/api/login/ws';
    }

    function stop() {
      if (current && current.ws) {
        current.finished = true;
        try { current.ws.close(); } catch (e) { /* already closed */ }
      }
      current = null;
    }

    function fail(err) {
      show('error');
      if (options.onError) options.onError(err);
    }

    function finish(session, state) {
      session.finished = true;
      session.state = state;
      if (session.ws) { try { session.ws.close(); } catch (e) { /* closed */ } }
    }

    function onState(session, state) {
      if (session !== current || session.finished) return;
      session.state = state;
      if (state === 'scanned') {
        show('scanned');
        if (options.onScanned) options.onScanned();
      } else if (state === 'confirmed') {
        show('confirmed');
        finish(session, state);
        call('/api/login/complete', {scene: session.scene, ticket: session.ticket}).then(function (result) {
          show('done');
          img.hidden = true;
          if (options.onSuccess) options.onSuccess(result);
        }, fail);
      } else if (state === 'cancelled') {
        show('cancelled');
        finish(session, state);
        if (options.onCancel) options.onCancel();
      } else if (state === 'expired') {
        show('expired');
        finish(session, state);
        if (options.onExpired) options.onExpired();
      } else {
        show('pending');
      }
    }

    function connect(session, attempt) {
      if (session !== current || session.finished) return;
      var ws = new WebSocket(wsUrl());
      session.ws = ws;
      ws.onopen = function () {
        attempt = 0;
        ws.send(JSON.stringify({type: 'subscribe', scene: session.scene, ticket: session.ticket}));
      };
      ws.onmessage = function (event) {
        var msg;
        try { msg = JSON.parse(event.data); } catch (e) { return; }
        if (msg.type === 'state') onState(session, msg.state);
        else if (msg.type === 'error') {
          if (msg.code === 'scene_expired') onState(session, 'expired');
          else { finish(session, 'error'); fail(new Error(msg.code)); }
        }
      };
      ws.onclose = function () {
        if (session !== current || session.finished) return;
        var delay = Math.min(10000, 250 * Math.pow(2, attempt)) * (0.5 + Math.random() / 2);
        setTimeout(function () { connect(session, attempt + 1); }, delay);
      };
    }

    function start() {
      stop();
      show('loading');
      img.hidden = true;
      return call('/api/login/qrcode').then(function (issued) {
        var session = {scene: issued.scene, ticket: issued.ticket, ws: null, state: 'pending', finished: false};
        current = session;
        img.src = issued.image;
        img.hidden = false;
        box.setAttribute('data-scene', issued.scene);
        show('pending');
        if (options.onCode) options.onCode({scene: issued.scene, expiresAt: issued.expires_at});
        connect(session, 0);
      }, fail);
    }

    refresh.addEventListener('click', start);
    start();
    return {refresh: start, destroy: function () { stop(); root.innerHTML = ''; }};
  }

  global.WxLogin = {mount: mount, version: '0.1.0'};
})(typeof window !== 'undefined' ? window : this);
