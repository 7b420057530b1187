// 用户协议 (a template to fill in): static text, nothing to do.
Page({});
