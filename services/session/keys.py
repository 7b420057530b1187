"""Ed25519 signing keys, the tokens they sign, and key rotation.

Access tokens are JWTs (``alg`` EdDSA, ``kid`` and ``typ: at+jwt`` in the header; ``iss``, ``aud``,
``sub``, ``exp``, ``iat``, ``nbf``, ``jti``, and ``sid``, the session that logout ends). Public keys
are published as a JWKS (current and previous); private keys live sealed in ``signing_keys``. A
rotation publishes the new key ahead of its first use; retiring the previous key removes it from the
JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.session.store import SigningKeyRecord, SigningKeyStore, User
from shared.logging import get_logger
from shared.sealing import Sealer, SealError

log = get_logger(__name__)

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def public_jwk(private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The RFC 8037 JWK of the public half, with a thumbprint-derived ``kid``."""
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = _b64url(raw)
    # RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order.
    thumb = hashlib.sha256(f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()).digest()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": _b64url(thumb)[:16], "use": "sig", "alg": "EdDSA"}


def new_key_record(
    sealer: Sealer, now: float, status: str = "current", *, active_from: float | None = None
) -> SigningKeyRecord:
    """A freshly generated key, its private half sealed for storage."""
    private_key = Ed25519PrivateKey.generate()
    jwk = public_jwk(private_key)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return SigningKeyRecord(
        kid=jwk["kid"],
        status=status,
        created_at=now,
        sealed_private_key=sealer.seal(pem, purpose=f"signing-key:{jwk['kid']}"),
        public_jwk=jwk,
        active_from=now if active_from is None else active_from,
    )


@dataclass(frozen=True, slots=True)
class _SigningKey:
    kid: str
    private: Ed25519PrivateKey
    active_from: float


