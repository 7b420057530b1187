// The one place to set where your wxlogin gateway is. It must be an HTTPS domain listed under
// 开发管理 → 开发设置 → 服务器域名 → request合法域名 in the mini-program admin console.
module.exports = {
  server: 'https://login.example.com',
  // wx.request timeout, ms
  timeout: 10000
};
