"""Verifying access tokens at the gateway with the session service's public keys (no RPC per request).

One algorithm (EdDSA), one token type (``typ: at+jwt``, RFC 9068) and only OKP/Ed25519 keys are
accepted, so ``alg: none``, key confusion (HS256 signed with the public key) and other kinds of JWT
(an OpenID Connect ID token above all) cannot verify. Two issuers sign access tokens: the browser
API's (``WXLOGIN_JWT_ISSUER``) and the OpenID Connect issuer (``settings.issuer``); the audience is
any registered client's id. The JWKS also carries the RSA keys that sign ID tokens (RS256): they
verify an ``id_token_hint`` at logout (:meth:`KeySet.id_token_claims`), never an access token.
``iss``, ``aud``, ``exp``, ``iat``, ``sub``, ``jti`` and ``sid`` are required, ``nbf`` is honoured,
and each segment must be canonical base64url without ``=`` padding, so a token has exactly one
spelling (recent PyJWT checks most of this too; older releases accept a re-spelt signature; we
require ``PyJWT>=2.10.1`` for CVE-2024-53861). Keys come from RPC ``session.jwks`` at start-up,
periodically, when the session service announces ``signing_keys.changed``, and (at most every 30 s)
when a token names a ``kid`` we do not know. A key that leaves the JWKS (retired) stops verifying at
the next fetch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt

from services.gateway.errors import Unauthorized
from shared.bus import Caller
from shared.errors import RemoteError
from shared.logging import get_logger
from shared.messages import GetJwks

log = get_logger(__name__)

ALGORITHM = "EdDSA"
# RFC 9068: an access token says so (``at+jwt``, or the full media type). "jwt" is what the session
# service wrote before it did: accepted so tokens issued before an upgrade live out their minutes, and
# only from the browser API's issuer, never the OpenID Connect one (whose ID tokens are typ JWT and
# may be signed by these same Ed25519 keys for a client that asks for EdDSA).
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
LEGACY_TYPE = "jwt"
# ID tokens: RS256 by default (an RSA key), EdDSA for a client that asks (an Ed25519 key).
ID_TOKEN_ALGORITHMS = {"RSA": "RS256", "OKP": "EdDSA"}
MIN_RSA_BITS = 2048
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub", "jti", "sid"]
MAX_TOKEN_LENGTH = 4096
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
# The shapes of our user ids and session ids; anything else (even if signed) is not our token.
_SUB = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def canonical_segments(token: str) -> bool:
    """True when ``token`` is three base64url segments, each in its one canonical spelling."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    for part in parts:
        if not _SEGMENT.match(part):
            return False
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            return False
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != part:
            return False
    return True


