"""The webhook service's collections: ``webhook_outbox`` (every message, its delivery state),
``webhook_deliveries`` (one line per attempt) and ``webhook_endpoints`` (disabled or not).

Times are epoch seconds; ``purge_at`` is a BSON date written at insert for the TTL indexes (see
shared.mongo). An outbox document's ``_id`` is its ``webhook-id``, derived from the endpoint and
what happened (services.webhook.events.message_id): recording the same event twice inserts nothing.
A message goes ``pending → delivered`` or ``pending → failed``; a replay puts it back to
``pending``. Claiming one for an attempt is one conditional ``find_one_and_update`` that takes a
lease, so two replicas never send it at once and a dead replica's claim lapses.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from shared.mongo import Index
from shared.runtime import Database

OUTBOX = "webhook_outbox"
DELIVERIES = "webhook_deliveries"
ENDPOINTS = "webhook_endpoints"

INDEXES = [
    Index(OUTBOX, [("purge_at", 1)], expire_after_seconds=0, name="webhook_outbox_ttl"),
    # the head of each endpoint's queue: its oldest pending message
    Index(OUTBOX, [("ep", 1), ("state", 1), ("seq", 1)], name="webhook_outbox_queue"),
    # the oldest due message (metrics), and replays by time
    Index(OUTBOX, [("state", 1), ("next_at", 1)], name="webhook_outbox_due"),
    Index(OUTBOX, [("ep", 1), ("created_at", 1)], name="webhook_outbox_created"),
    Index(DELIVERIES, [("purge_at", 1)], expire_after_seconds=0, name="webhook_deliveries_ttl"),
    Index(DELIVERIES, [("ep", 1), ("at", -1)], name="webhook_deliveries_endpoint"),
    Index(DELIVERIES, [("message_id", 1)], name="webhook_deliveries_message"),
]

MessageState = Literal["pending", "delivered", "failed"]


def endpoint_key(client_id: str, endpoint_id: str) -> str:
    """How an endpoint is named in the collections: ``<client_id>/<endpoint id>``."""
    return f"{client_id}/{endpoint_id}"


def _date(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One message for one endpoint, as stored."""

    id: str  # the webhook-id
    client_id: str
    endpoint_id: str
    type: str
    body: str  # the exact JSON that is signed and sent
    source: str
    seq: float  # queue order within the endpoint (when it was recorded, or replayed)
    created_at: float
    state: MessageState = "pending"
    attempts: int = 0
    next_at: float = 0.0
    lease_until: float = 0.0
    lease_owner: str = ""
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None
    replays: int = 0

    @property
    def endpoint(self) -> str:
        """The endpoint key (:func:`endpoint_key`)."""
        return endpoint_key(self.client_id, self.endpoint_id)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> OutboxItem:
        """The message stored as ``doc``."""
        return cls(
            id=str(doc["_id"]),
            client_id=str(doc["client_id"]),
            endpoint_id=str(doc["endpoint_id"]),
            type=str(doc["type"]),
            body=str(doc["body"]),
            source=str(doc.get("source", "")),
            seq=float(doc["seq"]),
            created_at=float(doc["created_at"]),
            state=cast(MessageState, str(doc.get("state", "pending"))),
            attempts=int(doc.get("attempts", 0)),
            next_at=float(doc.get("next_at", 0.0)),
            lease_until=float(doc.get("lease_until", 0.0)),
            lease_owner=str(doc.get("lease_owner", "")),
            last_status=doc.get("last_status"),
            last_error=doc.get("last_error"),
            delivered_at=doc.get("delivered_at"),
            replays=int(doc.get("replays", 0)),
        )

    def to_doc(self, *, keep_seconds: float) -> dict[str, Any]:
        """The document to insert; it is purged ``keep_seconds`` after it was recorded."""
        return {
            "_id": self.id,
            "ep": self.endpoint,
            "client_id": self.client_id,
            "endpoint_id": self.endpoint_id,
            "type": self.type,
            "body": self.body,
            "source": self.source,
            "seq": self.seq,
            "created_at": self.created_at,
            "state": self.state,
            "attempts": self.attempts,
            "next_at": self.next_at,
            "lease_until": self.lease_until,
            "lease_owner": self.lease_owner,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "delivered_at": self.delivered_at,
            "replays": self.replays,
            "purge_at": _date(self.created_at + keep_seconds),
        }

    def view(self) -> dict[str, Any]:
        """What the CLI and the admin route show of a message (its body included: it holds no secret)."""
        return {
            "message_id": self.id,
            "client_id": self.client_id,
            "endpoint": self.endpoint_id,
            "type": self.type,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "next_at": self.next_at if self.state == "pending" else None,
            "delivered_at": self.delivered_at,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "replays": self.replays,
        }


