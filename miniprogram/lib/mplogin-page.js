// A plain login inside the mini-program (pages/mplogin/index): wx.login → POST /api/mp/login → tokens.
'use strict';

const {createApi, messageFor, wxLogin} = require('./api');

/** The Page() definition; `app` is what getApp() returns (tokens go in app.globalData, memory only). */
function createMpLoginPage({wx, config, app}) {
  const api = createApi(wx, config);

  return {
    data: {status: 'idle', openid: '', userId: '', message: ''},

    onLogin() {
      if (this.data.status === 'loading') return Promise.resolve();
      this.setData({status: 'loading', message: ''});
      return wxLogin(wx)
        .then((code) => api.login(code))
        .then((tokens) => {
          app.globalData.session = tokens;
          const user = tokens.user || {};
          this.setData({status: 'done', openid: user.openid || '', userId: user.id || ''});
        }, (err) => {
          this.setData({status: 'idle', message: messageFor(err)});
        });
    },

    onLogout() {
      const session = app.globalData.session;
      app.globalData.session = null;
      this.setData({status: 'idle', openid: '', userId: '', message: ''});
      if (!session) return Promise.resolve();
      // Best effort: the server forgets the session; the page is logged out either way.
      return api.logout(session.access_token).catch(() => undefined);
    }
  };
}

module.exports = {createMpLoginPage};
