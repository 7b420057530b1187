// A plain login inside the mini-program: wx.login → POST /api/mp/login → tokens. The home page's
// "my account" area (lib/home-page.js) is built on it; nothing logs in until the user taps.
'use strict';

const {createApi, wxLogin} = require('./api');
const {environment, explain} = require('./explain');

/** "138****8000" from "+8613800138000": enough to recognise one's number, no more. */
function maskPhone(phone) {
  const digits = String(phone || '').replace(/^\+86/, '').replace(/\D/g, '');
  if (digits.length < 7) return digits;
  return digits.slice(0, 3) + '****' + digits.slice(-4);
}

/** The account fields of `data` for a session (or for none). */
function accountData(session) {
  const user = (session && session.user) || {};
  return {
    status: session ? 'done' : 'idle',
    openid: user.openid || '',
    userId: user.id || '',
    phone: maskPhone(user.phone)
  };
}

/** The Page() definition; `app` is what getApp() returns (tokens go in app.globalData, memory only). */
function createMpLoginPage({wx, config, app}) {
  const api = createApi(wx, config);
  const env = environment(wx);

  return {
    data: {status: 'idle', openid: '', userId: '', phone: '', message: ''},

    onShow() {
      // Back from another page (the phone binding): show the session as it is now.
      this.setData(Object.assign(accountData(app.globalData.session), {message: ''}));
    },

    onLogin() {
      if (this.data.status === 'loading') return Promise.resolve();
      this.setData({status: 'loading', message: ''});
      return wxLogin(wx)
        .then((code) => api.login(code))
        .then((tokens) => {
          app.globalData.session = tokens;
          this.setData(accountData(tokens));
        }, (err) => {
          this.setData({status: 'idle', message: explain(err, env, config)});
        });
    },

    onLogout() {
      const session = app.globalData.session;
      app.globalData.session = null;
      this.setData(Object.assign(accountData(null), {message: ''}));
      if (!session) return Promise.resolve();
      // Best effort: the server forgets the session; the page is logged out either way.
      return api.logout(session.access_token).catch(() => undefined);
    }
  };
}

module.exports = {accountData, createMpLoginPage, maskPhone};
