// The scan-login confirmation page (pages/login/index): what the user sees after scanning the code a
// web site shows. Plain CommonJS, so it runs under Node with a stand-in `wx` (see test/).
'use strict';

const {createApi, messageFor, retryable, wxLogin} = require('./api');
const {formatTime, sceneFromQuery} = require('./format');

/**
 * The Page() definition. `status` is one of:
 *   loading · ready (showing who asks; agree + 确认登录 / 取消) · confirming · confirmed ·
 *   cancelling · cancelled · failed (no way on but scanning a new code; `canRetry` when a retry may work)
 */
function createLoginPage({wx, config}) {
  const api = createApi(wx, config);

  /** The confirm request of a 确认登录 tap on `page`; resolves when the gateway says confirmed. */
  function confirmRequest(page) {
    if (page.identified) {
      // The scan's code was exchanged already: no wx.login, no WeChat call behind this request.
      return api.confirm(page.scene, page.scanToken).catch((err) => {
        // The gateway holds no identity from the scan after all: try once more, at once, with a
        // fresh code rather than make the user tap again.
        if (err.code !== 'code_required' && err.code !== 'code_invalid') throw err;
        page.identified = false;
        return confirmRequest(page);
      });
    }
    // A fresh code on every tap: codes are single-use and expire after 5 minutes, and the user may
    // have looked at this page for longer than that.
    return wxLogin(wx).then((code) => api.confirm(page.scene, page.scanToken, code));
  }

  return {
    data: {
      status: 'loading',
      site: '',
      browser: '',
      os: '',
      ip: '',
      requestedAt: '',
      agreed: false,
      message: '',
      canRetry: false
    },

    onLoad(query) {
      // The scan token is this phone's proof that it scanned; it lives on the page, not in `data`.
      this.scene = sceneFromQuery(query);
      this.scanToken = '';
      this.identified = false; // whether the gateway exchanged the code sent with the scan (see scan())
      if (!this.scene) {
        this.setData({status: 'failed', message: messageFor('missing_scene'), canRetry: false});
        return Promise.resolve();
      }
      return this.scan();
    },

    scan() {
      this.setData({status: 'loading', message: '', canRetry: false});
      this.identified = false;
      // The code goes with the scan: the gateway has WeChat exchange it (jscode2session) while the user
      // reads this page, so the 确认登录 tap need not wait on WeChat. Without a code (wx.login failed)
      // the scan works all the same, and the confirm then carries a code as it always did.
      return wxLogin(wx)
        .catch(() => undefined)
        .then((code) => api.scan(this.scene, code))
        .then((info) => {
          this.scanToken = info.scan_token;
          // A code WeChat refused does not fail the scan: it answers `identified: false` (and an
          // `identify_error`), and the confirm must bring a code of its own.
          this.identified = info.identified === true;
          const requester = info.requester || {};
          this.setData({
            status: 'ready',
            site: info.site,
            browser: requester.browser || '',
            os: requester.os || '',
            ip: requester.ip || '',
            requestedAt: formatTime(requester.requested_at)
          });
        }, (err) => {
          this.setData({status: 'failed', message: messageFor(err), canRetry: retryable(err)});
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
        this.setData({message: '请先阅读并同意用户协议'});
        return Promise.resolve();
      }
      this.setData({status: 'confirming', message: ''});
      return confirmRequest(this)
        .then(() => {
          this.scanToken = '';
          this.setData({status: 'confirmed', message: '已确认登录，请回到电脑继续'});
        }, (err) => {
          if (retryable(err) || err.code === 'code_invalid' || err.code === 'code_required') {
            this.setData({status: 'ready', message: messageFor(err)}); // tap again
          } else {
            this.setData({status: 'failed', message: messageFor(err), canRetry: false});
          }
        });
    },

    onCancel() {
      if (this.data.status !== 'ready') return Promise.resolve();
      this.setData({status: 'cancelling', message: ''});
      return api.cancel(this.scene, this.scanToken).then(() => {
        this.scanToken = '';
        this.setData({status: 'cancelled', message: '已取消登录'});
      }, (err) => {
        if (retryable(err)) this.setData({status: 'ready', message: messageFor(err)});
        else this.setData({status: 'failed', message: messageFor(err), canRetry: false});
      });
    },

    onClose() {
      // Scanned from WeChat's scanner the page is the first in the stack: leave the mini-program.
      if (typeof wx.exitMiniProgram === 'function') wx.exitMiniProgram({});
    }
  };
}

module.exports = {createLoginPage};
