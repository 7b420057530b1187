"""Expiry announcements survive a bus outage: a scene expired while ``scene.expired`` could not be
published is announced by a later sweep, once, whichever replica sweeps."""

from __future__ import annotations

import asyncio

from services.qrcode.handlers import ANNOUNCE_RETRY_AFTER
from shared.messages import IssueScene, SceneExpired
from shared.mongo import EmbeddedMongo
from tests.scenes import (
    FakeClock,
    RecordingPublisher,
    new_ticket,
    scene_database,
    scene_handlers,
    ticket_hash,
)


async def test_an_expiry_whose_announcement_failed_is_announced_once_by_a_later_sweep(
    mongo_server: EmbeddedMongo,
) -> None:
    async with scene_database(mongo_server) as db:
        clock = FakeClock()
        bus = RecordingPublisher()
        first = scene_handlers(db, clock, bus, ttl=30)
        issued = [
            await first.issue(IssueScene(ticket_hash=ticket_hash(new_ticket()), ip="192.0.2.1"))
            for _ in range(3)
        ]
        bus.down = True  # the broker is lost before the sweep
        clock.advance(31)
        assert await first.sweep() == 3
        assert bus.scenes_of(SceneExpired) == []  # all three publishes failed

        up_a, up_b = RecordingPublisher(), RecordingPublisher()
        replicas = [scene_handlers(db, clock, up_a, ttl=30), scene_handlers(db, clock, up_b, ttl=30)]
        await asyncio.gather(*(r.sweep() for r in replicas))
        assert up_a.events == up_b.events == []  # too soon: the failed replica may still be retrying

        clock.advance(ANNOUNCE_RETRY_AFTER + 1)
        for _ in range(3):
            await asyncio.gather(*(r.sweep() for r in replicas))
        announced = up_a.scenes_of(SceneExpired) + up_b.scenes_of(SceneExpired)
        assert sorted(announced) == sorted(s.scene for s in issued)
