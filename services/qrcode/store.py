"""The qrcode service's collections: ``scenes`` (the state machine), ``scene_pool`` (pre-rendered codes
and the refill lease) and ``scene_rates`` (fixed-window counters shared by every replica).

Times are epoch seconds. ``purge_at`` is a BSON date written at insert for a TTL index: scenes stay an
hour past expiry so late callers hear "expired", not "unknown". Each state change is one conditional
``find_one_and_update``; a pool claim is one that marks the entry claimed, deleted by the claiming
replica's next refill round (see shared.mongo).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, cast

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.logging import get_logger
from shared.messages import TERMINAL_STATES, ScenePurpose, SceneState
from shared.mongo import Index
from shared.runtime import Database

log = get_logger(__name__)

SCENES = "scenes"
POOL = "scene_pool"
RATES = "scene_rates"
PURGE_AFTER_SECONDS = 3600
# Pool codes never expire at WeChat; this only collects entries of an old configuration, or claimed
# by a replica that died before deleting them.
POOL_PURGE_AFTER_SECONDS = 86400
REFILL_LEASE = "lease:refill"

INDEXES = [
    Index(SCENES, [("purge_at", 1)], expire_after_seconds=0, name="scenes_purge_ttl"),
    Index(SCENES, [("state", 1), ("expires_at", 1)], name="scenes_state_expiry"),
    Index(SCENES, [("state", 1), ("announced", 1)], name="scenes_unannounced"),
    Index(POOL, [("purge_at", 1)], expire_after_seconds=0, name="pool_purge_ttl"),
    Index(POOL, [("variant", 1), ("state", 1)], name="pool_variant_state"),
    Index(RATES, [("purge_at", 1)], expire_after_seconds=0, name="rates_purge_ttl"),
    # A typed login code names one scene: a code is unique among the stored scenes (live, and an hour
    # past their end), and a collision at issue is retried with another code.
    Index(
        SCENES,
        [("login_code_hash", 1)],
        unique=True,
        partial={"login_code_hash": {"$type": "string"}},
        name="scenes_login_code",
    ),
]

LIVE_STATES = ("pending", "scanned", "confirmed")


class AnyClient(Enum):
    """The value of :meth:`SceneStore.transition`'s ``client_id`` that sets no condition on the client."""

    ANY = "any"


ANY_CLIENT = AnyClient.ANY


@dataclass(frozen=True, slots=True)
class Scene:
    """A login scene as stored."""

    id: str
    state: SceneState
    ticket_hash: str
    ip: str
    user_agent: str
    requested_at: float
    expires_at: float
    user_id: str | None = None
    updated_at: float = 0.0
    scan_hash: str | None = None  # SHA-256 of the scan token of the phone that scanned
    client_id: str | None = None  # the client (site) that asked for it; None: the default client
    confirmed_at: float | None = None  # when the phone confirmed (the OpenID Connect auth_time)
    cancel_reason: str | None = None  # declined, not_me: set by the cancel, told to the browser
    # ``link``: the scene links the scanning WeChat user to the site's account ``account_hint`` names
    # (docs/linking.md); absent in the document for a login, as before linking existed.
    purpose: ScenePurpose = "login"
    account_hint: str | None = None

    @classmethod
    def new(
        cls,
        id: str,
        *,
        ticket_hash: str,
        ip: str,
        user_agent: str,
        now: float,
        ttl: float,
        client_id: str | None = None,
        purpose: ScenePurpose = "login",
        account_hint: str | None = None,
    ) -> Scene:
        """A fresh ``pending`` scene, bound to ``client_id``, for a login or (``purpose`` link) a link."""
        return cls(
            id,
            "pending",
            ticket_hash,
            ip,
            user_agent,
            now,
            now + ttl,
            None,
            now,
            client_id=client_id,
            purpose=purpose,
            account_hint=account_hint,
        )

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Scene:
        """The scene stored as ``doc``."""
        return cls(
            id=str(doc["_id"]),
            state=cast(SceneState, str(doc["state"])),
            ticket_hash=str(doc["ticket_hash"]),
            ip=str(doc.get("ip", "")),
            user_agent=str(doc.get("user_agent", "")),
            requested_at=float(doc["requested_at"]),
            expires_at=float(doc["expires_at"]),
            user_id=doc.get("user_id"),
            updated_at=float(doc.get("updated_at", 0.0)),
            scan_hash=doc.get("scan_hash"),
            client_id=doc.get("client_id"),
            confirmed_at=float(doc["confirmed_at"]) if doc.get("confirmed_at") is not None else None,
            cancel_reason=doc.get("cancel_reason"),
            purpose="link" if doc.get("purpose") == "link" else "login",
            account_hint=doc.get("account_hint"),
        )

    def to_doc(self) -> dict[str, Any]:
        """The document to insert (with the TTL date)."""
        doc: dict[str, Any] = {
            "_id": self.id,
            "state": self.state,
            "ticket_hash": self.ticket_hash,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
            "user_id": self.user_id,
            "updated_at": self.updated_at,
            "scan_hash": self.scan_hash,
            "client_id": self.client_id,
            "purge_at": datetime.fromtimestamp(self.expires_at + PURGE_AFTER_SECONDS, UTC),
        }
        if self.purpose == "link":
            doc.update(purpose="link", account_hint=self.account_hint)
        return doc

    def overdue(self, now: float) -> bool:
        """True when the scene is past its lifetime but not yet in a terminal state."""
        return self.state not in TERMINAL_STATES and now >= self.expires_at

    def visible_state(self, now: float) -> SceneState:
        """The state a caller should see: overdue scenes are ``expired`` whatever the sweeper did."""
        return "expired" if self.overdue(now) else self.state


