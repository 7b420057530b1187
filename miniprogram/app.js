// wxlogin mini-program: the scan-login confirmation page and a plain in-mini-program login example.
App({
  globalData: {
    // Tokens from pages/mplogin, in memory for this run of the mini-program.
    session: null
  }
});
