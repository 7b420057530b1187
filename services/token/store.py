"""The ``tokens`` collection: the access_token of this mini-program, its force-refresh budget, the lease.

Two documents per appid, addressed by ``_id`` (times are epoch floats, never BSON dates: see
:mod:`shared.mongo`):

* ``access_token:<appid>``: the token sealed with ``WXLOGIN_DATA_KEY`` (``sealed_token``), its
  fingerprint, expiry, a ``version`` bumped by every write, and the force-refresh bookkeeping
  (``force_last``, ``force_day``, ``force_count``) kept beside the token so that "is this still the
  current token, and may we force now?" is one conditional update;
* ``lease:<appid>``: which replica may refresh (``owner``) and until when (``until``).

Documents written before the token was sealed hold it in clear (``access_token``): they are still read,
and the next write replaces the clear field by the sealed one, so an upgrade forces no refresh.

Every condition mixing fields with ``$or`` is written as one ``$and`` list: nx-27017 drops the other
top-level fields of a filter that also has a top-level ``$or``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from shared.logging import get_logger
from shared.mongo import Index
from shared.runtime import Database
from shared.sealing import Sealer, SealError
from shared.tokens import fingerprint
from shared.wechat import BEIJING_OFFSET

log = get_logger(__name__)

TOKENS = "tokens"
INDEXES: list[Index] = []  # documents are addressed by _id only

ForceRefusal = Literal["stale", "throttled", "daily_cap"]


def token_purpose(appid: str) -> str:
    """Sealing purpose that ties a stored access_token to its appid's document."""
    return f"access-token:{appid}"


class TokenUnreadable(RuntimeError):
    """The stored access_token does not open with any configured data key."""


