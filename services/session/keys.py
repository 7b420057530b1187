"""Signing keys (Ed25519 and RSA), the tokens they sign, and key rotation.

Two kinds of key, each with its own lifecycle in ``signing_keys`` (a record's ``alg``; records of
earlier versions carry none and are Ed25519):

- **EdDSA** (Ed25519) signs access tokens: JWTs with ``alg`` EdDSA, ``kid`` and ``typ: at+jwt`` in the
  header; ``iss``, ``aud``, ``sub``, ``exp``, ``iat``, ``nbf``, ``jti``, and ``sid``, the session that
  logout ends. The gateway verifies them (services/gateway/auth.py). It also signs the ID tokens of a
  client that asks for EdDSA.
- **RS256** (RSA 2048) signs OpenID Connect ID tokens by default (OpenID Connect requires RS256
  support; many relying parties verify nothing else) and back-channel logout tokens.

ID and logout tokens are signed with joserfc; access tokens with PyJWT, as before. Public keys are
published as one JWKS (current and previous of each kind); private keys live sealed in
``signing_keys``. A rotation publishes the new key ahead of its first use; retiring the previous key
removes it from the JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt as jose_jwt
from joserfc.jwk import OKPKey, RSAKey

from services.session.store import SigningKeyRecord, SigningKeyStore, User
from shared.logging import get_logger
from shared.sealing import Sealer, SealError

log = get_logger(__name__)

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)
EDDSA = "EdDSA"
RS256 = "RS256"
# Every kind of key a deployment holds: EdDSA signs access tokens, RS256 is the ID-token default.
ALGORITHMS: tuple[str, ...] = (EDDSA, RS256)
RSA_KEY_BITS = 2048

PrivateKey = Ed25519PrivateKey | rsa.RSAPrivateKey


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def public_jwk(private_key: PrivateKey) -> dict[str, Any]:
    """The JWK of the public half (RFC 8037 OKP, or RFC 7518 RSA), with a thumbprint-derived ``kid``."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.public_key().public_numbers()
        n, e = _uint(numbers.n), _uint(numbers.e)
        # RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order.
        thumb = hashlib.sha256(f'{{"e":"{e}","kty":"RSA","n":"{n}"}}'.encode()).digest()
        return {"kty": "RSA", "n": n, "e": e, "kid": _b64url(thumb)[:16], "use": "sig", "alg": RS256}
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = _b64url(raw)
    thumb = hashlib.sha256(f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()).digest()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": _b64url(thumb)[:16], "use": "sig", "alg": EDDSA}


def _generate(alg: str) -> PrivateKey:
    if alg == EDDSA:
        return Ed25519PrivateKey.generate()
    if alg == RS256:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    raise ValueError(f"unknown signing algorithm {alg!r}; one of {', '.join(ALGORITHMS)}")


def new_key_record(
    sealer: Sealer,
    now: float,
    status: str = "current",
    *,
    active_from: float | None = None,
    alg: str = EDDSA,
) -> SigningKeyRecord:
    """A freshly generated key of ``alg``, its private half sealed for storage."""
    private_key = _generate(alg)
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
        alg=alg,
    )