class Signer:
    """Signs access tokens and publishes the verifying keys.

    The current key signs from its ``active_from``; until then (a rotation publishes the new key
    ahead of use) the previous key goes on signing. :meth:`load` runs at start-up, creating the
    first key if there is none; :meth:`reload` runs periodically and adopts a rotation made by
    ``python -m services.session keys rotate``.
    """

    def __init__(
        self,
        store: SigningKeyStore,
        sealer: Sealer,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._sealer = sealer
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._clock = clock
        self._current: _SigningKey | None = None
        self._previous: _SigningKey | None = None
        self._jwks: list[dict[str, Any]] = []

    @property
    def kid(self) -> str | None:
        """The kid of the key that signs now."""
        key = self._signing_key()
        return key.kid if key else None

    async def load(self) -> None:
        """Adopt the current key, creating one the first time any replica starts."""
        if await self._store.current() is None:
            candidate = new_key_record(self._sealer, self._clock())
            if await self._store.insert_current(candidate):
                log.info("signing_key_created", kid=candidate.kid)
            if await self._store.current() is None:
                raise RuntimeError("no current signing key after creating one")
        await self.reload()

    async def reload(self) -> bool:
        """Re-read the keys; True when the published set changed (a rotation or retirement).

        With no current key (the instant inside a rotation) the keys in hand keep signing: they
        are still published.
        """
        # Read everything first, then swap with no await in between: a token issued while this
        # runs must be signed by keys that are all in hand and published (once a new current key
        # was adopted before its previous one, a login in that gap was signed by the new key ahead
        # of its lead time, before any gateway knew it).
        current = await self._store.current()
        previous = await self._store.previous() if current is not None else None
        # Only keys whose private half opens with the data key are published (and so accepted):
        # a public key written into MongoDB by someone without WXLOGIN_DATA_KEY never is.
        opened = {key.kid: key for record in await self._store.published() if (key := self._verified(record))}
        if current is not None and current.kid not in opened:
            raise RuntimeError(f"the current signing key {current.kid} does not open with WXLOGIN_DATA_KEY")
        published = [public_jwk(key.private) for key in opened.values()]
        if current is not None:
            adopted = self._current is None or current.kid != self._current.kid
            opened_previous = opened.get(previous.kid) if previous is not None else None
            self._current, self._previous = opened[current.kid], opened_previous
            if adopted:
                log.info(
                    "signing_key_adopted",
                    kid=current.kid,
                    active_in=round(current.active_from - self._clock()),
                )
        changed = sorted(j["kid"] for j in published) != sorted(j["kid"] for j in self._jwks)
        self._jwks = published
        return changed

    def _verified(self, record: SigningKeyRecord) -> _SigningKey | None:
        """The key of ``record`` if its private half opens and matches its kid; else None, logged."""
        try:
            key = self._open(record)
        except (SealError, ValueError, TypeError, RuntimeError) as exc:
            reason = str(exc)[:120]
        else:
            if public_jwk(key.private)["kid"] == record.kid:
                return key
            reason = "the private key does not match the kid"
        log.warning("signing_key_refused", security=True, kid=record.kid, reason=reason)
        return None

    def _open(self, record: SigningKeyRecord) -> _SigningKey:
        if self._current is not None and self._current.kid == record.kid:
            return self._current
        if self._previous is not None and self._previous.kid == record.kid:
            return self._previous
        if record.sealed_private_key is None:
            raise RuntimeError(f"signing key {record.kid} has no private half")
        pem = self._sealer.open(record.sealed_private_key, purpose=f"signing-key:{record.kid}")
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise RuntimeError(f"signing key {record.kid} is not Ed25519")
        return _SigningKey(record.kid, key, record.active_from)

    def _signing_key(self) -> _SigningKey | None:
        current = self._current
        if current is not None and current.active_from > self._clock() and self._previous is not None:
            return self._previous  # the new key is published but not in use yet
        return current

    def jwks(self) -> list[dict[str, Any]]:
        """The public keys that verify tokens (the signing one first)."""
        kid = self.kid
        return sorted(self._jwks, key=lambda k: k["kid"] != kid)

    def issue(self, user: User, sid: str) -> str:
        """A signed access token for ``user`` in session (refresh family) ``sid``."""
        key = self._signing_key()
        if key is None:
            raise RuntimeError("signer not loaded")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user.id,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": secrets.token_urlsafe(16),
            "sid": sid,
            "openid": user.openid,
        }
        if user.unionid:
            claims["unionid"] = user.unionid
        if user.phone:
            claims["phone"] = user.phone
        # typ at+jwt (RFC 9068): an access token, which a JWT of another kind signed by the same key
        # (an ID token, say) is not; the gateway checks it.
        headers = {"kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
        return jwt.encode(claims, key.private, algorithm="EdDSA", headers=headers)


# --- rotation (python -m services.session keys …) ---------------------------------------------------


class RotationRefused(Exception):
    """A rotation or retirement would cut tokens that are still valid short (use ``force``)."""


@dataclass(frozen=True, slots=True)
class RotationResult:
    """What a rotation changed."""

    current: str
    active_from: float
    previous: str | None
    retired: list[str]


def _check_previous_age(previous: SigningKeyRecord | None, now: float, min_age: float, action: str) -> None:
    if previous is None or previous.demoted_at is None:
        return
    age = now - previous.demoted_at
    if age < min_age:
        raise RotationRefused(
            f"{action} would retire key {previous.kid}, whose tokens may be valid for another "
            f"{min_age - age:.0f} s (it signs until {previous.demoted_at:.0f}, tokens live {min_age:.0f} s). "
            "Wait, or use --force."
        )


async def rotate_keys(
    store: SigningKeyStore,
    sealer: Sealer,
    *,
    now: float,
    min_age: float,
    lead: float = 0.0,
    force: bool = False,
) -> RotationResult:
    """Install a new current key that signs from ``now + lead``; the current one becomes previous.

    The new key is published at once and used only after ``lead`` seconds, so gateways and site
    backends caching the JWKS know it before the first token it signs. An older previous key is
    retired; ``min_age`` (the access-token lifetime) protects its unexpired tokens unless ``force``.
    """
    old_previous = await store.previous()
    if not force:
        _check_previous_age(old_previous, now, min_age, "rotating now")
    active_from = now + lead
    candidate = new_key_record(sealer, now, status="pending", active_from=active_from)
    await store.insert(candidate)
    retired = await store.retire_previous(now)
    current = await store.current()
    if current is not None:
        await store.demote_current(current.kid, until=active_from)
    # Between the demotion and the promotion there is no current key; running replicas keep
    # signing with the keys they hold (still published) and adopt the new one on reload.
    if not await store.promote(candidate.kid):
        await store.delete(candidate.kid)
        winner = await store.current()
        raise RotationRefused(f"another key became current meanwhile: {winner.kid if winner else '?'}")
    log.info("signing_key_rotated", kid=candidate.kid, previous=current.kid if current else None, lead=lead)
    return RotationResult(candidate.kid, active_from, current.kid if current else None, retired)


async def retire_previous_key(
    store: SigningKeyStore, *, now: float, min_age: float, force: bool = False
) -> list[str]:
    """Retire the previous key: it leaves the JWKS and tokens it signed stop verifying."""
    if not force:
        _check_previous_age(await store.previous(), now, min_age, "retiring now")
    retired = await store.retire_previous(now)
    if retired:
        log.info("signing_key_retired", kids=retired)
    return retired
