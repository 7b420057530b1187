/*
 * wxlogin browser SDK: a "scan with WeChat" login box. One file, no build step.
 *
 *   <div id="login"></div>
 *   <script src="https://login.example.com/sdk/wxlogin.js"></script>
 *   <script>WxLogin.mount('#login', {endpoint: 'https://login.example.com', onSuccess: function (r) {}})</script>
 *
 * or as an ES module: import WxLogin from 'https://login.example.com/sdk/wxlogin.mjs'
 * (the gateway serves this same file with an `export` appended).
 *
 * The ticket that proves this browser asked for the code is kept in this closure only: never in
 * localStorage, sessionStorage, cookies, the URL or the DOM. After a final state (logged in,
 * cancelled, expired, error) the box closes its socket, aborts its requests and clears its timers.
 */
(function (root, factory) {
  'use strict';
  var api = factory(root);
  if (root) root.WxLogin = api;
  if (typeof module === 'object' && module && module.exports) module.exports = api;
})(typeof window !== 'undefined' ? window : (typeof globalThis !== 'undefined' ? globalThis : this), function (global) {
  'use strict';

  var VERSION = '0.2.0';

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
      alt: '微信小程序码，请用微信扫码',
      expiresIn: function (s) { return s + ' 秒后过期'; },
      reconnecting: '连接中断，正在重连…'
    },
    en: {
      loading: 'Loading the code…',
      pending: 'Scan with WeChat to log in',
      scanned: 'Scanned. Please confirm on your phone',
      confirmed: 'Confirmed, logging in…',
      done: 'Logged in',
      cancelled: 'Login cancelled on the phone',
      expired: 'The code has expired',
      error: 'Something went wrong, please try again',
      refresh: 'Refresh the code',
      alt: 'WeChat mini-program code: scan it with WeChat',
      expiresIn: function (s) { return 'Expires in ' + s + ' s'; },
      reconnecting: 'Connection lost, reconnecting…'
    }
  };

  // Low specificity (:where) so a site's own CSS wins; adopted sheets are not blocked by a strict CSP
  // the way an injected <style> element is.
  var CSS = [
    ':where(.wxl){display:inline-flex;flex-direction:column;align-items:center;gap:6px;text-align:center}',
    ':where(.wxl-code){width:200px;height:200px;image-rendering:pixelated}',
    ':where(.wxl[data-state="scanned"] .wxl-code){opacity:.35}',
    ':where(.wxl[data-state="cancelled"] .wxl-code,.wxl[data-state="expired"] .wxl-code){opacity:.12}',
    ':where(.wxl-countdown,.wxl-net){font-size:12px;color:#888;margin:0}',
    ':where(.wxl-status){margin:0;min-height:1.4em}'
  ].join('\n');
  var styled = false;

  function addStyles() {
    if (styled || typeof CSSStyleSheet === 'undefined' || !('adoptedStyleSheets' in document)) return;
    try {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      document.adoptedStyleSheets = [sheet].concat(Array.prototype.slice.call(document.adoptedStyleSheets));
      styled = true;
    } catch (e) { /* no constructable sheets: the box is plain but works */ }
  }

  // Final states of a box: nothing runs after them until the user refreshes.
  var FINAL = {done: true, cancelled: true, expired: true, error: true};
  var POLL_STATUS = {202: true, 200: true, 410: true, 408: true};

  function pickLang(lang) {
    if (lang && TEXT[lang]) return lang;
    if (lang && String(lang).toLowerCase().indexOf('zh') === 0) return 'zh';
    if (lang) return 'en';
    var nav = (global.navigator && global.navigator.language) || 'zh';
    return nav.toLowerCase().indexOf('zh') === 0 ? 'zh' : 'en';
  }

  /** Reconnect delay: exponential, capped, with "equal jitter" so many browsers do not retry at once. */
  function backoff(attempt, base, cap) {
    var ceiling = Math.min(cap, base * Math.pow(2, attempt));
    return ceiling / 2 + Math.random() * ceiling / 2;
  }

  function apiError(status, data, fallback) {
    var err = new Error((data && data.error && data.error.message) || fallback || ('HTTP ' + status));
    err.code = (data && data.error && data.error.code) || 'http_' + status;
    err.status = status;
    return err;
  }

  function mount(target, options) {
    options = options || {};
    var rootEl = typeof target === 'string' ? document.querySelector(target) : target;
    if (!rootEl) throw new Error('WxLogin.mount: no element ' + target);
    var endpoint = String(options.endpoint || '').replace(/\/+$/, '');
    var t = TEXT[pickLang(options.lang)];
    var transport = options.transport || 'auto'; // 'auto' | 'websocket' | 'longpoll'
    var pollWait = options.pollWait || 25;
    if (options.styles !== false) addStyles();

    var box = el('div', 'wxl');
    var img = el('img', 'wxl-code');
    img.alt = t.alt;
    img.hidden = true;
    var countdown = el('p', 'wxl-countdown');
    countdown.hidden = true;
    var status = el('p', 'wxl-status');
    status.setAttribute('role', 'status');
    status.setAttribute('aria-live', 'polite');
    var net = el('p', 'wxl-net');
    net.hidden = true;
    var refresh = el('button', 'wxl-refresh');
    refresh.type = 'button';
    refresh.textContent = t.refresh;
    refresh.hidden = true;
    [img, countdown, status, net, refresh].forEach(function (child) { box.appendChild(child); });
    rootEl.textContent = '';
    rootEl.appendChild(box);

    var current = null; // the session of the code on screen; see start()

    function el(tag, cls) {
      var node = document.createElement(tag);
      node.className = cls;
      return node;
    }

    function emit(name, arg) {
      var fn = options[name];
      if (typeof fn !== 'function') return;
      try { fn(arg); } catch (e) { if (global.console) global.console.error(e); }
    }

    function show(key) {
      status.textContent = t[key];
      box.setAttribute('data-state', key);
      refresh.hidden = !(key === 'expired' || key === 'cancelled' || key === 'error');
      countdown.hidden = !(key === 'pending' || key === 'scanned');
    }

    function setNet(mode) {
      box.setAttribute('data-transport', mode);
      net.hidden = mode !== 'reconnecting';
      net.textContent = mode === 'reconnecting' ? t.reconnecting : '';
    }

    // --- one session per code shown ---------------------------------------------------------

    function newSession(issued) {
      return {
        scene: issued.scene,
        ticket: issued.ticket,
        state: 'pending',
        deadline: Date.now() + Math.max(0, Number(issued.expires_in) || 0) * 1000,
        finished: false,
        ws: null,
        wsWorked: false, // a socket of this session has delivered a message
        wsFailures: 0, // closes in a row without a message
        mode: transport === 'longpoll' ? 'longpoll' : 'websocket',
        timers: [],
        aborts: []
      };
    }

    function later(session, fn, ms) {
      var id = setTimeout(function () {
        session.timers = session.timers.filter(function (x) { return x !== id; });
        fn();
      }, ms);
      session.timers.push(id);
    }

    function alive(session) { return session === current && !session.finished; }

    /** Stop everything the session runs: socket, requests, timers. Forget the ticket. */
    function end(session) {
      if (!session) return;
      session.finished = true;
      session.ticket = null;
      session.timers.forEach(clearTimeout);
      session.timers = [];
      if (session.tick) { clearInterval(session.tick); session.tick = null; }
      session.aborts.forEach(function (c) { try { c.abort(); } catch (e) { /* done */ } });
      session.aborts = [];
      if (session.ws) {
        var ws = session.ws;
        session.ws = null;
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(1000); } catch (e) { /* already closed */ }
      }
    }

    function request(session, method, path, body, headers) {
      var controller = typeof AbortController !== 'undefined' ? new AbortController() : null;
      if (controller && session) session.aborts.push(controller);
      var init = {
        method: method,
        headers: Object.assign(body ? {'Content-Type': 'application/json'} : {}, headers || {}),
        body: body ? JSON.stringify(body) : undefined,
        credentials: 'omit',
        cache: 'no-store',
        referrerPolicy: 'no-referrer'
      };
      if (controller) init.signal = controller.signal;
      return fetch(endpoint + path, init).then(function (resp) {
        return resp.json().catch(function () { return null; }).then(function (data) {
          return {status: resp.status, ok: resp.ok, data: data};
        });
      }).then(function (result) {
        if (session) session.aborts = session.aborts.filter(function (c) { return c !== controller; });
        return result;
      }, function (err) {
        if (session) session.aborts = session.aborts.filter(function (c) { return c !== controller; });
        throw err;
      });
    }

    function fail(session, err) {
      if (session !== current) return;
      end(session);
      show('error');
      setNet('idle');
      emit('onError', err);
    }

    function onState(session, state) {
      if (!alive(session)) return;
      if (state === session.state) return;
      session.state = state;
      if (state === 'pending') {
        show('pending');
      } else if (state === 'scanned') {
        show('scanned');
        emit('onScanned', {scene: session.scene});
      } else if (state === 'confirmed' || state === 'redeemed') {
        completeLogin(session);
      } else if (state === 'cancelled') {
        end(session);
        show('cancelled');
        setNet('idle');
        emit('onCancel', {scene: session.scene});
      } else if (state === 'expired') {
        expire(session);
      }
    }

    function expire(session) {
      if (!alive(session)) return;
      end(session);
      show('expired');
      setNet('idle');
      emit('onExpired', {scene: session.scene});
    }

    function completeLogin(session) {
      var ticket = session.ticket;
      // No more pushes needed: the socket and the long-poll stop now, the ticket is spent below.
      if (session.ws) { var ws = session.ws; session.ws = null; ws.onclose = ws.onmessage = null; try { ws.close(1000); } catch (e) { /* closed */ } }
      if (session.tick) { clearInterval(session.tick); session.tick = null; }
      session.timers.forEach(clearTimeout);
      session.timers = [];
      session.mode = 'completing';
      show('confirmed');
      setNet('idle');
      var attempt = 0;
      (function tryComplete() {
        request(session, 'POST', '/api/login/complete', {scene: session.scene, ticket: ticket}).then(function (r) {
          if (!alive(session)) return;
          if (r.ok && r.data && r.data.access_token) {
            end(session);
            img.hidden = true;
            show('done');
            emit('onSuccess', r.data);
          } else if ((r.status === 503 || r.status === 429 || r.status >= 500) && attempt < 4) {
            later(session, tryComplete, backoff(attempt++, 500, 4000));
          } else {
            fail(session, apiError(r.status, r.data));
          }
        }, function (err) {
          if (!alive(session)) return;
          if (attempt < 4) later(session, tryComplete, backoff(attempt++, 500, 4000));
          else fail(session, err);
        });
      })();
    }

    // --- WebSocket, with reconnect; long-poll when sockets do not work here -------------------

    function wsUrl() {
      var base = endpoint || (global.location.protocol + '//' + global.location.host);
      return base.replace(/^http/, 'ws') + '/api/login/ws';
    }

    function connect(session) {
      if (!alive(session) || session.mode !== 'websocket') return;
      var ws;
      try { ws = new WebSocket(wsUrl()); } catch (e) { return socketLost(session); }
      session.ws = ws;
      var gotMessage = false;
      var openTimer = setTimeout(function () { try { ws.close(); } catch (e) { /* closed */ } }, 5000);
      session.timers.push(openTimer);
      ws.onopen = function () {
        clearTimeout(openTimer);
        ws.send(JSON.stringify({type: 'subscribe', scene: session.scene, ticket: session.ticket}));
      };
      ws.onmessage = function (event) {
        if (!alive(session) || session.ws !== ws) return;
        var msg;
        try { msg = JSON.parse(event.data); } catch (e) { return; }
        if (!gotMessage) {
          gotMessage = true;
          session.wsWorked = true;
          session.wsFailures = 0;
          setNet('websocket');
        }
        if (msg.type === 'state') onState(session, msg.state);
        else if (msg.type === 'error') {
          if (msg.code === 'scene_expired') expire(session);
          else if (msg.code === 'scene_cancelled') onState(session, 'cancelled');
          else fail(session, apiError(0, {error: {code: msg.code, message: msg.code}}));
        }
      };
      ws.onerror = function () { /* onclose follows */ };
      ws.onclose = function () {
        clearTimeout(openTimer);
        if (session.ws !== ws) return;
        session.ws = null;
        if (!gotMessage) session.wsFailures += 1;
        socketLost(session);
      };
    }

    function socketLost(session) {
      if (!alive(session) || session.mode !== 'websocket') return;
      // A socket that never worked in this session (blocked by a proxy or the network): long-poll.
      // One that worked keeps being retried, but not forever.
      var limit = session.wsWorked ? 6 : 2;
      if (transport !== 'websocket' && session.wsFailures >= limit) {
        session.mode = 'longpoll';
        setNet('longpoll');
        poll(session, 0);
        return;
      }
      setNet('reconnecting');
      later(session, function () { connect(session); }, backoff(session.wsFailures, 400, 5000));
    }

    function poll(session, attempt) {
      if (!alive(session) || session.mode !== 'longpoll') return;
      var path = '/api/login/status?scene=' + encodeURIComponent(session.scene) + '&wait=' + pollWait +
        '&since=' + encodeURIComponent(session.state);
      request(session, 'GET', path, null, {'X-Login-Ticket': session.ticket}).then(function (r) {
        if (!alive(session)) return;
        if (POLL_STATUS[r.status] && r.data && r.data.state) {
          setNet('longpoll');
          onState(session, r.data.state);
          poll(session, 0);
        } else if (r.status === 429 || r.status >= 500) {
          setNet('reconnecting');
          later(session, function () { poll(session, attempt + 1); }, backoff(attempt, 500, 5000));
        } else {
          fail(session, apiError(r.status, r.data));
        }
      }, function () {
        if (!alive(session)) return;
        setNet('reconnecting');
        later(session, function () { poll(session, attempt + 1); }, backoff(attempt, 500, 5000));
      });
    }

    // --- the countdown: the server's expiry push is the truth; this is what the user reads ------

    function startCountdown(session) {
      function render() {
        if (!alive(session)) return;
        var left = Math.max(0, Math.ceil((session.deadline - Date.now()) / 1000));
        countdown.textContent = t.expiresIn(left);
        // Past the deadline with no word from the server (offline?): nothing can log in any more.
        if (Date.now() > session.deadline + 3000) expire(session);
      }
      render();
      session.tick = setInterval(render, 1000);
    }

    function start() {
      end(current);
      current = null;
      show('loading');
      setNet('idle');
      img.hidden = true;
      img.removeAttribute('src');
      box.removeAttribute('data-scene');
      var pending = {timers: [], aborts: [], finished: false};
      current = pending;
      return request(pending, 'POST', '/api/login/qrcode').then(function (r) {
        if (current !== pending) return;
        if (!r.ok || !r.data || !r.data.scene) return fail(pending, apiError(r.status, r.data));
        var session = newSession(r.data);
        current = session;
        img.src = r.data.image;
        img.hidden = false;
        box.setAttribute('data-scene', session.scene);
        show('pending');
        startCountdown(session);
        emit('onCode', {scene: session.scene, expiresAt: r.data.expires_at});
        if (session.mode === 'longpoll') { setNet('longpoll'); poll(session, 0); } else connect(session);
      }, function (err) {
        if (current === pending) fail(pending, err);
      });
    }

    refresh.addEventListener('click', function () { start(); });
    start();
    return {
      /** Show a new code (what the refresh button does). */
      refresh: start,
      /** The state on screen: loading, pending, scanned, confirmed, done, cancelled, expired, error. */
      state: function () { return box.getAttribute('data-state'); },
      /** Stop everything and empty the element. */
      destroy: function () { end(current); current = null; rootEl.textContent = ''; }
    };
  }

  return {mount: mount, version: VERSION, _backoff: backoff};
});
