// Scan-login confirmation page: the logic is in lib/login-page.js (tested under Node).
const {createLoginPage} = require('../../lib/login-page');
const config = require('../../config');

// getCurrentPages tells 完成/关闭 whether to go back (opened from the home page) or leave.
Page(createLoginPage({wx, config, currentPages: getCurrentPages}));