class SceneStore:
    """Reads and conditionally updates scenes."""

    def __init__(self, db: Database) -> None:
        self._scenes = db[SCENES]

    async def insert(self, scene: Scene) -> None:
        """Store a new scene."""
        await self._scenes.insert_one(scene.to_doc())

    async def get(self, scene_id: str) -> Scene | None:
        """The scene, or None when unknown (never issued, or purged)."""
        doc = await self._scenes.find_one({"_id": scene_id})
        return Scene.from_doc(doc) if doc else None

    async def transition(
        self,
        scene_id: str,
        *,
        from_states: Collection[str],
        to_state: SceneState,
        now: float,
        unexpired: bool = True,
        ticket_hash: str | None = None,
        scan_hash: str | None = None,
        set_fields: dict[str, Any] | None = None,
        identified: bool = False,
        purpose: ScenePurpose | None = None,
        client_id: str | AnyClient | None = ANY_CLIENT,
    ) -> Scene | None:
        """Move ``scene_id`` from one of ``from_states`` to ``to_state`` atomically.

        Returns the updated scene, or None when the scene is missing, in another state, past its
        lifetime (with ``unexpired``), held by another ticket or scanned by another phone, (with
        ``identified``) has no user yet, (with ``purpose``) is for something else, or (with
        ``client_id``) was issued to another client (None: the default client).
        """
        query: dict[str, Any] = {"_id": scene_id, "state": {"$in": list(from_states)}}
        if unexpired:
            query["expires_at"] = {"$gt": now}
        if ticket_hash is not None:
            query["ticket_hash"] = ticket_hash
        if scan_hash is not None:
            query["scan_hash"] = scan_hash
        if identified:
            query["user_id"] = {"$ne": None}
        if purpose is not None:  # a login scene has no ``purpose`` field (as before linking)
            # $in with null, not $ne: nx-27017 misses absent fields with $ne beside an _id alone.
            query["purpose"] = "link" if purpose == "link" else {"$in": [None, "login"]}
        if client_id is not ANY_CLIENT:
            # Equality with null matches a missing field too (a scene stored before clients existed),
            # on MongoDB and on nx-27017 alike: the default client's scenes.
            query["client_id"] = client_id
        update = {"$set": {"state": to_state, "updated_at": now, **(set_fields or {})}}
        doc = await self._scenes.find_one_and_update(query, update, return_document=ReturnDocument.AFTER)
        return Scene.from_doc(doc) if doc else None

    async def overdue(self, now: float, *, limit: int = 200) -> list[str]:
        """Ids of pending/scanned scenes past their lifetime (the sweeper's work list)."""
        cursor = self._scenes.find(
            {"state": {"$in": ["pending", "scanned"]}, "expires_at": {"$lte": now}}, {"_id": 1}
        ).limit(limit)
        return [str(doc["_id"]) async for doc in cursor]

    async def mark_announced(self, scene_id: str) -> None:
        """Record that ``scene.expired`` went out for this scene."""
        await self._scenes.update_one({"_id": scene_id, "announced": False}, {"$set": {"announced": True}})

    async def claim_unannounced(self, now: float, *, older_than: float, limit: int = 50) -> list[str]:
        """Expired scenes whose announcement failed, each claimed for a retry by one replica.

        A claim moves ``updated_at`` to ``now``, so another replica retries it only after ``older_than``
        more seconds.
        """
        cursor = self._scenes.find(
            {"state": "expired", "announced": False, "updated_at": {"$lte": now - older_than}}, {"_id": 1}
        ).limit(limit)
        claimed = []
        for scene_id in [str(doc["_id"]) async for doc in cursor]:
            doc = await self._scenes.find_one_and_update(
                {"_id": scene_id, "announced": False, "updated_at": {"$lte": now - older_than}},
                {"$set": {"updated_at": now}},
            )
            if doc is not None:
                claimed.append(scene_id)
        return claimed

    async def set_login_code(self, scene_id: str, code_hash: str) -> bool:
        """Give the scene the typed login code whose keyed hash is ``code_hash``; False when another
        stored scene has that code (the unique index refused it: mint another)."""
        try:
            await self._scenes.update_one(
                {"_id": scene_id}, {"$set": {"login_code_hash": code_hash, "code_entries": 0}}
            )
        except DuplicateKeyError:
            return False
        return True

    async def enter_login_code(self, code_hash: str, *, limit: int) -> tuple[str | None, bool]:
        """Count one entry of the code whose keyed hash is ``code_hash`` against its scene.

        Returns the scene's id when the code is stored and had entries left (at most ``limit`` are
        counted), and whether any stored scene has the code at all (False: a miss).
        """
        doc = await self._scenes.find_one_and_update(
            {"login_code_hash": code_hash, "code_entries": {"$lt": limit}},
            {"$inc": {"code_entries": 1}},
            projection={"_id": 1},
        )
        if doc is not None:
            return str(doc["_id"]), True
        return None, await self._scenes.find_one({"login_code_hash": code_hash}, {"_id": 1}) is not None


