"""Refresh-token families: issue, rotate on every use, detect reuse, revoke.

One login starts a family (its id is the access token's ``sid``). Each refresh spends the presented
token and hands out its successor, so a family has at most one live token. The successor is derived
from the presented token with a server key (HMAC), never stored: a second refresh with the same spent
token inside the grace window (two tabs, a retried request) is given the *same* successor, while
only hashes sit in the database. Outside the grace, a spent token coming back means it was copied:
the whole family is revoked.

A token is stored under a *keyed* hash (HMAC-SHA256 with a server key over the token's SHA-256), and
each record carries a MAC over its family, user and lifetime: someone who can write to MongoDB but
holds no ``WXLOGIN_DATA_KEY`` can neither plant a token nor move a stored one to another user. A
family lives at most ``max_age`` seconds from its login however often it is refreshed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.session.errors import RefreshInvalid, RefreshReused, SessionEnded
from services.session.store import RefreshRecord, RefreshTokenStore
from shared.logging import get_logger

log = get_logger(__name__)


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of ``text`` (how earlier versions stored refresh tokens: see :func:`keyed_id`)."""
    return hashlib.sha256(text.encode()).hexdigest()


# Keyed ids start with this, so a bare SHA-256 id (an earlier version's) is never mistaken for one.
KEYED_PREFIX = "h."


def keyed_id(key: bytes, digest_hex: str) -> str:
    """The stored id of a refresh token whose SHA-256 is ``digest_hex`` (keyed over the digest, so
    :func:`~services.session.store.RefreshTokenStore.migrate_legacy` re-keys old records)."""
    return KEYED_PREFIX + hmac.new(key, b"refresh-id:" + digest_hex.encode(), hashlib.sha256).hexdigest()


def record_mac(key: bytes, record: RefreshRecord) -> str:
    """The MAC binding a stored token to its family, user and lifetime (and its client and grant)."""
    fields = [record.token_hash, record.family, record.user_id, repr(record.session_started_at)]
    fields.append(repr(record.expires_at))
    if record.client_id is not None or record.scope is not None:
        # Only then, so the MAC of a record stored before clients existed still verifies.
        fields += [record.client_id or "", record.scope or "", repr(record.auth_time)]
    return hmac.new(key, ("refresh-mac:" + "|".join(fields)).encode(), hashlib.sha256).hexdigest()


class RefreshStore(Protocol):
    """What :class:`RefreshFamilies` needs of storage (:class:`~services.session.store.RefreshTokenStore`)."""

    async def insert(self, record: RefreshRecord) -> bool: ...
    async def get(self, token_hash: str) -> RefreshRecord | None: ...
    async def spend(self, token_hash: str, successor: str, now: float) -> bool: ...
    async def family_revoked(self, family: str) -> bool: ...
    async def family_owner(self, family: str) -> str | None: ...
    async def family_record(self, family: str) -> RefreshRecord | None: ...
    async def revoke_family(self, family: str, reason: str, now: float) -> int: ...
    async def revoke_user(self, user_id: str, reason: str, now: float) -> int: ...


@dataclass(frozen=True, slots=True)
class Binding:
    """What a family is bound to: its client (None: the default client) and, for an OpenID Connect
    grant, its scope and the ``auth_time`` of its login (None for the browser and mini-program API)."""

    client_id: str | None = None
    scope: str | None = None
    auth_time: float | None = None

    @property
    def oidc(self) -> bool:
        """True for a family issued by the token endpoint."""
        return self.scope is not None


@dataclass(frozen=True, slots=True)
class Grant:
    """A live refresh token handed to a client, and whose session it belongs to."""

    token: str
    family: str
    user_id: str
    binding: Binding = Binding()


