// The phone-binding sample (pages/phone/index): privacy consent first, then WeChat's getPhoneNumber
// button, whose one-time code goes to POST /api/mp/phone with the bearer token of /api/mp/login.
// WeChat's rules followed here: nothing is asked on entry, every step can be declined, and the phone
// number (a privacy API) is only asked for once the user agreed to the privacy guide.
'use strict';

const {createApi, wxLogin} = require('./api');
const {environment, explain} = require('./explain');
const {accountData, maskPhone} = require('./mplogin-page');

/** The id of the agree button; WeChat wants it back in the onNeedPrivacyAuthorization resolve. */
const AGREE_BUTTON = 'agree-privacy';

/** What the page says for a phone binding the gateway refused (docs/identity.md §5). */
const PHONE_MESSAGES = {
  phone_taken: '这个手机号已绑定另一个账号',
  phone_code_invalid: '手机号验证已失效，请再点一次绑定',
  phone_unavailable: '本小程序暂不能获取手机号（仅认证的非个人主体小程序可用）',
  relogin: '登录已失效，请重新登录后再绑定',
  denied: '你没有允许使用手机号，可以稍后再绑定',
  no_permission: '本小程序没有手机号快速验证的权限（仅认证的非个人主体小程序可用）',
  privacy_declined: '需要先同意隐私保护指引，才能绑定手机号'
};

/**
 * The Page() definition. `status`: signed_out (log in first) · loading · ready (the bind step) ·
 * binding · bound. `needPrivacy` keeps the getPhoneNumber button hidden until the privacy guide is
 * agreed; `privacyOpen` shows the consent sheet (agree with open-type="agreePrivacyAuthorization", or
 * decline).
 */
function createPhonePage({wx, config, app}) {
  const api = createApi(wx, config);
  const env = environment(wx);
  const say = (err) => explain(err, env, config);

  return {
    data: {
      status: 'signed_out',
      phone: '',
      needPrivacy: false,
      privacyOpen: false,
      contractName: '《隐私保护指引》',
      message: ''
    },

    onLoad() {
      this.privacyResolve = null;
      const session = app.globalData.session;
      const bound = session && accountData(session).phone;
      this.setData({status: !session ? 'signed_out' : bound ? 'bound' : 'ready', phone: bound || ''});
      // Whether the user still has to agree to the privacy guide (base library 2.32.3+; older ones
      // have no consent step and call privacy APIs directly).
      if (typeof wx.getPrivacySetting === 'function') {
        wx.getPrivacySetting({
          success: (res) => this.setData({
            needPrivacy: !!res.needAuthorization,
            contractName: res.privacyContractName || this.data.contractName
          })
        });
      }
    },

    onShow() {
      // WeChat asks this page for consent when a privacy API is used before the user agreed (the last
      // page to register is asked): open our sheet and answer once the user chose.
      if (typeof wx.onNeedPrivacyAuthorization === 'function') {
        wx.onNeedPrivacyAuthorization((resolve) => {
          this.privacyResolve = resolve;
          this.setData({privacyOpen: true, message: ''});
        });
      }
    },

    onLogin() {
      if (this.data.status === 'loading') return Promise.resolve();
      this.setData({status: 'loading', message: ''});
      return wxLogin(wx).then((code) => api.login(code)).then((tokens) => {
        app.globalData.session = tokens;
        const phone = accountData(tokens).phone;
        this.setData({status: phone ? 'bound' : 'ready', phone});
      }, (err) => this.setData({status: 'signed_out', message: say(err)}));
    },

    /** 绑定手机号 before consent: ask for it the way a privacy API would (the sheet opens). */
    onStartBinding() {
      this.setData({message: ''});
      if (typeof wx.requirePrivacyAuthorize !== 'function') {
        this.setData({needPrivacy: false});
        return Promise.resolve();
      }
      return new Promise((resolve) => {
        wx.requirePrivacyAuthorize({
          success: () => { this.setData({needPrivacy: false, privacyOpen: false}); resolve(); },
          fail: () => { this.setData({privacyOpen: false, message: PHONE_MESSAGES.privacy_declined}); resolve(); }
        });
      });
    },

    /** The sheet's 同意 (bindagreeprivacyauthorization): WeChat records the consent. */
    onAgreePrivacy() {
      const resolve = this.privacyResolve;
      this.privacyResolve = null;
      this.setData({privacyOpen: false, needPrivacy: false, message: ''});
      if (resolve) resolve({buttonId: AGREE_BUTTON, event: 'agree'});
    },

    /** The sheet's 不同意: nothing is collected, and the page stays usable. */
    onDeclinePrivacy() {
      const resolve = this.privacyResolve;
      this.privacyResolve = null;
      this.setData({privacyOpen: false, message: PHONE_MESSAGES.privacy_declined});
      if (resolve) resolve({event: 'disagree'});
    },

    onOpenPrivacyContract() {
      if (typeof wx.openPrivacyContract === 'function') wx.openPrivacyContract({});
    },

    /** bindgetphonenumber: `detail.code` is single-use for 5 minutes; it is sent once, never retried. */
    onGetPhoneNumber(event) {
      const detail = (event && event.detail) || {};
      const session = app.globalData.session;
      if (!detail.code) {
        const errMsg = String(detail.errMsg || '');
        let message = PHONE_MESSAGES.denied;
        if (/no permission/i.test(errMsg)) message = PHONE_MESSAGES.no_permission;
        else if (!/deny|cancel/i.test(errMsg)) message = '获取手机号失败（' + errMsg + '）';
        this.setData({message});
        return Promise.resolve();
      }
      if (!session) {
        this.setData({status: 'signed_out', message: PHONE_MESSAGES.relogin});
        return Promise.resolve();
      }
      this.setData({status: 'binding', message: ''});
      return api.phone(detail.code, session.access_token).then((bound) => {
        // The new access token carries the phone claim; the refresh token is unchanged.
        session.access_token = bound.access_token;
        session.expires_in = bound.expires_in;
        session.user = bound.user;
        this.setData({status: 'bound', phone: maskPhone(bound.user && bound.user.phone), message: ''});
      }, (err) => {
        if (err.status === 401) {
          app.globalData.session = null;
          this.setData({status: 'signed_out', message: PHONE_MESSAGES.relogin});
          return;
        }
        this.setData({status: 'ready', message: PHONE_MESSAGES[err.code] || say(err)});
      });
    },

    /** 换一个手机号: the bind step again (WeChat-verified new numbers replace the old one). */
    onRebind() {
      this.setData({status: 'ready', message: ''});
    },

    /** 暂不绑定 / 完成: back where the user came from (the home page when opened on its own). */
    onDone() {
      wx.navigateBack({delta: 1, fail: () => wx.reLaunch({url: '/pages/index/index'})});
    }
  };
}

module.exports = {AGREE_BUTTON, PHONE_MESSAGES, createPhonePage};