@dataclass(frozen=True, slots=True)
class PooledCode:
    """A pre-rendered code waiting in ``scene_pool`` for a scene to be issued with it."""

    scene: str
    variant: str
    image: bytes
    content_type: str
    rendered_at: float

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> PooledCode:
        """The pool entry stored as ``doc``."""
        return cls(
            scene=str(doc["_id"]),
            variant=str(doc["variant"]),
            image=bytes(doc["image"]),
            content_type=str(doc["content_type"]),
            rendered_at=float(doc["rendered_at"]),
        )

    def to_doc(self) -> dict[str, Any]:
        """The document to insert, ready to be claimed."""
        return {
            "_id": self.scene,
            "kind": "code",
            "state": "ready",
            "variant": self.variant,
            "image": self.image,
            "content_type": self.content_type,
            "rendered_at": self.rendered_at,
            "purge_at": datetime.fromtimestamp(self.rendered_at + POOL_PURGE_AFTER_SECONDS, UTC),
        }


class PoolStore:
    """Pre-rendered codes, and the lease that lets one replica at a time refill them."""

    def __init__(self, db: Database) -> None:
        self._pool = db[POOL]

    async def add_many(self, codes: Sequence[PooledCode]) -> None:
        """Put freshly rendered codes in the pool, with one insert for the whole batch.

        Unordered: a code that cannot be stored (its scene id taken, a one in 2^192 chance) does not
        keep the others out; the error is raised once the rest are in.
        """
        if codes:
            await self._pool.insert_many([code.to_doc() for code in codes], ordered=False)

    async def claim(self, variant: str, now: float) -> PooledCode | None:
        """Take one ready code of ``variant`` for this caller alone, or None when there is none.

        One round trip: the entry is only marked ``claimed`` (no other caller can take it), and
        :meth:`purge_claimed` deletes it later, off the issue path (or, if this replica dies first,
        the ``purge_at`` TTL does).
        """
        doc = await self._pool.find_one_and_update(
            {"kind": "code", "variant": variant, "state": "ready"},
            {"$set": {"state": "claimed", "claimed_at": now}},
        )
        return None if doc is None else PooledCode.from_doc(doc)

    async def unclaim(self, scene: str) -> None:
        """Make a claimed entry ready again (its scene was refused before it was issued)."""
        await self._pool.update_one({"_id": scene, "state": "claimed"}, {"$set": {"state": "ready"}})

    async def purge_claimed(self, scenes: Sequence[str]) -> int:
        """Delete these claimed entries (their images went out with their scenes).

        By ``_id``: a filter on ``state`` alone scans the pool on nx-27017 (~6 ms for 700 entries).
        """
        if not scenes:
            return 0
        result = await self._pool.delete_many({"_id": {"$in": list(scenes)}, "state": "claimed"})
        return int(result.deleted_count)

    async def count_ready(self, variant: str, *, up_to: int) -> int:
        """How many codes of ``variant`` are waiting, counting no further than ``up_to``."""
        # A bounded find rather than count_documents: the refiller asks every second, and on
        # nx-27017 count_documents is an aggregation that falls back to Python (and logs about it).
        cursor = self._pool.find({"kind": "code", "variant": variant, "state": "ready"}, {"_id": 1})
        return len([doc async for doc in cursor.limit(max(1, up_to))])

    async def hold_lease(self, holder: str, now: float, ttl: float) -> bool:
        """Take or extend the refill lease; False while another holder's lease runs."""
        # One $and list: nx-27017 ignores fields beside a top-level $or (see shared.mongo).
        mine_or_lapsed = {"$or": [{"holder": holder}, {"until": {"$lte": now}}]}
        doc = await self._pool.find_one_and_update(
            {"$and": [{"_id": REFILL_LEASE}, mine_or_lapsed]},
            {"$set": {"holder": holder, "until": now + ttl}},
        )
        if doc is not None:
            return True
        try:
            await self._pool.insert_one(
                {"_id": REFILL_LEASE, "kind": "lease", "holder": holder, "until": now + ttl}
            )
        except DuplicateKeyError:
            return False  # the lease exists and somebody else holds it
        return True

    async def release_lease(self, holder: str) -> None:
        """Give the lease up (at shutdown) so another replica need not wait for it to run out."""
        try:
            await self._pool.update_one({"_id": REFILL_LEASE, "holder": holder}, {"$set": {"until": 0.0}})
        except PyMongoError:
            log.warning("pool_lease_release_failed")  # it runs out by itself within the lease TTL


