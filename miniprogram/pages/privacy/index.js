// 隐私政策 (a template to fill in), and WeChat's own privacy guide for this mini-program.
Page({
  // The 《小程序用户隐私保护指引》 filled in the admin console, shown by WeChat.
  onOpenPrivacyContract() {
    if (typeof wx.openPrivacyContract === 'function') wx.openPrivacyContract({});
  }
});
