"""session service: exchanges wx.login codes, owns users, signing keys and refresh tokens."""