class KeySet:
    """The public keys that verify access tokens, refreshed from the session service."""

    def __init__(
        self,
        bus: Caller,
        *,
        issuer: str,
        audience: str | Callable[[], Sequence[str]],
        oidc_issuer: str | None = None,
        refetch_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``issuer`` signs the browser API's tokens, ``oidc_issuer`` (when set) the OpenID Connect
        ones; ``audience`` is one audience or a function that returns the registered clients' ids
        (read at every verification, so a client added to the clients file is accepted at once)."""
        self._bus = bus
        self.issuer = issuer
        self.oidc_issuer = oidc_issuer
        self._audience = audience
        self._interval = refetch_interval
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._id_keys: dict[str, jwt.PyJWK] = {}
        self._jwks: list[dict[str, Any]] = []
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    @property
    def issuers(self) -> list[str]:
        """The issuers whose access tokens verify here."""
        if self.oidc_issuer and self.oidc_issuer != self.issuer:
            return [self.issuer, self.oidc_issuer]
        return [self.issuer]

    def audiences(self) -> list[str]:
        """The audiences an access token may carry (the registered clients' ids)."""
        audience = self._audience
        return [audience] if isinstance(audience, str) else list(audience())

    def document(self) -> dict[str, Any]:
        """The JWKS document served at ``/.well-known/jwks.json``."""
        return {"keys": list(self._jwks)}

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the keys (skipped within the refetch interval unless ``force``); False on failure."""
        async with self._lock:
            if not force and self._clock() - self._fetched_at < self._interval:
                return False
            self._fetched_at = self._clock()
            try:
                reply = await self._bus.call(GetJwks())
            except RemoteError as exc:
                log.warning("jwks_fetch_failed", error_code=exc.error_code)
                return False
            keys: dict[str, jwt.PyJWK] = {}
            id_keys: dict[str, jwt.PyJWK] = {}
            for jwk in reply.keys:
                kid = jwk.get("kid")
                if not isinstance(kid, str) or not kid:
                    continue
                if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
                    try:
                        keys[kid] = id_keys[kid] = jwt.PyJWK(jwk, algorithm=ALGORITHM)
                    except jwt.PyJWTError:
                        log.warning("jwks_key_skipped", kid=kid)
                elif jwk.get("kty") == "RSA" and jwk.get("alg", "RS256") == "RS256":
                    rsa = _rsa_key(jwk)
                    if rsa is None:
                        log.warning("jwks_key_skipped", kid=kid)
                    else:
                        id_keys[kid] = rsa
            self._keys, self._id_keys = keys, id_keys
            self._jwks = [j for j in reply.keys if j.get("kid") in id_keys]
            log.info("jwks_loaded", kids=sorted(keys), rsa_kids=sorted(set(id_keys) - set(keys)))
            return True

    async def refresh_forever(self, interval: float) -> None:
        """Re-fetch the keys every ``interval`` seconds (a retired key drops out, a new one comes in)."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh(force=True)

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; raises :class:`Unauthorized` otherwise."""
        if len(token) > MAX_TOKEN_LENGTH or not canonical_segments(token):
            raise Unauthorized("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized("unsupported token algorithm")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise Unauthorized("not an access token")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("token has no key id")
        key = self._keys.get(kid)
        if key is None and await self.refresh():
            key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[ALGORITHM],
                audience=self.audiences(),
                issuer=self.issuers,
                options={"require": REQUIRED_CLAIMS},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not valid yet") from None
        except jwt.PyJWTError:
            raise Unauthorized("token does not verify") from None
        legacy = claims["iss"] == self.issuer and self.issuer != self.oidc_issuer
        if typ.lower() == LEGACY_TYPE and not legacy:
            # A typ JWT of the OpenID Connect issuer is an ID token, not an access token.
            raise Unauthorized("not an access token")
        sub, sid = claims.get("sub"), claims.get("sid")
        if not (isinstance(sub, str) and _SUB.match(sub) and isinstance(sid, str) and _SID.match(sid)):
            raise Unauthorized("token does not verify")
        return claims

    async def id_token_claims(self, token: str) -> dict[str, Any]:
        """The claims of an ID token we issued (``id_token_hint`` at logout): signature, ``iss`` (the
        OpenID Connect issuer) and ``aud`` (a registered client) checked, expiry not (RP-initiated
        logout accepts an expired hint). Raises :class:`Unauthorized` otherwise."""
        if len(token) > MAX_TOKEN_LENGTH or not canonical_segments(token) or not self.oidc_issuer:
            raise Unauthorized("malformed ID token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed ID token") from None
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if not isinstance(alg, str) or alg not in ID_TOKEN_ALGORITHMS.values() or not isinstance(kid, str):
            raise Unauthorized("unsupported ID token algorithm")
        if typ is not None and (not isinstance(typ, str) or typ.lower() != LEGACY_TYPE):
            raise Unauthorized("not an ID token")  # an access token (at+jwt) is no id_token_hint
        key = self._id_keys.get(kid)
        if key is None and await self.refresh():
            key = self._id_keys.get(kid)
        if key is None or ID_TOKEN_ALGORITHMS.get(str(key.key_type)) != alg:
            raise Unauthorized("unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.audiences(),
                issuer=self.oidc_issuer,
                options={"require": ["iss", "aud", "sub", "iat"], "verify_exp": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            raise Unauthorized("the ID token does not verify") from None
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("sid", ""), str):
            raise Unauthorized("the ID token does not verify")
        return claims


def _rsa_key(jwk: dict[str, Any]) -> jwt.PyJWK | None:
    """An RSA public key of at least 2048 bits for RS256, or None."""
    try:
        key = jwt.PyJWK(jwk, algorithm="RS256")
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    size = getattr(key.key, "key_size", 0)
    return key if size >= MIN_RSA_BITS else None


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header."""
    if not authorization:
        raise Unauthorized()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected: Authorization: Bearer <token>")
    return token.strip()
