/*
 * The hosted OpenID Connect login page (/oidc/authorize): the SDK's code box, for the client that
 * asked (data-client-id). When the phone confirms, the SDK posts the scene, its ticket and the
 * authorization request (data-params) to /oidc/authorize/complete, which checks the request again,
 * sets the OP session cookie and answers where to go: the client's redirect_uri with code, state and
 * iss. No inline script: the page's CSP allows scripts from this origin only.
 */
(function () {
  'use strict';
  var root = document.getElementById('oidc-login');
  if (!root || !window.WxLogin) return;
  var params;
  try { params = JSON.parse(root.getAttribute('data-params') || '{}'); } catch (e) { params = {}; }
  window.WxLogin.mount('#wxl-box', {
    endpoint: '',
    lang: root.getAttribute('data-lang') || undefined,
    clientId: root.getAttribute('data-client-id'),
    // Same-origin credentials: the answer sets the OP session cookie.
    complete: {path: '/oidc/authorize/complete', body: {params: params}, credentials: 'same-origin'},
    onSuccess: function (answer) {
      var to = answer && answer.redirect_to;
      if (typeof to === 'string' && /^https?:\/\//i.test(to)) window.location.assign(to);
    }
  });
})();
