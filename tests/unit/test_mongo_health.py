"""The MongoDB health monitor: readiness reads its cached verdict (a probe never runs a MongoDB
operation), each ping is bounded by PyMongo's own timeout, and stopping never cancels a ping in flight
(a cancelled PyMongo call can wedge the client on Python 3.11; see shared.mongo)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from pymongo import _csot
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from shared.mongo import MongoHealth, maybe_applied


class ScriptedDatabase:
    """Answers ``command("ping")`` as told: up, down, or slowly; records every call."""

    def __init__(self) -> None:
        self.down = False
        self.delay = 0.0
        self.calls = 0
        self.timeouts: list[float | None] = []
        self.cancelled = 0
        self.finished = 0

    async def command(self, name: str) -> dict[str, Any]:
        assert name == "ping"
        self.calls += 1
        self.timeouts.append(_csot.get_timeout())
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.down:
            raise AutoReconnect("127.0.0.1:27017: [Errno 111] Connection refused")
        return {"ok": 1.0}


def monitor(db: ScriptedDatabase, **kwargs: Any) -> MongoHealth:
    return MongoHealth(cast(AsyncDatabase[dict[str, Any]], db), **kwargs)


async def test_readiness_reads_the_last_verdict_without_touching_mongodb() -> None:
    db = ScriptedDatabase()
    health = monitor(db)
    for _ in range(100):
        assert await health.check() is True
    assert db.calls == 0

    db.down = True
    assert await health.ping_once() is False
    assert await health.check() is False and health.last_error.startswith("AutoReconnect")
    db.down = False
    assert await health.ping_once() is True
    assert await health.check() is True


async def test_each_ping_is_bounded_by_pymongo_timeout_not_a_cancel() -> None:
    db = ScriptedDatabase()
    health = monitor(db, timeout=0.7)
    await health.ping_once()
    assert db.timeouts == [0.7]


async def test_the_monitor_pings_on_its_beat_and_follows_an_outage() -> None:
    db = ScriptedDatabase()
    health = monitor(db, interval=0.02)
    health.start()
    db.down = True
    await asyncio.sleep(0.1)
    assert health.up is False
    db.down = False
    await asyncio.sleep(0.1)
    assert health.up is True
    await health.stop()
    assert db.calls >= 5 and db.cancelled == 0


async def test_stopping_lets_a_ping_in_flight_finish_instead_of_cancelling_it() -> None:
    db = ScriptedDatabase()
    db.delay = 0.2
    health = monitor(db, interval=1.0, timeout=1.0)
    health.start()
    await asyncio.sleep(0.05)  # the first ping is in flight
    await health.stop()
    assert (db.calls, db.finished, db.cancelled) == (1, 1, 0)


def test_only_errors_that_may_hide_a_landed_write_are_settled_by_reading_back() -> None:
    from pymongo.errors import (
        DuplicateKeyError,
        NetworkTimeout,
        OperationFailure,
        ServerSelectionTimeoutError,
    )

    assert maybe_applied(AutoReconnect("reset"))
    assert maybe_applied(NetworkTimeout("timed out"))
    assert maybe_applied(ServerSelectionTimeoutError("no server"))  # harmless: the read-back tells
    assert not maybe_applied(DuplicateKeyError("dup"))
    assert not maybe_applied(OperationFailure("bad", code=2))
