/*
 * The demo's "Log in with OIDC": this page as a relying party of the login service's OpenID Connect
 * provider, with the demo's public client (deploy/clients.demo.yaml: PKCE, no secret). The OP's hosted
 * login page opens in a window of its own, so the simulated phone on this page can scan the code there:
 * the phone reads that window's code box (same origin) and is told the scene with the event
 * "wxlogin-demo:code". The window comes back to /demo/callback, which exchanges the code
 * (demo-callback.js) and shows the ID token's claims.
 */
(function () {
  'use strict';
  var button = document.getElementById('oidc-login');
  var section = document.getElementById('oidc');
  if (!button || !section) return;
  var clientId = null;
  var watching = null;

  function b64url(bytes) {
    var text = '';
    new Uint8Array(bytes).forEach(function (b) { text += String.fromCharCode(b); });
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function random() {
    return b64url(crypto.getRandomValues(new Uint8Array(32)));
  }

  /** The authorization URL, with a fresh PKCE verifier, state and nonce kept for the callback. */
  function authorizationUrl() {
    var verifier = random();
    var state = random();
    var nonce = random();
    return fetch('/.well-known/openid-configuration').then(function (r) { return r.json(); }).then(function (op) {
      return crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)).then(function (digest) {
        var redirectUri = location.origin + '/demo/callback';
        // Read once by the callback (which removes it): what it needs to check the answer.
        localStorage.setItem('wxlogin-demo-oidc:' + state, JSON.stringify({
          verifier: verifier, nonce: nonce, redirect_uri: redirectUri, client_id: clientId, at: Date.now()
        }));
        var lang = new URLSearchParams(location.search).get('lang');
        var params = new URLSearchParams({
          response_type: 'code',
          client_id: clientId,
          redirect_uri: redirectUri,
          scope: 'openid profile phone',
          state: state,
          nonce: nonce,
          code_challenge: b64url(digest),
          code_challenge_method: 'S256',
          ui_locales: lang === 'en' ? 'en' : 'zh-CN'
        });
        return op.authorization_endpoint + '?' + params.toString();
      });
    });
  }

  function tell(detail) {
    document.dispatchEvent(new CustomEvent('wxlogin-demo:code', {detail: detail}));
  }

  /** Let the phone see the code in the login window (its box says its scene and state). */
  function watch(win) {
    if (watching) clearInterval(watching);
    var seen = '';
    watching = setInterval(function () {
      if (win.closed) {
        clearInterval(watching);
        watching = null;
        tell({closed: true});
        return;
      }
      var box = null;
      try { box = win.document.querySelector('.wxl'); } catch (e) { return; } // another origin: out of sight
      var scene = box && box.getAttribute('data-scene');
      var state = box && box.getAttribute('data-state');
      var now = (scene || '') + ':' + (state || '');
      if (scene && now !== seen) {
        seen = now;
        tell({scene: scene, state: state});
      }
    }, 200);
  }

  button.addEventListener('click', function () {
    // Opened now, in the click, so no popup blocker objects; sent to the OP once the URL is ready.
    var win = window.open('about:blank', 'wxlogin-oidc', 'width=480,height=680');
    authorizationUrl().then(function (url) {
      if (!win) { location.assign(url); return; } // no window allowed: this tab goes instead
      win.location.href = url;
      watch(win);
    }, function (err) {
      if (win) win.close();
      if (window.console) window.console.error('wxlogin demo: ' + err);
    });
  });

  fetch('/demo/config.json').then(function (r) { return r.json(); }).then(function (config) {
    clientId = config.oidc_client_id || null;
    // Without the demo client (another WXLOGIN_CLIENTS_FILE), there is nothing to log in to.
    section.hidden = !clientId || !(window.crypto && crypto.subtle);
  });
})();
