// Scan-login confirmation page: the logic is in lib/login-page.js (tested under Node).
const {createLoginPage} = require('../../lib/login-page');
const config = require('../../config');

Page(createLoginPage({wx, config}));
