// A real OpenID Connect relying party: openid-client (panva) against the wxlogin OP.
//
// tests/integration/test_oidc_rp.py runs it with `node rp.mjs` and plays the browser and the phone:
//   1. this script discovers the OP, builds the authorization URL (PKCE S256, state, nonce) and
//      prints {"authorization_url": ...} as one JSON line;
//   2. the test opens that URL, scans the code with the simulated phone, and writes the URL the
//      browser was redirected to (redirect_uri?code=...&state=...&iss=...) as one line on stdin;
//   3. this script exchanges the code (client_secret_basic), validates the id_token (signature
//      against the JWKS, iss, aud, exp, nonce, and the RFC 9207 iss of the response), calls
//      userinfo, refreshes once, and prints {"result": ...} as one JSON line.
// Any failure prints {"error": ..., "message": ...} and exits 1.
//
// Environment: WXLOGIN_ISSUER, WXLOGIN_CLIENT_ID, WXLOGIN_CLIENT_SECRET, WXLOGIN_REDIRECT_URI,
// WXLOGIN_SCOPE (default "openid profile").

import { createInterface } from "node:readline";
import * as client from "openid-client";

function emit(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

function header(jwt) {
  return JSON.parse(Buffer.from(jwt.split(".")[0], "base64url").toString("utf8"));
}

async function readLine() {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    lines.close();
    return line.trim();
  }
  throw new Error("stdin closed before the redirect URL arrived");
}

async function main() {
  const env = process.env;
  const issuer = new URL(env.WXLOGIN_ISSUER);
  const redirectUri = env.WXLOGIN_REDIRECT_URI;
  const scope = env.WXLOGIN_SCOPE || "openid profile";

  // Plain http is the test stack's loopback issuer; enableNonRepudiationChecks makes the library
  // verify the id_token's JWS signature against the jwks_uri (it skips that by default for a
  // token received straight from the token endpoint over TLS).
  const config = await client.discovery(
    issuer,
    env.WXLOGIN_CLIENT_ID,
    undefined,
    client.ClientSecretBasic(env.WXLOGIN_CLIENT_SECRET),
    { execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks] },
  );
  const metadata = config.serverMetadata();

  const codeVerifier = client.randomPKCECodeVerifier();
  const codeChallenge = await client.calculatePKCECodeChallenge(codeVerifier);
  const state = client.randomState();
  const nonce = client.randomNonce();
  const authorizationUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope,
    code_challenge: codeChallenge,
    code_challenge_method: "S256",
    state,
    nonce,
  });
  emit({ authorization_url: authorizationUrl.href, nonce, state });

  const redirected = new URL(await readLine());
  const tokens = await client.authorizationCodeGrant(config, redirected, {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  let refreshed = null;
  if (tokens.refresh_token) {
    const next = await client.refreshTokenGrant(config, tokens.refresh_token);
    refreshed = {
      rotated: next.refresh_token !== undefined && next.refresh_token !== tokens.refresh_token,
      id_token_sub: next.id_token ? next.claims().sub : null,
    };
  }
  emit({
    result: {
      issuer: metadata.issuer,
      token_type: tokens.token_type,
      scope: tokens.scope ?? null,
      id_token_header: header(tokens.id_token),
      claims,
      userinfo,
      refreshed,
    },
  });
}

main().catch((error) => {
  emit({ error: error.code || error.name || "Error", message: String(error.message || error) });
  process.exitCode = 1;
});