class RefreshFamilies:
    """The refresh-token rules; every state change is a conditional update, so replicas may race."""

    def __init__(
        self,
        store: RefreshStore,
        successor_key: bytes,
        *,
        ttl: float,
        grace: float,
        max_age: float | None = None,
        older_keys: Sequence[bytes] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if any(len(key) < 32 for key in (successor_key, *older_keys)):
            raise ValueError("the successor key must be at least 32 bytes")
        self._store = store
        self._key = successor_key
        # Keys of a data key being rotated out: tokens stored under them are still found (and their
        # successors stored under the new key) until they expire.
        self._keys = (successor_key, *older_keys)
        self._ttl = ttl
        self._grace = grace
        self._max_age = max_age
        self._clock = clock

    def token_id(self, token: str) -> str:
        """The id a token is stored under (keyed with the current server key)."""
        return keyed_id(self._key, sha256_hex(token))

    def _record(
        self, token: str, family: str, user_id: str, *, now: float, started: float, binding: Binding
    ) -> RefreshRecord:
        expires = now + self._ttl
        if self._max_age is not None:
            expires = min(expires, started + self._max_age)
        record = RefreshRecord(
            self.token_id(token),
            family,
            user_id,
            created_at=now,
            expires_at=expires,
            session_started_at=started,
            client_id=binding.client_id,
            scope=binding.scope,
            auth_time=binding.auth_time,
        )
        return dataclasses.replace(record, mac=record_mac(self._key, record))

    def _past_max_age(self, record: RefreshRecord, now: float) -> bool:
        return self._max_age is not None and now - record.session_started_at >= self._max_age

    async def _find(self, token: str) -> RefreshRecord | None:
        """The stored record of ``token`` whose MAC verifies (under any of our keys)."""
        digest = sha256_hex(token)
        for key in self._keys:
            record = await self._store.get(keyed_id(key, digest))
            if record is None:
                continue
            if hmac.compare_digest(record.mac, record_mac(key, record)):
                return record
            log.warning("refresh_record_forged", security=True, family=record.family, user_id=record.user_id)
            return None
        return None

    def successor_of(self, token: str) -> str:
        """The token a refresh with ``token`` hands out (deterministic, unguessable without the key)."""
        return self._derive("refresh-successor:", token)

    async def start(
        self,
        user_id: str,
        *,
        once_for: str | None = None,
        family: str | None = None,
        binding: Binding = Binding(),
    ) -> Grant:
        """A new family (one login) with its first token, bound to ``binding``'s client and grant.

        With ``once_for`` (a scan login: its scene and ticket hash; a mini-program login: its code's
        keyed hash), the family and its first token are derived from it with the server key, so a
        retried completion of the same login gets the same session back instead of a second one.
        With ``family`` (an authorization code names the family it starts), that id is used.
        """
        now = self._clock()
        if once_for is not None:
            token, family = self._derive("refresh-first:", once_for), self.family_for(once_for)
        else:
            token, family = secrets.token_urlsafe(32), family or secrets.token_urlsafe(12)
        # False for a retry: the record is already there
        await self._store.insert(self._record(token, family, user_id, now=now, started=now, binding=binding))
        return Grant(token, family, user_id, binding)

    def family_for(self, once_for: str) -> str:
        """The family :meth:`start` derives from ``once_for`` (to revoke what a login started)."""
        return self._derive("family:", once_for)[:16]

    def _derive(self, label: str, value: str) -> str:
        mac = hmac.new(self._key, label.encode() + value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    async def rotate(self, presented: str, *, oidc_client: str | None = None) -> Grant:
        """Spend ``presented`` and return its successor (see the module docstring for the rules).

        With ``oidc_client`` (the token endpoint), only a token of that client's OpenID Connect grant
        is accepted; without it (``/api/token/refresh``), only a token of the browser and mini-program
        API. Either refusal spends nothing.
        """
        now = self._clock()
        record = await self._find(presented)
        if record is not None and not self._bound_as_asked(record, oidc_client):
            log.warning(
                "refresh_token_of_another_client",
                security=True,
                family=record.family,
                client=oidc_client,
                token_client=record.client_id,
            )
            raise RefreshInvalid("this refresh token was issued to another client")
        if (
            record is not None
            and self._max_age is not None
            and now - record.session_started_at >= self._max_age
        ):
            log.info("session_lifetime_reached", family=record.family, user_id=record.user_id)
            raise SessionEnded("this session reached its maximum lifetime; log in again")
        if record is None or record.expires_at <= now:
            raise RefreshInvalid()
        if record.revoked or await self._store.family_revoked(record.family):
            raise RefreshInvalid("this session has ended; log in again")
        spent_hash = record.token_hash
        successor = self.successor_of(presented)
        binding = Binding(record.client_id, record.scope, record.auth_time)
        successor_record = self._record(
            successor,
            record.family,
            record.user_id,
            now=now,
            started=record.session_started_at,
            binding=binding,
        )
        successor_hash = successor_record.token_hash
        if record.rotated_at is None:
            # Insert the successor first: if we then win the spend it is already there for a twin
            # request; if a twin wins, its successor is the same token and our insert was a no-op.
            await self._store.insert(successor_record)
            if await self._store.spend(spent_hash, successor_hash, now):
                if await self._store.family_revoked(record.family):  # a logout raced us
                    raise RefreshInvalid("this session has ended; log in again")
                return Grant(successor, record.family, record.user_id, binding)
            record = await self._store.get(spent_hash)
            if record is None or record.revoked or record.rotated_at is None:
                raise RefreshInvalid("this session has ended; log in again")
        if now - record.rotated_at <= self._grace and record.successor == successor_hash:
            nxt = await self._store.get(successor_hash)
            live = nxt is not None and nxt.rotated_at is None and not nxt.revoked and nxt.expires_at > now
            if live and not await self._store.family_revoked(record.family):
                log.info("refresh_within_grace", family=record.family, user_id=record.user_id)
                return Grant(successor, record.family, record.user_id, binding)
        revoked = await self._store.revoke_family(record.family, "reuse", now)
        log.warning(
            "refresh_token_reuse_detected",
            security=True,
            family=record.family,
            user_id=record.user_id,
            spent_seconds_ago=round(now - record.rotated_at, 1),
            tokens_revoked=revoked,
        )
        raise RefreshReused()

    @staticmethod
    def _bound_as_asked(record: RefreshRecord, oidc_client: str | None) -> bool:
        if oidc_client is None:
            return record.scope is None
        return record.scope is not None and record.client_id == oidc_client

    async def record_of(self, presented: str) -> RefreshRecord | None:
        """The stored record of a refresh token (spent or not), for revocation by its client."""
        return await self._find(presented)

    async def revoke(self, family: str, reason: str) -> bool:
        """End a family; False when it was already ended (or unknown)."""
        revoked = await self._store.revoke_family(family, reason, self._clock())
        if revoked:
            log.info("session_revoked", family=family, reason=reason)
        return revoked > 0

    async def revoke_user(self, user_id: str, reason: str) -> int:
        """End every family of ``user_id`` ("log out everywhere"); how many tokens were revoked."""
        revoked = await self._store.revoke_user(user_id, reason, self._clock())
        log.info("sessions_revoked", user_id=user_id, reason=reason, tokens_revoked=revoked)
        return revoked

    async def family_of(self, presented: str) -> str | None:
        """The family of a refresh token (spent or not), for logout by refresh token."""
        record = await self._find(presented)
        return record.family if record else None

    async def live_owner(self, presented: str) -> str | None:
        """The user of a refresh token that could still refresh (not spent, revoked or expired)."""
        record = await self._find(presented)
        if record is None or record.rotated_at is not None or record.revoked:
            return None
        if record.expires_at <= self._clock() or await self._store.family_revoked(record.family):
            return None
        return record.user_id

    async def live_family(self, family: str) -> RefreshRecord | None:
        """A stored record of ``family`` (its user, client and grant) while the session is live: not
        revoked, not past its maximum lifetime; else None."""
        record = await self._store.family_record(family)
        if record is None or self._past_max_age(record, self._clock()):
            return None
        if await self._store.family_revoked(family):
            return None
        return record

    async def family_record(self, family: str) -> RefreshRecord | None:
        """A stored record of ``family`` (its user and client), live or not: whose session a
        revocation ended."""
        return await self._store.family_record(family)

    async def check_live(self, family: str, user_id: str) -> None:
        """Raise :class:`SessionEnded` unless ``family`` is ``user_id``'s and not revoked."""
        owner = await self._store.family_owner(family)
        if owner != user_id or await self._store.family_revoked(family):
            raise SessionEnded()


async def migrate_legacy_tokens(store: RefreshTokenStore, key: bytes) -> int:
    """Re-key the refresh tokens an earlier version stored under a bare SHA-256 (``refresh-tokens
    migrate``): each keeps working under its keyed id and MAC, with its family's start as the start
    of its session. Run it once, at the upgrade: run later, it would adopt planted records too."""

    def seal(record: RefreshRecord) -> RefreshRecord:
        return dataclasses.replace(record, mac=record_mac(key, record))

    migrated = await store.migrate_legacy(lambda digest: keyed_id(key, digest), seal)
    log.info("refresh_tokens_migrated", count=migrated)
    return migrated
