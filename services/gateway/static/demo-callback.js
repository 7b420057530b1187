/*
 * The demo relying party's callback (/demo/callback): what a single-page app does with the OP's answer.
 * It checks state and iss (RFC 9207), exchanges the code at the token endpoint as a public client with
 * its PKCE verifier, verifies the ID token's signature against the JWKS with WebCrypto (RS256, or
 * EdDSA where the browser has Ed25519), checks iss, aud, nonce and exp, and shows the claims and what
 * userinfo says. The tokens stay in this page's memory only.
 */
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var query = new URLSearchParams(location.search);
  history.replaceState(null, '', location.pathname); // the code leaves the address bar (and history)

  function check(text, ok) {
    var li = document.createElement('li');
    li.textContent = (ok ? '✔ ' : '✘ ') + text;
    li.className = ok ? 'ok' : 'bad';
    $('checks').appendChild(li);
    if (!ok) throw new Error(text);
  }

  function table(id, claims) {
    var dl = $(id);
    dl.textContent = '';
    Object.keys(claims).forEach(function (k) {
      var dt = document.createElement('dt'); dt.textContent = k;
      var dd = document.createElement('dd');
      var v = claims[k];
      dd.textContent = typeof v === 'object' ? JSON.stringify(v) : String(v);
      if (k === 'exp' || k === 'iat' || k === 'auth_time') dd.textContent += ' (' + new Date(v * 1000).toLocaleString() + ')';
      dl.appendChild(dt); dl.appendChild(dd);
    });
  }

  function b64urlBytes(text) {
    var b64 = text.replace(/-/g, '+').replace(/_/g, '/');
    var raw = atob(b64 + '==='.slice((b64.length + 3) % 4));
    return Uint8Array.from(raw, function (c) { return c.charCodeAt(0); });
  }

  function json(part) { return JSON.parse(new TextDecoder().decode(b64urlBytes(part))); }

  /** The ID token's signature, checked with the OP's published key of its kid. */
  function verifySignature(idToken, jwks) {
    var parts = idToken.split('.');
    var header = json(parts[0]);
    var jwk = (jwks.keys || []).filter(function (k) { return k.kid === header.kid; })[0];
    check('签名密钥在 JWKS 中 · the signing key (kid ' + header.kid + ') is in the JWKS', !!jwk);
    var algorithm = header.alg === 'RS256' ? {name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256'}
      : header.alg === 'EdDSA' ? {name: 'Ed25519'} : null;
    check('签名算法 · algorithm ' + header.alg, !!algorithm);
    var publicJwk = {kty: jwk.kty, n: jwk.n, e: jwk.e, crv: jwk.crv, x: jwk.x};
    return crypto.subtle.importKey('jwk', publicJwk, algorithm, false, ['verify']).then(function (key) {
      var signed = new TextEncoder().encode(parts[0] + '.' + parts[1]);
      return crypto.subtle.verify(algorithm, key, b64urlBytes(parts[2]), signed);
    }).then(function (valid) {
      check('签名有效 · the signature verifies', valid);
      return json(parts[1]);
    });
  }

  function fail(err) {
    $('status').textContent = '登录失败 · Login failed: ' + (err && err.message || err);
    $('status').className = 'bad';
  }

  if (query.get('error')) {
    fail(query.get('error') + (query.get('error_description') ? ' — ' + query.get('error_description') : ''));
    return;
  }
  var key = 'wxlogin-demo-oidc:' + query.get('state');
  var saved = JSON.parse(localStorage.getItem(key) || 'null');
  localStorage.removeItem(key);
  var op = null;
  var tokens = null;

  fetch('/.well-known/openid-configuration').then(function (r) { return r.json(); }).then(function (config) {
    op = config;
    check('state 与发起时一致 · state matches the request', !!saved && !!query.get('code'));
    check('iss 是本 OP · iss is this OP (RFC 9207)', query.get('iss') === op.issuer);
    var form = new URLSearchParams({
      grant_type: 'authorization_code',
      code: query.get('code'),
      redirect_uri: saved.redirect_uri,
      client_id: saved.client_id,
      code_verifier: saved.verifier
    });
    return fetch(op.token_endpoint, {method: 'POST', body: form, credentials: 'omit'});
  }).then(function (r) {
    return r.json().then(function (body) {
      if (!r.ok) throw new Error(body.error + ': ' + (body.error_description || ''));
      return body;
    });
  }).then(function (answer) {
    tokens = answer;
    check('用授权码换到令牌（PKCE）· tokens for the code (PKCE)', !!answer.id_token);
    return fetch(op.jwks_uri).then(function (r) { return r.json(); });
  }).then(function (jwks) {
    return verifySignature(tokens.id_token, jwks);
  }).then(function (claims) {
    check('iss', claims.iss === op.issuer);
    check('aud = ' + saved.client_id, claims.aud === saved.client_id || (Array.isArray(claims.aud) && claims.aud.indexOf(saved.client_id) >= 0));
    check('nonce 与发起时一致 · nonce matches', claims.nonce === saved.nonce);
    check('未过期 · not expired', claims.exp * 1000 > Date.now());
    table('claims', claims);
    $('status').textContent = '已通过 OpenID Connect 登录 · Logged in with OpenID Connect';
    $('status').className = 'ok';
    // RP-initiated logout, posted (the ID token goes in a form, not in a URL).
    var form = $('logout');
    form.action = op.end_session_endpoint;
    form.elements.id_token_hint.value = tokens.id_token;
    form.hidden = false;
    return fetch(op.userinfo_endpoint, {headers: {Authorization: 'Bearer ' + tokens.access_token}, credentials: 'omit'});
  }).then(function (r) { return r.json(); }).then(function (info) {
    table('userinfo', info);
  }).catch(fail);
})();
