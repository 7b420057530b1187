// The scan-login confirmation page (pages/login/index): what the user sees after scanning the code a
// web site shows. Plain CommonJS, so it runs under Node with a stand-in `wx` (see test/).
'use strict';

const {MESSAGES, RETRY, createApi, messageFor, newScanToken, retryable, withRetry, wxLogin} = require('./api');
const {environment, explain} = require('./explain');
const {formatTime, sceneFromQuery} = require('./format');
const {launchScene} = require('./launch');
const {loginCodeMessage, normalizeLoginCode} = require('./logincode');

/**
 * The Page() definition. `status` is one of:
 *   loading · ready (showing who asks; agree + 确认登录 / 取消) · confirming · confirmed ·
 *   cancelling · cancelled · failed (no way on but scanning a new code; `canRetry` when a retry may work)
 * `retrying` is true while a request is waited out after a busy or missing answer (the message then
 * says 网络繁忙，正在重试…).
 */
/** The mini-program's home page (app.json's first page). */
const HOME_PAGE = 'pages/index/index';
/** What the phone says after 不是我 (the browser says its part: the code may have been sent on). */
const NOT_ME_DONE = '已拒绝这次登录，电脑上会显示“不是我”。请不要扫描别人发给你的二维码或图片，那可能是骗局';

/**
 * What the page says for a login, and for a link code (docs/linking.md: the site's signed-in user links
 * this WeChat to their account there; the scan answer says `purpose: 'link'` and `account_hint`).
 */
const WORDS = {
  login: {
    ask: () => '请求使用你的微信账号登录网站',
    confirm: '确认登录',
    confirmArmed: '仍然确认登录',
    armed: '请先看清上面的红色提示。确实是你本人在电脑上登录，再点一次“仍然确认登录”',
    done: '已确认登录，请回到电脑继续',
    cancelled: '已取消登录'
  },
  link: {
    ask: (site, hint) => '将此微信绑定到 ' + site + ' 的账号 ' + hint,
    confirm: '确认绑定',
    confirmArmed: '仍然确认绑定',
    armed: '请先看清上面的红色提示。确实是你本人在电脑上绑定自己的账号，再点一次“仍然确认绑定”',
    done: '已绑定，以后可以用这个微信登录该账号。请回到电脑继续',
    cancelled: '已取消绑定'
  }
};

