"""Refresh-token families: issue, rotate on every use, detect reuse, revoke.

One login starts a family (its id is the access token's ``sid``). Each refresh spends the presented
token and hands out its successor, so a family has at most one live token. The successor is derived
from the presented token with a server key (HMAC), never stored: a second refresh with the same spent
token inside the grace window (two tabs, a retried request) is given the *same* successor, while
only hashes sit in the database. Outside the grace, a spent token coming back means it was copied:
the whole family is revoked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.session.errors import RefreshInvalid, RefreshReused, SessionEnded
from services.session.store import RefreshRecord
from shared.logging import get_logger

log = get_logger(__name__)


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of ``text`` (how codes and refresh tokens are stored)."""
    return hashlib.sha256(text.encode()).hexdigest()


class RefreshStore(Protocol):
    """What :class:`RefreshFamilies` needs of storage (:class:`~services.session.store.RefreshTokenStore`)."""

    async def insert(self, record: RefreshRecord) -> bool: ...
    async def get(self, token_hash: str) -> RefreshRecord | None: ...
    async def spend(self, token_hash: str, successor: str, now: float) -> bool: ...
    async def family_revoked(self, family: str) -> bool: ...
    async def family_owner(self, family: str) -> str | None: ...
    async def revoke_family(self, family: str, reason: str, now: float) -> int: ...


@dataclass(frozen=True, slots=True)
class Grant:
    """A live refresh token handed to a client, and whose session it belongs to."""

    token: str
    family: str
    user_id: str


class RefreshFamilies:
    """The refresh-token rules; every state change is a conditional update, so replicas may race."""

    def __init__(
        self,
        store: RefreshStore,
        successor_key: bytes,
        *,
        ttl: float,
        grace: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(successor_key) < 32:
            raise ValueError("the successor key must be at least 32 bytes")
        self._store = store
        self._key = successor_key
        self._ttl = ttl
        self._grace = grace
        self._clock = clock

    def successor_of(self, token: str) -> str:
        """The token a refresh with ``token`` hands out (deterministic, unguessable without the key)."""
        return self._derive("refresh-successor:", token)

    async def start(self, user_id: str, *, once_for: str | None = None) -> Grant:
        """A new family (one login) with its first token.

        With ``once_for`` (a scan login: its scene and ticket hash), the family and its first token
        are derived from it with the server key, so a retried completion of the same login gets the
        same session back instead of a second one.
        """
        now = self._clock()
        if once_for is None:
            token, family = secrets.token_urlsafe(32), secrets.token_urlsafe(12)
        else:
            token, family = self._derive("refresh-first:", once_for), self._derive("family:", once_for)[:16]
        await self._store.insert(  # False for a retry: the record is already there
            RefreshRecord(sha256_hex(token), family, user_id, created_at=now, expires_at=now + self._ttl)
        )
        return Grant(token, family, user_id)

    def _derive(self, label: str, value: str) -> str:
        mac = hmac.new(self._key, label.encode() + value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    async def rotate(self, presented: str) -> Grant:
        """Spend ``presented`` and return its successor (see the module docstring for the rules)."""
        now = self._clock()
        spent_hash = sha256_hex(presented)
        record = await self._store.get(spent_hash)
        if record is None or record.expires_at <= now:
            raise RefreshInvalid()
        if record.revoked or await self._store.family_revoked(record.family):
            raise RefreshInvalid("this session has ended; log in again")
        successor = self.successor_of(presented)
        successor_hash = sha256_hex(successor)
        if record.rotated_at is None:
            # Insert the successor first: if we then win the spend it is already there for a twin
            # request; if a twin wins, its successor is the same token and our insert was a no-op.
            await self._store.insert(
                RefreshRecord(
                    successor_hash, record.family, record.user_id, created_at=now, expires_at=now + self._ttl
                )
            )
            if await self._store.spend(spent_hash, successor_hash, now):
                if await self._store.family_revoked(record.family):  # a logout raced us
                    raise RefreshInvalid("this session has ended; log in again")
                return Grant(successor, record.family, record.user_id)
            record = await self._store.get(spent_hash)
            if record is None or record.revoked or record.rotated_at is None:
                raise RefreshInvalid("this session has ended; log in again")
        if now - record.rotated_at <= self._grace and record.successor == successor_hash:
            nxt = await self._store.get(successor_hash)
            live = nxt is not None and nxt.rotated_at is None and not nxt.revoked and nxt.expires_at > now
            if live and not await self._store.family_revoked(record.family):
                log.info("refresh_within_grace", family=record.family, user_id=record.user_id)
                return Grant(successor, record.family, record.user_id)
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

    async def revoke(self, family: str, reason: str) -> bool:
        """End a family; False when it was already ended (or unknown)."""
        revoked = await self._store.revoke_family(family, reason, self._clock())
        if revoked:
            log.info("session_revoked", family=family, reason=reason)
        return revoked > 0

    async def family_of(self, presented: str) -> str | None:
        """The family of a refresh token (spent or not), for logout by refresh token."""
        record = await self._store.get(sha256_hex(presented))
        return record.family if record else None

    async def check_live(self, family: str, user_id: str) -> None:
        """Raise :class:`SessionEnded` unless ``family`` is ``user_id``'s and not revoked."""
        owner = await self._store.family_owner(family)
        if owner != user_id or await self._store.family_revoked(family):
            raise SessionEnded()
