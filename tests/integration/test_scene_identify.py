"""``qrcode.identify`` and a confirm without a user, on the real store (nx-27017): the user a scan's code
identified is kept on the scanned scene, only for the phone that scanned, and a confirm without a user
takes it (or is refused with ``scene_not_identified``, so the session service looks the user up)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.qrcode import errors
from services.qrcode.handlers import SceneHandlers
from shared.messages import ConfirmScene, IdentifyScene, IssueScene, ScanScene, SceneConfirmed
from shared.mongo import EmbeddedMongo
from tests.scenes import (
    FakeClock,
    RecordingPublisher,
    new_ticket,
    scene_database,
    scene_handlers,
    ticket_hash,
)


class Scanned:
    """A scene scanned by one phone, with the handlers and what they published."""

    def __init__(self, handlers: SceneHandlers, publisher: RecordingPublisher, scene: str, scan_hash: str):
        self.handlers, self.publisher, self.scene, self.scan_hash = handlers, publisher, scene, scan_hash


@pytest.fixture
async def scanned(mongo_server: EmbeddedMongo) -> AsyncIterator[Scanned]:
    async with scene_database(mongo_server) as db:
        publisher = RecordingPublisher()
        handlers = scene_handlers(db, FakeClock(), publisher)
        issued = await handlers.issue(IssueScene(ticket_hash=ticket_hash(new_ticket()), ip="198.51.100.7"))
        scan_hash = ticket_hash(new_ticket())
        await handlers.scan(ScanScene(scene=issued.scene, scan_hash=scan_hash))
        yield Scanned(handlers, publisher, issued.scene, scan_hash)


async def test_a_confirm_without_a_user_takes_the_one_the_scan_identified(scanned: Scanned) -> None:
    h = scanned.handlers
    noted = await h.identify(IdentifyScene(scene=scanned.scene, scan_hash=scanned.scan_hash, user_id="u_42"))
    assert noted.state == "scanned"

    confirmed = await h.confirm(ConfirmScene(scene=scanned.scene, scan_hash=scanned.scan_hash))
    assert (confirmed.state, confirmed.user_id) == ("confirmed", "u_42")
    assert scanned.publisher.scenes_of(SceneConfirmed) == [scanned.scene]
    with pytest.raises(errors.AlreadyConfirmed):
        await h.confirm(ConfirmScene(scene=scanned.scene, scan_hash=scanned.scan_hash))


async def test_a_confirm_without_a_user_on_an_unidentified_scan_is_refused_and_changes_nothing(
    scanned: Scanned,
) -> None:
    h = scanned.handlers
    with pytest.raises(errors.NotIdentified):
        await h.confirm(ConfirmScene(scene=scanned.scene, scan_hash=scanned.scan_hash))
    assert scanned.publisher.scenes_of(SceneConfirmed) == []
    # The session service then looks the user up and confirms for them.
    confirmed = await h.confirm(ConfirmScene(scene=scanned.scene, scan_hash=scanned.scan_hash, user_id="u_7"))
    assert confirmed.user_id == "u_7"


async def test_only_the_phone_that_scanned_can_be_identified_or_confirm_without_a_user(
    scanned: Scanned,
) -> None:
    h = scanned.handlers
    other = ticket_hash(new_ticket())
    with pytest.raises(errors.ScanTokenMismatch):
        await h.identify(IdentifyScene(scene=scanned.scene, scan_hash=other, user_id="u_evil"))
    await h.identify(IdentifyScene(scene=scanned.scene, scan_hash=scanned.scan_hash, user_id="u_42"))
    with pytest.raises(errors.ScanTokenMismatch):
        await h.confirm(ConfirmScene(scene=scanned.scene, scan_hash=other))
    assert (await h.confirm(ConfirmScene(scene=scanned.scene, scan_hash=scanned.scan_hash))).user_id == "u_42"
