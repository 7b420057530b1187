// Phone-binding sample: privacy consent, then getPhoneNumber → POST /api/mp/phone. Logic in lib/phone-page.js.
const {createPhonePage} = require('../../lib/phone-page');
const config = require('../../config');

Page(createPhonePage({wx, config, app: getApp()}));