class OutboxStore:
    """``webhook_outbox``: the messages, and each endpoint's queue of pending ones."""

    def __init__(self, db: Database, *, keep_seconds: float) -> None:
        self._col = db[OUTBOX]
        self._keep = keep_seconds

    async def enqueue(self, item: OutboxItem) -> bool:
        """Record ``item``; False when it was recorded already (the same event again)."""
        try:
            await self._col.insert_one(item.to_doc(keep_seconds=self._keep))
        except DuplicateKeyError:
            return False
        return True

    async def get(self, message_id: str) -> OutboxItem | None:
        """The message with this ``webhook-id``."""
        doc = await self._col.find_one({"_id": message_id})
        return OutboxItem.from_doc(doc) if doc else None

    async def head(self, endpoint: str) -> OutboxItem | None:
        """The endpoint's oldest pending message: the only one that may be sent (in-order delivery)."""
        queue = await self.queue(endpoint, limit=1)
        return queue[0] if queue else None

    async def queue(self, endpoint: str, *, limit: int) -> list[OutboxItem]:
        """The endpoint's pending messages, oldest first (the head, then what waits behind it)."""
        cursor = self._col.find(
            {"ep": endpoint, "state": "pending"}, sort=[("seq", 1), ("_id", 1)], limit=limit
        )
        return [OutboxItem.from_doc(doc) async for doc in cursor]

    async def claim(self, message_id: str, *, owner: str, now: float, lease: float) -> OutboxItem | None:
        """Take the message for one attempt (one conditional update); None when it is not due, or
        another replica holds it. The attempt is counted now, so a crash mid-attempt counts too."""
        doc = await self._col.find_one_and_update(
            {
                "_id": message_id,
                "state": "pending",
                "next_at": {"$lte": now},
                "lease_until": {"$lte": now},
            },
            {"$set": {"lease_until": now + lease, "lease_owner": owner}, "$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER,
        )
        return OutboxItem.from_doc(doc) if doc else None

    async def delivered(self, message_id: str, *, now: float, status: int | None) -> None:
        """The receiver took it (2xx)."""
        await self._col.update_one(
            {"_id": message_id, "state": "pending"},
            {
                "$set": {
                    "state": "delivered",
                    "delivered_at": now,
                    "last_status": status,
                    "last_error": None,
                    "lease_until": 0.0,
                }
            },
        )

    async def retry_at(self, message_id: str, *, at: float, status: int | None, error: str | None) -> None:
        """Try again at ``at`` (the lease is dropped)."""
        await self._col.update_one(
            {"_id": message_id, "state": "pending"},
            {"$set": {"next_at": at, "lease_until": 0.0, "last_status": status, "last_error": error}},
        )

    async def failed(self, message_id: str, *, status: int | None, error: str | None) -> None:
        """No attempts left."""
        await self._col.update_one(
            {"_id": message_id, "state": "pending"},
            {"$set": {"state": "failed", "lease_until": 0.0, "last_status": status, "last_error": error}},
        )

    async def resume(self, endpoint: str, *, now: float) -> int:
        """An endpoint is enabled again: its pending messages are due now, with a fresh schedule."""
        result = await self._col.update_many(
            {"ep": endpoint, "state": "pending"},
            {"$set": {"next_at": now, "attempts": 0, "lease_until": 0.0}},
        )
        return int(result.modified_count)

    async def replay(self, items: Sequence[OutboxItem], *, now: float) -> int:
        """Queue ``items`` again, in their order, behind what is pending (same ``webhook-id``s)."""
        replayed = 0
        for index, item in enumerate(items):
            result = await self._col.update_one(
                {"_id": item.id, "state": {"$in": ["delivered", "failed"]}},
                {
                    "$set": {
                        "state": "pending",
                        "seq": now + index * 1e-6,
                        "next_at": now,
                        "attempts": 0,
                        "lease_until": 0.0,
                        "delivered_at": None,
                    },
                    "$inc": {"replays": 1},
                },
            )
            replayed += int(result.modified_count)
        return replayed

    async def in_range(self, endpoint: str, *, since: float, until: float, limit: int) -> list[OutboxItem]:
        """The endpoint's messages recorded in ``[since, until)``, oldest first."""
        cursor = self._col.find(
            {"ep": endpoint, "created_at": {"$gte": since, "$lt": until}}, sort=[("seq", 1)], limit=limit
        )
        return [OutboxItem.from_doc(doc) async for doc in cursor]

    async def oldest_due(self, now: float, *, skip: Collection[str] = ()) -> OutboxItem | None:
        """The longest-waiting pending message that is due (endpoints in ``skip`` left out)."""
        query: dict[str, Any] = {"state": "pending", "next_at": {"$lte": now}}
        if skip:
            query["ep"] = {"$nin": sorted(skip)}
        doc = await self._col.find_one(query, sort=[("created_at", 1)])
        return OutboxItem.from_doc(doc) if doc else None

    async def pending(self) -> int:
        """How many messages wait (due or not)."""
        return int(await self._col.count_documents({"state": "pending"}))


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One attempt, for the delivery log."""

    id: str
    message_id: str
    client_id: str
    endpoint_id: str
    type: str
    attempt: int
    at: float
    outcome: str  # delivered, failed (retried), failed_final, gone, refused
    status: int | None
    latency_ms: float
    error: str | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> DeliveryRecord:
        """The attempt stored as ``doc``."""
        return cls(
            id=str(doc["_id"]),
            message_id=str(doc["message_id"]),
            client_id=str(doc["client_id"]),
            endpoint_id=str(doc["endpoint_id"]),
            type=str(doc.get("type", "")),
            attempt=int(doc.get("attempt", 0)),
            at=float(doc["at"]),
            outcome=str(doc.get("outcome", "")),
            status=doc.get("status"),
            latency_ms=float(doc.get("latency_ms", 0.0)),
            error=doc.get("error"),
        )

    def to_doc(self, *, keep_seconds: float) -> dict[str, Any]:
        """The document to insert."""
        return {
            "_id": self.id,
            "message_id": self.message_id,
            "ep": endpoint_key(self.client_id, self.endpoint_id),
            "client_id": self.client_id,
            "endpoint_id": self.endpoint_id,
            "type": self.type,
            "attempt": self.attempt,
            "at": self.at,
            "outcome": self.outcome,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "purge_at": _date(self.at + keep_seconds),
        }

    def view(self) -> dict[str, Any]:
        """What the CLI and the admin route show."""
        return {
            "message_id": self.message_id,
            "client_id": self.client_id,
            "endpoint": self.endpoint_id,
            "type": self.type,
            "attempt": self.attempt,
            "at": self.at,
            "outcome": self.outcome,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


class DeliveryLog:
    """``webhook_deliveries``: every attempt, kept for the retention period."""

    def __init__(self, db: Database, *, keep_seconds: float) -> None:
        self._col = db[DELIVERIES]
        self._keep = keep_seconds

    async def record(self, record: DeliveryRecord) -> None:
        """Add one attempt."""
        await self._col.insert_one(record.to_doc(keep_seconds=self._keep))

    async def list(
        self,
        *,
        endpoints: Collection[str] | None = None,
        message_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Attempts, newest first; ``endpoints`` (keys) limits them to those endpoints."""
        conditions: list[dict[str, Any]] = []
        if endpoints is not None:
            conditions.append({"ep": {"$in": sorted(endpoints)}})
        if message_id is not None:
            conditions.append({"message_id": message_id})
        if since is not None:
            conditions.append({"at": {"$gte": since}})
        if until is not None:
            conditions.append({"at": {"$lt": until}})
        query: dict[str, Any] = {"$and": conditions} if conditions else {}
        cursor = self._col.find(query, sort=[("at", -1), ("attempt", -1)], limit=limit)
        return [DeliveryRecord.from_doc(doc) async for doc in cursor]


@dataclass(frozen=True, slots=True)
class EndpointState:
    """What the service decided about an endpoint (the clients file declares it)."""

    key: str
    disabled: bool = False
    reason: str | None = None  # gone (410), failing (a message ran out of attempts)
    changed_at: float = 0.0

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EndpointState:
        """The state stored as ``doc``."""
        return cls(
            key=str(doc["_id"]),
            disabled=bool(doc.get("disabled", False)),
            reason=doc.get("reason"),
            changed_at=float(doc.get("changed_at", 0.0)),
        )


class EndpointStates:
    """``webhook_endpoints``: which endpoints the service disabled (410, or failing) and when."""

    def __init__(self, db: Database) -> None:
        self._col = db[ENDPOINTS]

    async def get(self, key: str) -> EndpointState:
        """The endpoint's state (enabled when never recorded)."""
        doc = await self._col.find_one({"_id": key})
        return EndpointState.from_doc(doc) if doc else EndpointState(key)

    async def all(self) -> dict[str, EndpointState]:
        """Every recorded state, by endpoint key."""
        return {str(doc["_id"]): EndpointState.from_doc(doc) async for doc in self._col.find({})}

    async def set(self, key: str, *, disabled: bool, reason: str | None, now: float) -> bool:
        """Record the state; True when it changed."""
        fields = {"disabled": disabled, "reason": reason, "changed_at": now}
        result = await self._col.update_one({"_id": key, "disabled": {"$ne": disabled}}, {"$set": fields})
        if result.modified_count:
            return True
        if await self._col.find_one({"_id": key}) is not None:
            return False  # already in that state
        try:
            await self._col.insert_one({"_id": key, **fields})
        except DuplicateKeyError:
            return False  # another replica recorded it first
        return True