function createLoginPage({wx, config, currentPages = () => []}) {
  const api = createApi(wx, config);
  // After a red warning the first 确认登录 tap only arms the button; a second tap confirms, but not one
  // that comes sooner than this (a reflexive double tap) (security review M4).
  const secondTapMs = config.secondTapMs != null ? config.secondTapMs : 1500;
  const policy = Object.assign({}, RETRY, config.retry);
  const env = environment(wx);
  // What the user reads for an error; in develop and trial builds, what the developer must fix.
  const say = (err) => explain(err, env, config);
  // Errors after which the same page can simply be tapped again.
  const tapAgain = (err) => retryable(err) ||
    ['code_invalid', 'code_required', 'login_failed', 'mock_code'].indexOf(err.code) >= 0;

  /** `attempt()` with retries on transient failures (see api.withRetry), shown on `page` as busy. */
  function patiently(page, attempt, onWait) {
    return withRetry(attempt, {
      policy,
      deadline: page.expiresAt,
      onWait: () => {
        if (onWait) onWait();
        page.setData({retrying: true, message: MESSAGES.busy});
      }
    });
  }

  /**
   * Enter a typed login code. A limit that lasts longer than a minute (the hourly limits on code
   * entries) is not waited out: the page says so and the user may scan the saved picture instead.
   */
  function enterCode(loginCode, code, scanToken) {
    return api.enterCode(loginCode, code, scanToken).catch((err) => {
      if (err.status === 429 && err.retryAfter > 60) err.status = 0; // not transient (see api.transient)
      throw err;
    });
  }

  /** The confirm request of a 确认登录 tap on `page`; resolves when the gateway says confirmed. */
  function confirmRequest(page) {
    // One code per tap, sent again by every retry of it: the gateway knows a repeat by its code and
    // answers it `confirmed` without confirming twice. A new tap gets a fresh code: codes are
    // single-use and expire after 5 minutes, and the user may have looked at this page for longer.
    let code = null;
    const attempt = () => {
      // After an identified scan no wx.login and no WeChat call is behind the request.
      const withCode = !page.identified;
      const ready = withCode && !code ? wxLogin(wx).then((fresh) => { code = fresh; }) : Promise.resolve();
      return ready.then(() => api.confirm(page.scene, page.scanToken, withCode ? code : undefined));
    };
    // A retried confirm may have landed behind an answer that never came.
    const send = () => patiently(page, attempt, () => { page.confirmUnheard = true; });
    return send().catch((err) => {
      // The gateway holds no identity from the scan after all: try once more, at once, with a
      // fresh code rather than make the user tap again.
      if (!page.identified || (err.code !== 'code_required' && err.code !== 'code_invalid')) throw err;
      page.identified = false;
      return send();
    });
  }

  return {
    data: {
      status: 'loading',
      // `login`, or `link`: the confirm links this WeChat to the site's account `accountHint`.
      purpose: 'login',
      accountHint: '',
      ask: WORDS.login.ask(),
      confirmLabel: WORDS.login.confirm,
      confirmArmedLabel: WORDS.login.confirmArmed,
      site: '',
      browser: '',
      os: '',
      place: '',
      phonePlace: '',
      // Red warnings (security review M4): the browser is in another province or country than this
      // phone; the code was recognised in a picture (a chat image, the album), not scanned off a screen.
      mismatch: false,
      fromImage: false,
      armed: false, // 确认登录 was tapped once under a warning: the next tap confirms
      requestedAt: '',
      agreed: false,
      message: '',
      canRetry: false,
      retrying: false
    },

    onLoad(query) {
      // The scan token is this phone's proof that it scanned; it lives on the page, not in `data`.
      this.scene = sceneFromQuery(query);
      // How WeChat opened this page (1047: a camera scan), sent with the scan (lib/launch.js).
      this.launchScene = launchScene(wx, this.scene);
      this.armedAt = 0;
      // Or the login code the user typed on the home page (a web page open on this phone): entered
      // like a scan, it tells the page its scene.
      this.loginCode = this.scene ? '' : normalizeLoginCode(query && query.login_code);
      this.scanToken = '';
      // The scan token this phone chose for this scene (api.newScanToken), sent with every scan of it.
      this.ownScanToken = '';
      this.identified = false; // whether the gateway exchanged the code sent with the scan (see scan())
      this.expiresAt = null; // the scene's expiry (epoch ms), which no retry goes past
      this.confirmUnheard = false; // a confirm got no (or a busy) answer: it may have landed
      if (!this.scene && !this.loginCode) {
        // Opened without a code (e.g. from the recent list): the home page explains how to scan.
        this.setData({status: 'failed', message: messageFor('missing_scene'), canRetry: false});
        return Promise.resolve();
      }
      return this.scan();
    },

    scan() {
      this.setData({status: 'loading', message: '', canRetry: false, retrying: false});
      this.identified = false;
      let waited = false;
      let loginError = null; // why wx.login gave no code (a placeholder AppID, tourist mode…)
      // The code goes with the scan: the gateway has WeChat exchange it (jscode2session) while the user
      // reads this page, so the 确认登录 tap need not wait on WeChat. Without a code (wx.login failed)
      // the scan works all the same, and the confirm then carries a code as it always did. Retries of
      // a busy or unanswered scan send the same code (it reaches WeChat only after a scan won), and the
      // same scan token of the phone's own: a scan that landed unheard is answered again.
      const chosen = this.ownScanToken ? Promise.resolve(this.ownScanToken) : newScanToken(wx);
      return chosen
        .then((token) => { this.ownScanToken = token; return wxLogin(wx); })
        .catch((err) => { loginError = err; return undefined; })
        .then((code) => {
          // A typed code needs the wx.login code: entries are counted per WeChat user.
          if (this.loginCode && !code) throw loginError;
          const send = this.loginCode
            ? () => enterCode(this.loginCode, code, this.ownScanToken)
            : () => api.scan(this.scene, code, this.launchScene, this.ownScanToken);
          return patiently(this, send, () => { waited = true; });
        })
        .then((info) => {
          if (this.loginCode) this.scene = info.scene;
          this.scanToken = info.scan_token;
          // A code WeChat refused does not fail the scan: it answers `identified: false` (and an
          // `identify_error`), and the confirm must bring a code of its own.
          this.identified = info.identified === true;
          const expiresAt = Date.parse(info.expires_at);
          this.expiresAt = expiresAt > Date.now() ? expiresAt : null; // a phone clock far off: no bound
          const requester = info.requester || {};
          const purpose = info.purpose === 'link' ? 'link' : 'login';
          const words = WORDS[purpose];
          this.setData({
            status: 'ready',
            purpose,
            accountHint: purpose === 'link' ? info.account_hint || '' : '',
            ask: words.ask(info.site, info.account_hint || ''),
            confirmLabel: words.confirm,
            confirmArmedLabel: words.confirmArmed,
            retrying: false,
            // The confirm will need a code: in development say now why there is none.
            message: loginError && (env.developing || loginError.code === 'mock_code') ? say(loginError) : '',
            site: info.site,
            browser: requester.browser || '',
            os: requester.os || '',
            place: (requester.location && requester.location.label) || '',
            phonePlace: (info.phone && info.phone.location && info.phone.location.label) || '',
            mismatch: info.location_mismatch === true,
            fromImage: info.launch === 'image',
            armed: false,
            requestedAt: formatTime(requester.requested_at)
          });
        }, (err) => {
          // Without a scan token of its own, a repeat gets a new one from the gateway: already_scanned
          // after a scan that got no answer is then most likely this phone's own scan, whose token
          // never arrived. With its own token a repeat is answered, so already_scanned is another phone.
          const typed = this.loginCode && loginCodeMessage(err);
          const unheard = waited && err.code === 'already_scanned' && !this.ownScanToken;
          const message = unheard ? messageFor('scan_unheard') : typed || say(err);
          this.setData({status: 'failed', retrying: false, message, canRetry: retryable(err)});
        });
    },

    onRetry() {
      return this.scan();
    },

    onAgreeChange(event) {
      const value = (event && event.detail && event.detail.value) || [];
      this.setData({agreed: value.indexOf('agree') >= 0, message: ''});
    },

    onConfirm() {
      if (this.data.status !== 'ready') return Promise.resolve();
      if (!this.data.agreed) {
        this.setData({message: '请先阅读并同意《用户协议》和《隐私政策》'});
        return Promise.resolve();
      }
      if (this.data.mismatch || this.data.fromImage) {
        // Under a red warning a tap is not enough: the first arms the button, a second one (not a
        // reflexive double tap) confirms.
        if (!this.data.armed) {
          this.armedAt = Date.now();
          this.setData({armed: true, message: WORDS[this.data.purpose].armed});
          return Promise.resolve();
        }
        if (Date.now() - this.armedAt < secondTapMs) return Promise.resolve();
      }
      this.setData({status: 'confirming', message: ''});
      const confirmed = () => {
        this.scanToken = '';
        this.setData({status: 'confirmed', retrying: false, message: WORDS[this.data.purpose].done});
      };
      return confirmRequest(this)
        .then(confirmed, (err) => {
          // Only the phone holding the scan token can confirm the scene: already_confirmed after a
          // confirm of ours went unanswered is that confirm, landed.
          if (err.code === 'already_confirmed' && this.confirmUnheard) return confirmed();
          if (tapAgain(err)) {
            this.setData({status: 'ready', retrying: false, message: say(err)}); // tap again
          } else {
            this.setData({status: 'failed', retrying: false, message: say(err), canRetry: false});
          }
        });
    },

    onCancel() {
      return this.decline(undefined, WORDS[this.data.purpose].cancelled);
    },

    /** 不是我: the user did not ask for this login. The browser is told so (reason `not_me`). */
    onNotMe() {
      return this.decline('not_me', NOT_ME_DONE);
    },

    decline(reason, done) {
      if (this.data.status !== 'ready') return Promise.resolve();
      this.setData({status: 'cancelling', message: ''});
      // The gateway answers a repeated cancel from the same phone `cancelled`: safe to retry.
      return patiently(this, () => api.cancel(this.scene, this.scanToken, reason)).then(() => {
        this.scanToken = '';
        this.setData({status: 'cancelled', retrying: false, message: done});
      }, (err) => {
        if (retryable(err)) this.setData({status: 'ready', retrying: false, message: say(err)});
        else this.setData({status: 'failed', retrying: false, message: say(err), canRetry: false});
      });
    },

    onClose() {
      // Opened from the home page's 扫一扫: back there. Scanned from WeChat's scanner the page is the
      // first in the stack: leave the mini-program.
      if (currentPages().length > 1) wx.navigateBack({delta: 1});
      else if (typeof wx.exitMiniProgram === 'function') wx.exitMiniProgram({});
    },

    onHome() {
      wx.reLaunch({url: '/' + HOME_PAGE});
    }
  };
}

module.exports = {HOME_PAGE, NOT_ME_DONE, WORDS, createLoginPage};
