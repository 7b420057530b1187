// wxlogin mini-program: a home page (how to scan, my account), the scan-login confirmation page, a
// phone-binding sample, and template agreement and privacy pages.
App({
  globalData: {
    // Tokens from /api/mp/login (the home page's 微信登录), in memory for this run of the mini-program.
    session: null
  }
});
