/*
 * wxlogin browser SDK: a "scan with WeChat" login box. One file, no build step.
 *
 *   <div id="login"></div>
 *   <script src="https://login.example.com/sdk/wxlogin.js"></script>
 *   <script>WxLogin.mount('#login', {endpoint: 'https://login.example.com', onSuccess: function (r) {}})</script>
 *
 * or as an ES module: import WxLogin from 'https://login.example.com/sdk/wxlogin.mjs'
 *
 * A site registered as a client (WXLOGIN_CLIENTS_FILE) passes its id: `clientId: 'acme-web'`; the
 * code is then issued for that client (the phone shows its site name) and only that client can
 * collect the login. Without it the login belongs to the deployment's default client.
 * (the gateway serves this same file with an `export` appended).
 *
 * The ticket that proves this browser asked for the code is kept in this closure only: never in
 * localStorage, sessionStorage, cookies, the URL or the DOM. After a final state (logged in,
 * cancelled, expired, error) the box closes its socket, aborts its requests and clears its timers.
 *
 * An outage is waited out, not reported: an answer of 503 or 429 (with its Retry-After), a proxy's
 * 502/504, a request that got no answer, or a subscribe refused with `retry_after` is asked again
 * after that delay (capped, with a little jitter), while the box shows "reconnecting"; never past the
 * code's expiry. Only other errors reach onError.
 *
 * A phone cannot scan its own screen, so the box adapts to where it runs (option `device`, 'auto' by
 * default, reads the User-Agent): in WeChat's browser the code is shown at 280 px with "长按识别小程序码"
 * (long-press it); in any other phone browser it offers to save the picture (to scan it from the album
 * in WeChat), an 8-character login code to type into the mini-program's home page, and "打开微信" when
 * the service gives a URL Link. When the page comes back to the foreground it asks for the state again.
 *
 * Link mode (docs/linking.md): `WxLogin.mount(el, {clientId: 'shop', link: linkToken, onLinked: fn})`
 * shows a code that links the site's signed-in account to the WeChat user who scans it (the phone
 * says so). `link` is the link token the site's backend got from POST /api/link/requests, or a
 * function returning it (or a promise of it): a token shows one code, so every new code (refresh)
 * asks the function again. No token is issued; onLinked({state: 'linked', scene, link_request}).
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
      // The phone's 不是我 (cancel reason not_me): somebody else scanned this code (security review M4).
      notMe: '手机上选择了“不是我”：如果不是你本人在扫码，请不要把二维码发给别人',
      expired: '二维码已过期',
      error: '出错了，请重试',
      refresh: '刷新二维码',
      alt: '微信小程序码，请用微信扫码',
      expiresIn: function (s) { return s + ' 秒后过期'; },
      reconnecting: '连接中断，正在重连…',
      busy: '请求太多，正在重试…',
      lost: '登录未能完成，请刷新二维码后重新扫码',
      // A browser inside WeChat (long-press) and one on a phone (save the picture, or type the code).
      longPress: '长按识别小程序码',
      pendingPhone: '在这部手机上登录，请用下面的方法',
      scannedHere: '已识别，请在小程序里确认登录',
      altHere: '微信小程序码，长按识别',
      save: '保存二维码',
      saveSteps: '保存图片后，打开微信“扫一扫”，从相册选择这张图片',
      typeIntro: function (app) {
        return '或打开微信小程序' + (app ? '「' + app + '」' : '') + '，在首页点“输入网页上的登录码”，输入：';
      },
      openWeChat: '打开微信',
      // Link mode: the code links the signed-in account; a refusal says why (the phone hears it too).
      link: {
        pending: '请使用微信扫一扫，把微信绑定到当前账号',
        scanned: '扫码成功，请在手机上确认绑定',
        confirmed: '已确认，正在完成绑定…',
        done: '绑定成功',
        cancelled: '你已在手机上取消绑定',
        already_linked: '这个微信已绑定本站的另一个账号，请先在那个账号中解除绑定',
        account_already_linked: '当前账号已绑定了另一个微信',
        gone: '绑定二维码已失效，请刷新后重试'
      }
    },
    en: {
      loading: 'Loading the code…',
      pending: 'Scan with WeChat to log in',
      scanned: 'Scanned. Please confirm on your phone',
      confirmed: 'Confirmed, logging in…',
      done: 'Logged in',
      cancelled: 'Login cancelled on the phone',
      notMe: 'The phone said "not me": if it was not you scanning, do not send the code to anyone',
      expired: 'The code has expired',
      error: 'Something went wrong, please try again',
      refresh: 'Refresh the code',
      alt: 'WeChat mini-program code: scan it with WeChat',
      expiresIn: function (s) { return 'Expires in ' + s + ' s'; },
      reconnecting: 'Connection lost, reconnecting…',
      busy: 'Busy, retrying…',
      lost: 'The login could not be finished. Refresh the code and scan again',
      longPress: 'Press and hold the code to open it in WeChat',
      pendingPhone: 'To log in on this phone, use one of the ways below',
      scannedHere: 'Recognised. Please confirm in the mini-program',
      altHere: 'WeChat mini-program code: press and hold it',
      save: 'Save the code',
      saveSteps: 'Save the picture, then in WeChat open Scan and pick it from your album',
      typeIntro: function (app) {
        return 'Or open the ' + (app ? '"' + app + '" ' : '') +
          'mini-program in WeChat, tap "Enter the login code" on its home page and type:';
      },
      openWeChat: 'Open WeChat',
      link: {
        pending: 'Scan with WeChat to link it to this account',
        scanned: 'Scanned. Please confirm the link on your phone',
        confirmed: 'Confirmed, linking…',
        done: 'Linked',
        cancelled: 'Linking cancelled on the phone',
        already_linked: 'This WeChat is already linked to another account of this site: unlink it there first',
        account_already_linked: 'This account is already linked to another WeChat',
        gone: 'This link code is no longer valid: refresh and try again'
      }
    }
  };

  // Low specificity (:where) so a site's own CSS wins; adopted sheets are not blocked by a strict CSP
  // the way an injected <style> element is. The texts take the box's width without setting it (size
  // containment, stretched), so a longer text in one state or language wraps instead of widening,
  // and moving, the box. Only a pixel-grid code (see pixelGrid) is scaled without smoothing.
  var CSS = [
    ':where(.wxl){display:inline-flex;flex-direction:column;align-items:center;gap:6px;text-align:center;min-width:200px}',
    ':where(.wxl-status,.wxl-net){contain:inline-size;align-self:stretch}',
    ':where(.wxl-code){width:200px;height:200px}',
    ':where(.wxl-code[data-render="crisp"]){image-rendering:pixelated}',
    ':where(.wxl[data-state="scanned"] .wxl-code){opacity:.35}',
    ':where(.wxl[data-state="cancelled"] .wxl-code,.wxl[data-state="expired"] .wxl-code){opacity:.12}',
    ':where(.wxl-countdown,.wxl-net){font-size:12px;color:#888;margin:0}',
    ':where(.wxl-status){margin:0;min-height:1.4em}',
    // On the phone itself: a code big enough to long-press (WeChat), or to save and to type (others).
    ':where(.wxl[data-device="wechat"] .wxl-code){width:280px;height:280px}',
    ':where(.wxl-phone){contain:inline-size;align-self:stretch;display:flex;flex-direction:column;align-items:center;gap:6px;font-size:13px;color:#555}',
    ':where(.wxl-phone p){margin:0}',
    ':where(.wxl-save,.wxl-open){display:inline-block;padding:6px 14px;border:1px solid #07c160;border-radius:4px;color:#07c160;text-decoration:none}',
    ':where(.wxl-open){background:#07c160;color:#fff}',
    ':where(.wxl-login-code){font:600 22px/1.3 ui-monospace,Menlo,Consolas,monospace;letter-spacing:2px;color:#111}',
    // Last: what the box hides stays hidden whatever display the rules above give it.
    ':where(.wxl [hidden]){display:none}'
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

  // A link request that can show no (more) code: a new one is needed (a refresh asks `link` again).
  var LINK_GONE = {link_request_used: true, link_request_expired: true, link_request_not_found: true};

  // Final states of a box: nothing runs after them until the user refreshes.
  var FINAL = {done: true, cancelled: true, expired: true, error: true};
  var POLL_STATUS = {202: true, 200: true, 410: true, 408: true};
  // Answers that say "the service is there but cannot serve right now": 503 (a dependency is down:
  // bus, store, WeChat, an RPC timeout), 429 (busy), and a proxy's 502/504. Status 0: no answer at all.
  var BUSY_STATUS = {0: true, 429: true, 502: true, 503: true, 504: true};
  // The codes of those answers, for a refused WebSocket subscribe that carries no retry_after.
  var BUSY_CODES = {
    bus_unavailable: true, store_unavailable: true, service_unavailable: true, rpc_timeout: true,
    token_unavailable: true, wechat_unavailable: true, rate_limited: true
  };
  var RETRY = {
    cap: 15000, // ms: no single wait is longer, whatever Retry-After says
    issueFor: 60000, // ms: how long getting a code keeps trying (there is no code to expire yet)
    completeFor: 60000 // ms after "confirmed": the server keeps a confirmed login that long (redeem window)
  };

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

  /**
   * How long to wait before asking again: the server's Retry-After (seconds) when it gave one, else
   * exponential backoff; capped, plus a little jitter so browsers of one outage do not return at once.
   */
  function retryDelay(retryAfter, attempt) {
    var ms = retryAfter != null ? retryAfter * 1000 : backoff(attempt, 500, 8000);
    ms = Math.min(RETRY.cap, Math.max(250, ms));
    return ms + Math.random() * Math.min(1000, ms / 4);
  }

  /** Retry-After as seconds (a number or an HTTP date), or null when absent or unreadable. */
  function parseRetryAfter(value) {
    if (value == null || value === '') return null;
    var seconds = Number(value);
    if (isFinite(seconds)) return Math.max(0, seconds);
    var at = Date.parse(value);
    return isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
  }

  /** An answer (see request()) as an Error for onError: `code` is the gateway's error code. */
  function apiError(r) {
    if (r.status === 0) {
      var lost = new Error((r.error && r.error.message) || 'network error');
      lost.code = 'network_error';
      lost.status = 0;
      return lost;
    }
    var data = r.data;
    var err = new Error((data && data.error && data.error.message) || ('HTTP ' + r.status));
    err.code = (data && data.error && data.error.code) || 'http_' + r.status;
    err.status = r.status;
    return err;
  }

  /** A subscribe the gateway refused for good, as an Error for onError (status 0: not HTTP). */
  function refusal(code) {
    var err = new Error(code);
    err.code = code;
    err.status = 0;
    return err;
  }

  function busy(r) { return BUSY_STATUS[r.status] === true; }

  /**
   * Whether a code image is a pixel grid: a 1-bit PNG, which is what the WeChat simulator renders (a
   * square QR code, one colour per module). Scaled, it must stay crisp. WeChat's real codes are round
   * 小程序码 with thin anti-aliased strokes (JPEG, or an 8-bit PNG when transparent): nearest-neighbour
   * scaling breaks their strokes up, so they are scaled smoothly. Read from the PNG header (IHDR bit
   * depth) in the data: URI; anything unreadable is treated as a real code.
   */
  function pixelGrid(src) {
    // Whatever the label says (WeChat labels every code image/jpeg): the bytes decide.
    var m = /^data:image\/[\w.+-]+;base64,([A-Za-z0-9+\/]{36})/.exec(String(src || ''));
    if (!m || typeof global.atob !== 'function') return false;
    var head;
    try { head = global.atob(m[1]); } catch (e) { return false; }
    // 8-byte signature, IHDR length and type (8), width and height (8), then bit depth, colour type.
    return head.slice(1, 4) === 'PNG' && head.slice(12, 16) === 'IHDR' && head.charCodeAt(24) === 1;
  }

  /**
   * Where the page runs, which decides how the phone can reach the code: 'wechat' (WeChat's own
   * browser on a phone: long-press the code), 'phone' (any other browser on a phone or tablet: it
   * cannot scan its own screen, so save the picture or type a code) or 'desktop' (scan the screen).
   * WeChat for Windows/Mac also says MicroMessenger; there the phone scans the screen as usual.
   */
  function deviceOf(ua, touchPoints) {
    ua = String(ua || '');
    var onPhone = /Android|iPhone|iPad|iPod|Mobile|HarmonyOS|OpenHarmony/i.test(ua) ||
      (/Macintosh/.test(ua) && touchPoints > 1); // iPadOS Safari presents itself as a Mac
    if (/MicroMessenger/i.test(ua) && !/WindowsWechat|MacWechat|wxwork/i.test(ua) && onPhone) return 'wechat';
    return onPhone ? 'phone' : 'desktop';
  }

  /** The file extension of a code image in a data: URI (WeChat sends JPEG or PNG, whatever it says). */
  function imageExt(src) {
    var data = String(src || '').split(',')[1] || '';
    return data.indexOf('/9j/') === 0 ? 'jpg' : 'png';
  }

  function mount(target, options) {
    options = options || {};
    var rootEl = typeof target === 'string' ? document.querySelector(target) : target;
    if (!rootEl) throw new Error('WxLogin.mount: no element ' + target);
    var endpoint = String(options.endpoint || '').replace(/\/+$/, '');
    var t = TEXT[pickLang(options.lang)];
    var transport = options.transport || 'auto'; // 'auto' | 'websocket' | 'longpoll'
    var pollWait = options.pollWait || 25;
    // 'auto' reads the User-Agent (see deviceOf); a site may say 'desktop', 'phone' or 'wechat'.
    var device = options.device && options.device !== 'auto' ? options.device
      : deviceOf(global.navigator && global.navigator.userAgent, global.navigator && global.navigator.maxTouchPoints);
    var clientId = options.clientId ? String(options.clientId) : null;
    // Where a confirmed login is collected: /api/login/complete (tokens), or what the hosted OpenID
    // Connect page says ({path, body, credentials}: it answers where the browser goes next).
    var collect = options.complete || null;
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
    // On a phone (not in WeChat): open WeChat (a URL Link), save the picture, or type the login code.
    var phone = el('div', 'wxl-phone');
    phone.hidden = true;
    var openLink = el('a', 'wxl-open');
    openLink.textContent = t.openWeChat;
    openLink.rel = 'noopener';
    var saveLink = el('a', 'wxl-save');
    saveLink.textContent = t.save;
    var saveSteps = el('p', 'wxl-steps');
    saveSteps.textContent = t.saveSteps;
    var typeIntro = el('p', 'wxl-type');
    typeIntro.textContent = t.typeIntro(options.appName);
    var loginCode = el('strong', 'wxl-login-code');
    [openLink, saveLink, saveSteps, typeIntro, loginCode].forEach(function (child) { phone.appendChild(child); });
    box.setAttribute('data-device', device);
    if (device === 'wechat') {
      img.alt = t.altHere;
      // Big enough to press and hold, whatever size the site's own CSS gives codes on a computer
      // (set through the CSSOM, which a strict CSP allows).
      img.style.width = img.style.height = Math.max(280, Number(options.codeSize) || 0) + 'px';
    }
    [img, countdown, status, net, phone, refresh].forEach(function (child) { box.appendChild(child); });
    rootEl.textContent = '';
    rootEl.appendChild(box);

    var current = null; // the session of the code on screen; see start()
    // Link mode: the link token, or a function that gets one for each new code (see the top).
    var link = options.link || null;
    if (link) box.setAttribute('data-mode', 'link');

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

    /** The status line: on the phone itself, what the user does there instead of scanning. */
    function textFor(key) {
      if (link && t.link[key] && (device === 'desktop' || key !== 'pending')) return t.link[key];
      if (device === 'wechat' && key === 'pending') return t.longPress;
      if (device === 'phone' && key === 'pending') return t.pendingPhone;
      if (device !== 'desktop' && key === 'scanned') return t.scannedHere;
      return t[key];
    }

    /** What a phone shows beside the code: the links and the login code the issue answer gave. */
    function fillPhone(issued) {
      var code = String(issued.login_code || '');
      loginCode.textContent = code.length === 8 ? code.slice(0, 4) + '-' + code.slice(4) : '';
      loginCode.setAttribute('data-code', code);
      loginCode.hidden = typeIntro.hidden = !code;
      saveLink.href = issued.image;
      saveLink.setAttribute('download', 'wechat-login-code.' + imageExt(issued.image));
      openLink.hidden = !issued.url_link;
      if (issued.url_link) openLink.href = issued.url_link;
      else openLink.removeAttribute('href');
    }

    function show(key) {
      status.textContent = textFor(key);
      phone.hidden = !(device === 'phone' && key === 'pending' && saveLink.hasAttribute('href'));
      box.setAttribute('data-state', key);
      refresh.hidden = !(key === 'expired' || key === 'cancelled' || key === 'error');
      countdown.hidden = !(key === 'pending' || key === 'scanned');
    }

    /** The transport on the box; `why` 'busy' (a 429) says "busy, retrying" instead of "connection lost". */
    function setNet(mode, why) {
      box.setAttribute('data-transport', mode);
      net.hidden = mode !== 'reconnecting';
      net.textContent = mode === 'reconnecting' ? (why === 'busy' ? t.busy : t.reconnecting) : '';
    }

    /** Why a busy answer is waited out, for setNet: rate limited, or something down. */
    function busyWhy(r) { return r.status === 429 ? 'busy' : null; }

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
        refusals: 0, // subscribes in a row refused for now (retry_after)
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

    function request(session, method, path, body, headers, credentials) {
      var controller = typeof AbortController !== 'undefined' ? new AbortController() : null;
      if (controller && session) session.aborts.push(controller);
      var init = {
        method: method,
        headers: Object.assign(body ? {'Content-Type': 'application/json'} : {}, headers || {}),
        body: body ? JSON.stringify(body) : undefined,
        credentials: credentials || 'omit',
        cache: 'no-store',
        referrerPolicy: 'no-referrer'
      };
      if (controller) init.signal = controller.signal;
      // Always resolves: {status, ok, data, retryAfter}, with status 0 (and `error`) when no answer
      // came (offline, refused, reset); an aborted request resolves so too, for a session that ended.
      return fetch(endpoint + path, init).then(function (resp) {
        // A cross-origin page reads Retry-After only if the gateway exposes it; null means "back off".
        var retryAfter = parseRetryAfter(resp.headers && resp.headers.get('Retry-After'));
        return resp.json().catch(function () { return null; }).then(function (data) {
          return {status: resp.status, ok: resp.ok, data: data, retryAfter: retryAfter};
        });
      }).catch(function (err) {
        return {status: 0, ok: false, data: null, retryAfter: null, error: err};
      }).then(function (result) {
        if (session) session.aborts = session.aborts.filter(function (c) { return c !== controller; });
        return result;
      });
    }

    function fail(session, err, why) {
      if (session !== current) return;
      end(session);
      show('error');
      if (why) status.textContent = t[why];
      if (link && err && LINK_GONE[err.code]) status.textContent = t.link.gone;
      setNet('idle');
      if (err && err.code === 'origin_not_allowed' && global.console) {
        // The most common first-hour mistake: say which setting to change, on which server.
        global.console.error('wxlogin: this page\'s origin (' + (global.location && global.location.origin) +
          ') is not allowed by the login service at ' + endpoint +
          '. Add it to WXLOGIN_ALLOWED_ORIGINS there (exact scheme://host[:port], comma-separated).');
      }
      emit('onError', err);
    }

    /** A state pushed or polled; `reason` is why a cancelled login was cancelled (declined, not_me). */
    function onState(session, state, reason) {
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
        if (reason === 'not_me') status.textContent = t.notMe;
        else if (link && reason && t.link[reason]) status.textContent = t.link[reason]; // a refused link
        if (reason) box.setAttribute('data-reason', reason);
        setNet('idle');
        emit('onCancel', {scene: session.scene, reason: reason || null});
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

    /**
     * Collect the tokens of a confirmed login. A busy or missing answer is asked again until the
     * server's redeem window is over: a confirmed login is never given up while it can be collected.
     */
    function completeLogin(session) {
      var ticket = session.ticket;
      // Whether a complete of ours may have gone through without us hearing the answer; then the
      // server's already_redeemed means our tokens were issued and lost, not someone else's doing.
      var unheard = session.state === 'redeemed';
      var until = Math.max(session.deadline, Date.now() + RETRY.completeFor);
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
        var body = Object.assign({}, collect && collect.body, {scene: session.scene, ticket: ticket});
        if (clientId) body.client_id = clientId;
        var path = (collect && collect.path) || (link ? '/api/link/complete' : '/api/login/complete');
        request(session, 'POST', path, body, null, collect && collect.credentials).then(function (r) {
          if (!alive(session)) return;
          if (r.ok && r.data && (collect || (link ? r.data.state === 'linked' : r.data.access_token))) {
            end(session);
            img.hidden = true;
            show('done');
            setNet('idle');
            emit(link ? 'onLinked' : 'onSuccess', r.data);
            return;
          }
          var err = apiError(r);
          var wait = retryDelay(r.retryAfter, attempt++);
          if ((busy(r) || r.status >= 500) && Date.now() + wait <= until) {
            if (r.status !== 429) unheard = true; // the redeem may have happened behind this answer
            setNet('reconnecting', busyWhy(r));
            later(session, tryComplete, wait);
          } else if (unheard && err.code === 'already_redeemed') {
            // The server answers a repeat with the same session only within its redeem window; past
            // it, the tokens went out with an answer that never arrived. Only a new code helps now.
            err.lost = true;
            fail(session, err, 'lost');
          } else {
            fail(session, err);
          }
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
        if (msg.type === 'state') {
          session.refusals = 0;
          onState(session, msg.state, msg.reason);
        } else if (msg.type === 'error') {
          if (msg.code === 'scene_expired') expire(session);
          else if (msg.code === 'scene_cancelled') onState(session, 'cancelled', msg.reason);
          else if (msg.retry_after != null || BUSY_CODES[msg.code]) subscribeLater(session, ws, msg.retry_after, msg.code);
          else fail(session, refusal(msg.code));
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

    /** The subscribe was refused for now (the gateway could not read the scene): subscribe again later. */
    function subscribeLater(session, ws, retryAfter, code) {
      session.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000); } catch (e) { /* closed */ }
      setNet('reconnecting', code === 'rate_limited' ? 'busy' : null);
      var hint = retryAfter != null ? Number(retryAfter) : null;
      later(session, function () { connect(session); }, retryDelay(isFinite(hint) ? hint : null, session.refusals++));
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
      var round = session.pollRound; // a resume (see resume()) starts a new round; this one then stops
      // After a busy answer, a quick read first: the box leaves "reconnecting" as soon as it can.
      var path = '/api/login/status?scene=' + encodeURIComponent(session.scene) + '&wait=' + (attempt ? 0 : pollWait) +
        '&since=' + encodeURIComponent(session.state);
      request(session, 'GET', path, null, {'X-Login-Ticket': session.ticket}).then(function (r) {
        if (!alive(session) || round !== session.pollRound) return;
        if (POLL_STATUS[r.status] && r.data && r.data.state) {
          setNet('longpoll');
          onState(session, r.data.state, r.data.reason);
          poll(session, 0);
        } else if (busy(r) || r.status >= 500) {
          // Until the code expires (the countdown ends the session then).
          setNet('reconnecting', busyWhy(r));
          later(session, function () { poll(session, attempt + 1); }, retryDelay(r.retryAfter, attempt));
        } else {
          fail(session, apiError(r));
        }
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
      saveLink.removeAttribute('href');
      box.removeAttribute('data-scene');
      box.removeAttribute('data-reason');
      var pending = {timers: [], aborts: [], finished: false};
      current = pending;
      var attempt = 0;
      var until = Date.now() + RETRY.issueFor;
      var linkToken = null;
      function issue() {
        // A phone cannot scan its own screen: it asks for a code to type and a link to open WeChat.
        var body = device === 'phone' ? {login_code: true, url_link: true} : null;
        if (clientId) body = Object.assign(body || {}, {client_id: clientId});
        if (linkToken) body = Object.assign(body || {}, {link_token: linkToken});
        request(pending, 'POST', '/api/login/qrcode', body).then(function (r) {
          if (!alive(pending)) return;
          if (r.ok && r.data && r.data.scene) return begin(pending, r.data);
          var wait = retryDelay(r.retryAfter, attempt++);
          if (busy(r) && Date.now() + wait <= until) {
            setNet('reconnecting', busyWhy(r));
            later(pending, issue, wait);
          } else {
            fail(pending, apiError(r));
          }
        });
      }
      if (typeof link !== 'function') {
        linkToken = link;
        issue();
        return;
      }
      // A token for this code, from the site (its backend opens a link request per code).
      Promise.resolve().then(link).then(function (token) {
        if (!alive(pending)) return;
        if (!token) throw new Error('the link option gave no link token');
        linkToken = String(token);
        issue();
      }).catch(function (e) {
        var err = e instanceof Error ? e : new Error(String(e));
        err.code = err.code || 'link_token_unavailable';
        fail(pending, err);
      });
    }

    function begin(pending, issued) {
      end(pending);
      var session = newSession(issued);
      current = session;
      img.setAttribute('data-render', pixelGrid(issued.image) ? 'crisp' : 'smooth');
      img.src = issued.image;
      img.hidden = false;
      fillPhone(issued);
      box.setAttribute('data-scene', session.scene);
      show('pending');
      setNet('idle');
      startCountdown(session);
      emit('onCode', {scene: session.scene, expiresAt: issued.expires_at});
      if (session.mode === 'longpoll') { setNet('longpoll'); poll(session, 0); } else connect(session);
    }

    /**
     * Back from WeChat (after a long-press, a saved picture or a typed code): a phone's browser that
     * was in the background may hold a socket that died without a close, or a frozen long-poll. Ask
     * again at once instead of waiting: a subscribe (or a quick read) answers the current state.
     */
    function resume() {
      var session = current;
      if (document.visibilityState === 'hidden' || !session || !alive(session) || !session.scene) return;
      if (session.mode !== 'websocket' && session.mode !== 'longpoll') return; // completing: on its way
      session.timers.forEach(clearTimeout);
      session.timers = [];
      if (session.mode === 'websocket') {
        var ws = session.ws;
        session.ws = null;
        if (ws) {
          ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
          try { ws.close(1000); } catch (e) { /* closed */ }
        }
        connect(session);
      } else {
        session.pollRound = (session.pollRound || 0) + 1;
        session.aborts.forEach(function (c) { try { c.abort(); } catch (e) { /* done */ } });
        poll(session, 1);
      }
    }
    function onPageShow(event) { if (event.persisted) resume(); } // restored from the back-forward cache

    refresh.addEventListener('click', function () { start(); });
    document.addEventListener('visibilitychange', resume);
    if (global.addEventListener) global.addEventListener('pageshow', onPageShow);
    start();
    return {
      /** Show a new code (what the refresh button does). */
      refresh: start,
      /** The state on screen: loading, pending, scanned, confirmed, done, cancelled, expired, error. */
      state: function () { return box.getAttribute('data-state'); },
      /** Stop everything and empty the element. */
      destroy: function () {
        end(current);
        current = null;
        document.removeEventListener('visibilitychange', resume);
        if (global.removeEventListener) global.removeEventListener('pageshow', onPageShow);
        rootEl.textContent = '';
      }
    };
  }

  return {mount: mount, version: VERSION, _backoff: backoff, _pixelGrid: pixelGrid, _deviceOf: deviceOf};
});
