// Plain login inside the mini-program: the logic is in lib/mplogin-page.js (tested under Node).
const {createMpLoginPage} = require('../../lib/mplogin-page');
const config = require('../../config');

Page(createMpLoginPage({wx, config, app: getApp()}));