@dataclass(frozen=True, slots=True)
class _SigningKey:
    kid: str
    alg: str
    private: PrivateKey
    active_from: float

    def jose(self) -> OKPKey | RSAKey:
        """The key as joserfc wants it."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            return RSAKey.import_key(self.private, {"kid": self.kid})
        return OKPKey.import_key(self.private, {"kid": self.kid})


@dataclass(slots=True)
class _Ring:
    """The keys of one algorithm in hand: the current one and the one it replaced."""

    current: _SigningKey | None = None
    previous: _SigningKey | None = None


class Signer:
    """Signs tokens and publishes the verifying keys.

    For each algorithm the current key signs from its ``active_from``; until then (a rotation
    publishes the new key ahead of use) the previous key goes on signing. :meth:`load` runs at
    start-up, creating the first key of each kind if there is none; :meth:`reload` runs periodically
    and adopts a rotation made by ``python -m services.session keys rotate``.
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
        algorithms: Iterable[str] = ALGORITHMS,
    ) -> None:
        self._store = store
        self._sealer = sealer
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._clock = clock
        self.algorithms = tuple(algorithms)
        self._rings: dict[str, _Ring] = {alg: _Ring() for alg in self.algorithms}
        self._jwks: list[dict[str, Any]] = []

    @property
    def kid(self) -> str | None:
        """The kid of the key that signs access tokens now."""
        return self.kid_of(EDDSA)

    def kid_of(self, alg: str) -> str | None:
        """The kid of the ``alg`` key that signs now."""
        key = self._signing_key(alg)
        return key.kid if key else None

    async def load(self) -> None:
        """Adopt the current keys, creating each kind the first time any replica starts."""
        for alg in self.algorithms:
            if await self._store.current(alg) is None:
                candidate = new_key_record(self._sealer, self._clock(), alg=alg)
                if await self._store.insert_current(candidate):
                    log.info("signing_key_created", kid=candidate.kid, alg=alg)
                if await self._store.current(alg) is None:
                    raise RuntimeError(f"no current {alg} signing key after creating one")
        await self.reload()

    async def reload(self) -> bool:
        """Re-read the keys; True when the published set changed (a rotation or retirement).

        With no current key of a kind (the instant inside a rotation) the keys in hand keep signing:
        they are still published.
        """
        # Read everything first, then swap with no await in between: a token issued while this
        # runs must be signed by keys that are all in hand and published (once a new current key
        # was adopted before its previous one, a login in that gap was signed by the new key ahead
        # of its lead time, before any gateway knew it).
        records: dict[str, tuple[SigningKeyRecord | None, SigningKeyRecord | None]] = {}
        for alg in self.algorithms:
            current = await self._store.current(alg)
            previous = await self._store.previous(alg) if current is not None else None
            records[alg] = (current, previous)
        # Only keys whose private half opens with the data key are published (and so accepted):
        # a public key written into MongoDB by someone without WXLOGIN_DATA_KEY never is.
        opened = {key.kid: key for record in await self._store.published() if (key := self._verified(record))}
        for alg, (current, _) in records.items():
            if current is not None and current.kid not in opened:
                raise RuntimeError(
                    f"the current {alg} signing key {current.kid} does not open with WXLOGIN_DATA_KEY"
                )
        published = [public_jwk(key.private) for key in opened.values()]
        for alg, (current, previous) in records.items():
            if current is None:
                continue
            ring = self._rings[alg]
            adopted = ring.current is None or current.kid != ring.current.kid
            ring.current = opened[current.kid]
            ring.previous = opened.get(previous.kid) if previous is not None else None
            if adopted:
                log.info(
                    "signing_key_adopted",
                    kid=current.kid,
                    alg=alg,
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
        for ring in self._rings.values():
            for held in (ring.current, ring.previous):
                if held is not None and held.kid == record.kid:
                    return held
        if record.sealed_private_key is None:
            raise RuntimeError(f"signing key {record.kid} has no private half")
        pem = self._sealer.open(record.sealed_private_key, purpose=f"signing-key:{record.kid}")
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        expected = rsa.RSAPrivateKey if record.alg == RS256 else Ed25519PrivateKey
        if not isinstance(key, expected):
            raise RuntimeError(f"signing key {record.kid} is not a {record.alg} key")
        return _SigningKey(record.kid, record.alg, key, record.active_from)

    def _signing_key(self, alg: str) -> _SigningKey | None:
        ring = self._rings.get(alg)
        if ring is None:
            return None
        current = ring.current
        if current is not None and current.active_from > self._clock() and ring.previous is not None:
            return ring.previous  # the new key is published but not in use yet
        return current

    def jwks(self) -> list[dict[str, Any]]:
        """The public keys that verify tokens (the signing ones first)."""
        signing = [kid for alg in self.algorithms if (kid := self.kid_of(alg))]
        return sorted(
            self._jwks, key=lambda k: signing.index(k["kid"]) if k["kid"] in signing else len(signing)
        )

    def issue(
        self, user: User, sid: str, *, audience: str | None = None, external_id: str | None = None
    ) -> str:
        """A signed access token of the browser and mini-program API for ``user`` in session (refresh
        family) ``sid``, for ``audience`` (the client; the default client when None); ``external_id``
        is the client's own account the user is linked to (docs/linking.md), for that client only."""
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience or self.audience,
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
        if external_id is not None:
            claims["external_id"] = external_id
        return self.sign_access(claims)

    def sign_access(self, claims: dict[str, Any]) -> str:
        """``claims`` as an access token: EdDSA, ``typ`` at+jwt (RFC 9068: an access token, which a JWT
        of another kind signed by the same key, an ID token say, is not; the gateway checks it)."""
        key = self._signing_key(EDDSA)
        if key is None:
            raise RuntimeError("signer not loaded")
        headers = {"kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
        return jwt.encode(claims, key.private, algorithm=EDDSA, headers=headers)

    def sign(self, claims: dict[str, Any], *, alg: str, typ: str) -> str:
        """``claims`` signed with the current ``alg`` key by joserfc (ID tokens: ``typ`` JWT; logout
        tokens: ``logout+jwt``)."""
        key = self._signing_key(alg)
        if key is None:
            raise RuntimeError(f"no {alg} signing key loaded")
        header = {"alg": alg, "kid": key.kid, "typ": typ}
        with warnings.catch_warnings():
            # joserfc flags "EdDSA" as superseded by RFC 9864's "Ed25519"; relying parties (and our
            # gateway) know only "EdDSA", and the signature is the same Ed25519 one.
            warnings.filterwarnings("ignore", message=".*EdDSA.*")
            return jose_jwt.encode(header, claims, key.jose(), algorithms=[alg])

    def access_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token we signed with a published key, expired or not (for
        revocation); None for anything else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        if header.get("alg") != EDDSA or str(header.get("typ", "")).lower() != ACCESS_TOKEN_TYPE:
            return None
        key = next(
            (
                k
                for r in self._rings.values()
                for k in (r.current, r.previous)
                if k and k.kid == header.get("kid")
            ),
            None,
        )
        if key is None or not isinstance(key.private, Ed25519PrivateKey):
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.private.public_key(),
                algorithms=[EDDSA],
                options={"verify_exp": False, "verify_aud": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return None
        return claims


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
    alg: str = EDDSA


def _check_previous_age(previous: SigningKeyRecord | None, now: float, min_age: float, action: str) -> None:
    if previous is None or previous.demoted_at is None:
        return
    age = now - previous.demoted_at
    if age < min_age:
        raise RotationRefused(
            f"{action} would retire {previous.alg} key {previous.kid}, whose tokens may be valid for "
            f"another {min_age - age:.0f} s (it signs until {previous.demoted_at:.0f}, tokens live "
            f"{min_age:.0f} s). Wait, or use --force."
        )


async def rotate_keys(
    store: SigningKeyStore,
    sealer: Sealer,
    *,
    now: float,
    min_age: float,
    lead: float = 0.0,
    force: bool = False,
    alg: str = EDDSA,
) -> RotationResult:
    """Install a new current ``alg`` key that signs from ``now + lead``; the current one becomes previous.

    The new key is published at once and used only after ``lead`` seconds, so gateways and site
    backends caching the JWKS know it before the first token it signs. An older previous key is
    retired; ``min_age`` (the token lifetime) protects its unexpired tokens unless ``force``.
    """
    old_previous = await store.previous(alg)
    if not force:
        _check_previous_age(old_previous, now, min_age, "rotating now")
    active_from = now + lead
    candidate = new_key_record(sealer, now, status="pending", active_from=active_from, alg=alg)
    await store.insert(candidate)
    retired = await store.retire_previous(now, alg)
    current = await store.current(alg)
    if current is not None:
        await store.demote_current(current.kid, until=active_from)
    # Between the demotion and the promotion there is no current key; running replicas keep
    # signing with the keys they hold (still published) and adopt the new one on reload.
    if not await store.promote(candidate.kid, alg):
        await store.delete(candidate.kid)
        winner = await store.current(alg)
        raise RotationRefused(f"another key became current meanwhile: {winner.kid if winner else '?'}")
    log.info(
        "signing_key_rotated",
        kid=candidate.kid,
        alg=alg,
        previous=current.kid if current else None,
        lead=lead,
    )
    return RotationResult(candidate.kid, active_from, current.kid if current else None, retired, alg)


async def retire_previous_key(
    store: SigningKeyStore, *, now: float, min_age: float, force: bool = False, alg: str = EDDSA
) -> list[str]:
    """Retire the previous ``alg`` key: it leaves the JWKS and tokens it signed stop verifying."""
    if not force:
        _check_previous_age(await store.previous(alg), now, min_age, "retiring now")
    retired = await store.retire_previous(now, alg)
    if retired:
        log.info("signing_key_retired", kids=retired, alg=alg)
    return retired
