"""Verifying access tokens at the gateway with the session service's public keys (no RPC per request).

One algorithm (EdDSA), one token type (``typ: at+jwt``, RFC 9068) and only OKP/Ed25519 keys are
accepted, so ``alg: none``, key confusion (HS256 signed with the public key) and other kinds of JWT
cannot verify. ``iss``, ``aud``, ``exp``, ``iat``, ``sub``, ``jti`` and ``sid`` are required, ``nbf``
is honoured, and each segment must be canonical base64url without ``=`` padding, so a token has
exactly one spelling (recent PyJWT checks most of this too; older releases accept a re-spelt
signature; we require ``PyJWT>=2.10.1`` for CVE-2024-53861). Keys come from RPC
``session.jwks`` at start-up, periodically, when the session service announces
``signing_keys.changed``, and (at most every 30 s) when a token names a ``kid`` we do not know. A
key that leaves the JWKS (retired) stops verifying at the next fetch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import Callable
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
# service wrote before it did: accepted so tokens issued before an upgrade live out their minutes. Drop
# it before these keys sign any other kind of JWT (an OIDC ID token is typ JWT).
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
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
        audience: str,
        refetch_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self.issuer = issuer
        self.audience = audience
        self._interval = refetch_interval
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwks: list[dict[str, Any]] = []
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

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
            for jwk in reply.keys:
                if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not jwk.get("kid"):
                    continue
                try:
                    keys[str(jwk["kid"])] = jwt.PyJWK(jwk, algorithm=ALGORITHM)
                except jwt.PyJWTError:
                    log.warning("jwks_key_skipped", kid=jwk.get("kid"))
            self._keys = keys
            self._jwks = [j for j in reply.keys if j.get("kid") in keys]
            log.info("jwks_loaded", kids=sorted(keys))
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
                audience=self.audience,
                issuer=self.issuer,
                options={"require": REQUIRED_CLAIMS},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not valid yet") from None
        except jwt.PyJWTError:
            raise Unauthorized("token does not verify") from None
        sub, sid = claims.get("sub"), claims.get("sid")
        if not (isinstance(sub, str) and _SUB.match(sub) and isinstance(sid, str) and _SID.match(sid)):
            raise Unauthorized("token does not verify")
        return claims


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header."""
    if not authorization:
        raise Unauthorized()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected: Authorization: Bearer <token>")
    return token.strip()
