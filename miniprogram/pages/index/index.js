// Home page: how to log in on a web site, 扫一扫, and "my account". Logic in lib/home-page.js.
const {createHomePage} = require('../../lib/home-page');
const config = require('../../config');

Page(createHomePage({wx, config, app: getApp()}));
