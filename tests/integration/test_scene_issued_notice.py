"""``scene.issued`` is published only where it is asked for (``WXLOGIN_ANNOUNCE_SCENE_ISSUED``): nothing
of ours consumes it, so by default an issue costs no bus message, while a deployment that listens for
it gets one notice per scene, naming the scene and its expiry. Either way the scene is stored and can
be scanned."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.messages import IssueScene, ScanScene, SceneIssued, SceneScanned
from shared.mongo import EmbeddedMongo
from tests.scenes import (
    FakeClock,
    RecordingPublisher,
    new_ticket,
    scene_database,
    scene_handlers,
    ticket_hash,
)


def test_the_notice_is_off_unless_configured() -> None:
    assert Settings().announce_scene_issued is False
    assert Settings(announce_scene_issued=True).announce_scene_issued is True


@pytest.mark.parametrize("announce", [False, True])
async def test_an_issue_announces_its_scene_only_when_asked(
    mongo_server: EmbeddedMongo, announce: bool
) -> None:
    async with scene_database(mongo_server) as db:
        publisher = RecordingPublisher()
        handlers = scene_handlers(db, FakeClock(), publisher, announce_issued=announce)
        issued = await handlers.issue(IssueScene(ticket_hash=ticket_hash(new_ticket()), ip="198.51.100.7"))

        notices = [e for e in publisher.events if isinstance(e, SceneIssued)]
        if announce:
            assert [(n.scene, n.expires_at) for n in notices] == [(issued.scene, issued.expires_at)]
        else:
            assert publisher.events == []
        # The scene was stored all the same: a phone can scan it.
        scanned = await handlers.scan(ScanScene(scene=issued.scene, scan_hash=ticket_hash(new_ticket())))
        assert scanned.site == "Test Site"
        assert publisher.scenes_of(SceneScanned) == [issued.scene]


async def test_without_the_notice_an_issue_needs_no_broker(mongo_server: EmbeddedMongo) -> None:
    """The bus down (its publish raising) does not fail an issue that announces nothing."""
    async with scene_database(mongo_server) as db:
        publisher = RecordingPublisher()
        publisher.down = True
        handlers = scene_handlers(db, FakeClock(), publisher)
        issued = await handlers.issue(IssueScene(ticket_hash=ticket_hash(new_ticket()), ip="198.51.100.7"))
        assert issued.scene