class RateWindowStore:
    """Fixed-window counters every replica shares: ``{_id: "<name>:<window>", count}``."""

    def __init__(self, db: Database) -> None:
        self._rates = db[RATES]

    async def take(self, name: str, window: int, limit: int, *, purge_at: float) -> bool:
        """Count one use of window ``window`` of ``name``; False when ``limit`` uses were counted."""
        return await self.reserve(name, window, limit, 1, purge_at=purge_at) == 1

    async def reserve(self, name: str, window: int, limit: int, wanted: int, *, purge_at: float) -> int:
        """Count up to ``wanted`` uses of window ``window`` of ``name`` at once, never past ``limit``.

        Returns how many were counted: ``wanted`` while that many are left, else all that are left
        (0 when the window is full). One conditional ``$inc`` in the common case; the window's first
        caller inserts it; only a window with fewer than ``wanted`` uses left costs a read of its count
        and a second conditional ``$inc``.
        """
        key = f"{name}:{window}"
        wanted = min(wanted, limit)
        if wanted <= 0:
            return 0
        if await self._increment(key, limit, wanted):
            return wanted
        try:
            await self._rates.insert_one(
                {"_id": key, "count": wanted, "purge_at": datetime.fromtimestamp(purge_at, UTC)}
            )
        except DuplicateKeyError:
            pass  # another replica opened the window first, or fewer than ``wanted`` are left
        else:
            return wanted
        if wanted == 1:  # the window is open: count against what is there
            return 1 if await self._increment(key, limit, 1) else 0
        # Fewer than ``wanted`` may be left: read how many and take them. Each failed $inc takes one
        # more off ``wanted``, so the loop ends however the count moves under it.
        while wanted > 0:
            doc = await self._rates.find_one({"_id": key}, {"count": 1})
            wanted = min(wanted, limit - int(doc["count"]) if doc is not None else wanted)
            if wanted > 0 and await self._increment(key, limit, wanted):
                return wanted
            wanted -= 1
        return 0

    async def _increment(self, key: str, limit: int, by: int) -> bool:
        doc = await self._rates.find_one_and_update(
            {"_id": key, "count": {"$lte": limit - by}}, {"$inc": {"count": by}}
        )
        return doc is not None

    async def give_back(self, name: str, window: int) -> None:
        """Uncount one use of window ``window`` of ``name`` (one that turned out not to count)."""
        key = f"{name}:{window}"
        await self._rates.update_one({"_id": key, "count": {"$gt": 0}}, {"$inc": {"count": -1}})