def beijing_day(now: float) -> int:
    """The number of the day in Beijing time (UTC+8), when WeChat's daily limits reset."""
    return int((now + BEIJING_OFFSET) // 86400)


@dataclass(frozen=True, slots=True)
class StoredToken:
    """An access_token as persisted; times are epoch seconds.

    ``fetched_at`` is when this token was first obtained (a normal-mode call that hands back the same
    token keeps it, so the age is the token's, not the last call's). ``version`` is the document's
    write counter (0 before the first save).
    """

    access_token: str
    expires_at: float
    fetched_at: float
    version: int = 0

    @property
    def fingerprint(self) -> str:
        """See :func:`fingerprint`."""
        return fingerprint(self.access_token)

    def remaining(self, now: float) -> float:
        """Seconds of life left at ``now`` (negative once expired)."""
        return self.expires_at - now

    @classmethod
    def from_doc(cls, doc: dict[str, Any], sealer: Sealer, purpose: str) -> StoredToken:
        """The token of a stored document: sealed, or in clear as versions before sealing wrote it
        (documents of the first version carry no ``version`` either)."""
        sealed = doc.get("sealed_token")
        text = sealer.open(sealed, purpose=purpose) if sealed is not None else str(doc["access_token"])
        return cls(text, float(doc["expires_at"]), float(doc["fetched_at"]), int(doc.get("version", 0)))

    def to_doc(self, sealer: Sealer, purpose: str) -> dict[str, Any]:
        """The token fields of the document (``version`` is maintained by the store); the token itself
        only sealed."""
        return {
            "sealed_token": sealer.seal(self.access_token, purpose=purpose),
            "fingerprint": self.fingerprint,
            "expires_at": self.expires_at,
            "fetched_at": self.fetched_at,
        }

    def __repr__(self) -> str:
        return f"StoredToken(fingerprint={self.fingerprint}, expires_at={self.expires_at}, v={self.version})"


@dataclass(frozen=True, slots=True)
class ForceDecision:
    """The outcome of trying to claim a force refresh: claimed, or why not."""

    claimed: bool
    refusal: ForceRefusal | None = None
    count_today: int = 0

    @property
    def outcome(self) -> str:
        """A metric label: ``claimed`` or the refusal."""
        return "claimed" if self.claimed else str(self.refusal)


class TokenStore:
    """Reads and writes the current token of ``appid``, and claims force refreshes for it.

    The token is sealed with ``sealer`` (the data key) under a purpose naming the appid.
    """

    def __init__(self, db: Database, appid: str, *, sealer: Sealer) -> None:
        self._tokens = db[TOKENS]
        self._id = f"access_token:{appid}"
        self._sealer = sealer
        self._purpose = token_purpose(appid)

    async def load(self) -> StoredToken | None:
        """The stored token, if any (raises :class:`TokenUnreadable` when it does not open)."""
        doc = await self._tokens.find_one({"_id": self._id})
        if doc is None:
            return None
        try:
            return StoredToken.from_doc(doc, self._sealer, self._purpose)
        except SealError as exc:
            log.error("access_token_unreadable", reason=str(exc))
            raise TokenUnreadable(
                "the stored access_token does not open with WXLOGIN_DATA_KEY: give every token replica "
                "the same key (during a rotation, the new one first and the old one after a comma)"
            ) from None

    def _fields(self, token: StoredToken) -> dict[str, Any]:
        return token.to_doc(self._sealer, self._purpose)

    # Every write replaces a clear token an earlier version stored by the sealed one.
    _UNSEAL = {"$unset": {"access_token": ""}}

    async def save(self, token: StoredToken, *, expected_version: int | None) -> StoredToken | None:
        """Write ``token`` if the stored version is still ``expected_version`` (None: no document yet).

        Returns the token as stored (with its new version), or None when another write came first;
        a refresh that started from an older token must never overwrite a newer one.
        """
        if expected_version is None:
            doc = {
                "_id": self._id,
                **self._fields(token),
                "version": 1,
                "force_last": 0.0,
                "force_day": 0,
                "force_count": 0,
            }
            try:
                await self._tokens.insert_one(doc)
            except DuplicateKeyError:
                return None
            return replace(token, version=1)
        fields = self._fields(token)
        version: dict[str, Any] = {"version": expected_version}
        if expected_version == 0:
            # A document of the first version of this service: no version, no force bookkeeping yet.
            version = {"$or": [{"version": 0}, {"version": {"$exists": False}}]}
            fields.update(force_last=0.0, force_day=0, force_count=0)
        result = await self._tokens.update_one(
            {"$and": [{"_id": self._id}, version]},
            {"$set": fields, "$inc": {"version": 1}, **self._UNSEAL},
        )
        return replace(token, version=expected_version + 1) if result.matched_count else None

    async def save_forced(self, token: StoredToken) -> StoredToken:
        """Write the result of a force refresh, whatever is stored.

        WeChat invalidated every earlier token when it answered, so whatever a concurrent normal
        refresh got before it is older; a normal refresh answered after it got this same token.
        """
        doc = await self._tokens.find_one_and_update(
            {"_id": self._id},
            {"$set": self._fields(token), "$inc": {"version": 1}, **self._UNSEAL},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # nothing stored: a claim needs a stored token, so only if it was deleted since
            saved = await self.save(token, expected_version=None)
            return saved if saved is not None else await self.save_forced(token)
        return replace(token, version=int(doc["version"]))

    async def claim_force(
        self, token_fingerprint: str, now: float, *, min_interval: float, per_day: int
    ) -> ForceDecision:
        """Claim one force refresh of the token named ``token_fingerprint``, with one conditional update.

        Granted only while that token is the stored one, ``min_interval`` seconds after the previous
        claim and under ``per_day`` claims in this Beijing day; however many replicas receive however
        many invalidations, at most one claim wins. The claim bumps the version, so a normal refresh
        that read the old token cannot save over the forced one.
        """
        day = beijing_day(now)
        base: list[dict[str, Any]] = [
            {"_id": self._id},
            {"fingerprint": token_fingerprint},
            {"force_last": {"$lte": now - min_interval}},
        ]
        doc = await self._tokens.find_one_and_update(
            {"$and": [*base, {"force_day": day}, {"force_count": {"$lt": per_day}}]},
            {"$set": {"force_last": now}, "$inc": {"force_count": 1, "version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # the first claim of a new day starts the count again
            doc = await self._tokens.find_one_and_update(
                {"$and": [*base, {"force_day": {"$ne": day}}]},
                {"$set": {"force_last": now, "force_day": day, "force_count": 1}, "$inc": {"version": 1}},
                return_document=ReturnDocument.AFTER,
            )
        if doc is not None:
            return ForceDecision(True, count_today=int(doc["force_count"]))
        current = await self._tokens.find_one({"_id": self._id})
        if current is None or current.get("fingerprint") != token_fingerprint:
            return ForceDecision(False, "stale")
        count = int(current.get("force_count", 0)) if current.get("force_day") == day else 0
        if count >= per_day:
            return ForceDecision(False, "daily_cap", count_today=count)
        return ForceDecision(False, "throttled", count_today=count)

    async def force_finished(self, now: float) -> None:
        """Move the last force time to ``now`` (when WeChat answered), so the next claim is at least
        the minimum interval after WeChat saw this one, however long the call took."""
        await self._tokens.update_one({"_id": self._id}, {"$max": {"force_last": now}})


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds the refresh lease, and until when."""

    owner: str
    until: float


class LeaseStore:
    """The refresh lease of ``appid``: at most one replica holds it at any time."""

    def __init__(self, db: Database, appid: str) -> None:
        self._tokens = db[TOKENS]
        self._id = f"lease:{appid}"

    async def acquire(self, owner: str, now: float, duration: float) -> bool:
        """Take or renew the lease until ``now + duration``: granted when ``owner`` holds it or it has
        lapsed, with one conditional update (the first ever is an insert)."""
        doc = await self._tokens.find_one_and_update(
            {"$and": [{"_id": self._id}, {"$or": [{"owner": owner}, {"until": {"$lt": now}}]}]},
            {"$set": {"owner": owner, "until": now + duration}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None:
            return True
        # Not granted: someone else holds it, or there is no lease document yet. A duplicate key tells
        # the first case apart (nx-27017 cannot be trusted with an upsert here, see shared.mongo).
        try:
            await self._tokens.insert_one({"_id": self._id, "owner": owner, "until": now + duration})
        except DuplicateKeyError:
            return False
        return True

    async def release(self, owner: str) -> bool:
        """Give the lease up (graceful stop) so another replica takes it at its next tick."""
        result = await self._tokens.update_one(
            {"$and": [{"_id": self._id}, {"owner": owner}]}, {"$set": {"until": 0.0}}
        )
        return bool(result.matched_count)

    async def holder(self) -> LeaseHolder | None:
        """The current (or last) holder, for operators and tests."""
        doc = await self._tokens.find_one({"_id": self._id})
        return LeaseHolder(str(doc["owner"]), float(doc["until"])) if doc else None
