"""A scene transition whose connection dropped after the write was sent is settled by reading the scene
back: it landed → the same answer and announcement as if MongoDB had replied; it did not → 503
store_unavailable; somebody else's write → the usual refusal. Hand-written fakes, no MongoDB."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure, ServerSelectionTimeoutError

from services.qrcode.errors import AlreadyConfirmed
from services.qrcode.handlers import SceneHandlers, SceneSettings
from services.qrcode.metrics import SceneMetrics
from services.qrcode.pool import IssuedCode
from services.qrcode.store import ANY_CLIENT, AnyClient, Scene
from shared.errors import StoreUnavailable
from shared.messages import (
    CancelScene,
    ConfirmScene,
    Event,
    RedeemScene,
    ScanScene,
    SceneCancelled,
    SceneConfirmed,
    SceneScanned,
    SceneState,
)

NOW = 1_800_000_000.0
SCENE = "s" * 32
TICKET = hashlib.sha256(b"ticket").hexdigest()
PHONE = hashlib.sha256(b"phone").hexdigest()
OTHER_PHONE = hashlib.sha256(b"other phone").hexdigest()


class DroppingScenes:
    """Scenes in a dict; the next transition can drop its connection before or after its write lands,
    and reads can fail too (MongoDB gone)."""

    def __init__(self, *scenes: Scene) -> None:
        self.scenes = {scene.id: scene for scene in scenes}
        self.drop_after_write: Exception | None = None
        self.drop_before_write: Exception | None = None
        self.reads_fail = False
        self.writes = 0

    async def insert(self, scene: Scene) -> None:
        self.scenes[scene.id] = scene

    async def get(self, scene_id: str) -> Scene | None:
        if self.reads_fail:
            raise ServerSelectionTimeoutError("127.0.0.1:27017: [Errno 111] Connection refused")
        return self.scenes.get(scene_id)

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
        purpose: str | None = None,
        client_id: str | AnyClient | None = ANY_CLIENT,
    ) -> Scene | None:
        before, self.drop_before_write = self.drop_before_write, None
        if before is not None:
            raise before
        scene = self.scenes.get(scene_id)
        matches = (
            scene is not None
            and scene.state in from_states
            and (not unexpired or scene.expires_at > now)
            and ticket_hash in (None, scene.ticket_hash)
            and scan_hash in (None, scene.scan_hash)
            and (not identified or scene.user_id is not None)
            and purpose in (None, scene.purpose)
            and client_id in (ANY_CLIENT, scene.client_id)
        )
        if not matches or scene is None:
            return None
        known = {f.name for f in dataclasses.fields(Scene)}
        fields = {k: v for k, v in (set_fields or {}).items() if k in known}
        scene = dataclasses.replace(scene, state=to_state, updated_at=now, **fields)
        self.scenes[scene_id] = scene
        self.writes += 1
        after, self.drop_after_write = self.drop_after_write, None
        if after is not None:
            raise after
        return scene

    async def overdue(self, now: float, *, limit: int = 200) -> list[str]:
        return []

    async def mark_announced(self, scene_id: str) -> None:
        return None

    async def claim_unannounced(self, now: float, *, older_than: float, limit: int = 50) -> list[str]:
        return []


class NoCodes:
    """Nothing here issues scenes."""

    async def claim(self) -> IssuedCode | None:
        return None

    async def give_back(self, code: IssuedCode) -> None:
        return None

    async def render_now(self) -> IssuedCode:
        raise AssertionError("not used")


class Announcements:
    """A publisher that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> int:
        return sum(isinstance(e, kind) for e in self.events)


class Clock:
    """A clock that moves a millisecond per reading, as requests one after another would."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def scene(state: SceneState, *, scan_hash: str | None = PHONE, user_id: str | None = None) -> Scene:
    return Scene(
        SCENE, state, TICKET, "203.0.113.7", "test", NOW - 10, NOW + 100, user_id, NOW - 5, scan_hash
    )


def handlers(store: DroppingScenes) -> tuple[SceneHandlers, Announcements]:
    publisher = Announcements()
    built = SceneHandlers(
        store,
        NoCodes(),
        publisher,
        SceneSettings(scene_ttl=120.0, site_name="test"),
        metrics=SceneMetrics(CollectorRegistry()),
        clock=Clock(),
    )
    return built, publisher


RESETS = [
    AutoReconnect("connection reset by peer"),
    NetworkTimeout("timed out"),
]


@pytest.mark.parametrize("reset", RESETS, ids=lambda e: type(e).__name__)
async def test_a_confirm_that_landed_before_the_connection_dropped_answers_confirmed(
    reset: Exception,
) -> None:
    store = DroppingScenes(scene("scanned"))
    store.drop_after_write = reset
    qrcode, publisher = handlers(store)

    status = await qrcode.confirm(ConfirmScene(scene=SCENE, scan_hash=PHONE, user_id="u_1"))

    assert (status.state, status.user_id) == ("confirmed", "u_1")
    assert store.scenes[SCENE].state == "confirmed" and store.writes == 1
    assert publisher.of(SceneConfirmed) == 1  # the browser is pushed exactly as after a clean write


async def test_a_confirm_that_did_not_land_answers_store_unavailable_and_a_retry_confirms_once() -> None:
    store = DroppingScenes(scene("scanned"))
    store.drop_before_write = AutoReconnect("connection reset by peer")
    qrcode, publisher = handlers(store)
    request = ConfirmScene(scene=SCENE, scan_hash=PHONE, user_id="u_1")

    with pytest.raises(StoreUnavailable) as raised:
        await qrcode.confirm(request)
    assert raised.value.code == "store_unavailable" and raised.value.retry_after
    assert store.scenes[SCENE].state == "scanned" and publisher.of(SceneConfirmed) == 0

    assert (await qrcode.confirm(request)).state == "confirmed"
    assert store.writes == 1 and publisher.of(SceneConfirmed) == 1


async def test_a_confirm_whose_read_back_fails_too_answers_store_unavailable() -> None:
    store = DroppingScenes(scene("scanned"))
    store.drop_after_write = AutoReconnect("connection reset by peer")
    store.reads_fail = True
    qrcode, publisher = handlers(store)

    with pytest.raises(StoreUnavailable):
        await qrcode.confirm(ConfirmScene(scene=SCENE, scan_hash=PHONE, user_id="u_1"))
    assert publisher.of(SceneConfirmed) == 0  # unknown outcome: nothing announced; a retry settles it


async def test_a_dropped_confirm_finding_a_twin_s_confirm_is_refused_as_already_confirmed() -> None:
    # The scene was confirmed by another request of the same phone (its own stamp), then this request's
    # write was refused and its connection dropped: not this request's success to announce again.
    twin = dataclasses.replace(scene("confirmed", user_id="u_1"), updated_at=NOW - 1)
    store = DroppingScenes(twin)
    store.drop_before_write = AutoReconnect("connection reset by peer")
    qrcode, publisher = handlers(store)

    with pytest.raises(AlreadyConfirmed):
        await qrcode.confirm(ConfirmScene(scene=SCENE, scan_hash=PHONE, user_id="u_1"))
    assert publisher.of(SceneConfirmed) == 0


async def test_a_confirm_for_another_user_is_never_taken_for_this_one() -> None:
    store = DroppingScenes(scene("scanned"))
    store.drop_after_write = AutoReconnect("connection reset by peer")
    qrcode, _ = handlers(store)
    await qrcode.confirm(ConfirmScene(scene=SCENE, scan_hash=PHONE, user_id="u_1"))

    store.drop_before_write = AutoReconnect("connection reset by peer")
    with pytest.raises(AlreadyConfirmed):
        await qrcode.confirm(ConfirmScene(scene=SCENE, scan_hash=PHONE, user_id="u_2"))
    assert store.scenes[SCENE].user_id == "u_1"


async def test_a_scan_and_a_cancel_that_landed_before_the_drop_answer_as_usual() -> None:
    store = DroppingScenes(scene("pending", scan_hash=None))
    store.drop_after_write = AutoReconnect("connection reset by peer")
    qrcode, publisher = handlers(store)

    info = await qrcode.scan(ScanScene(scene=SCENE, scan_hash=PHONE, ip="198.51.100.1"))
    assert info.site == "test" and publisher.of(SceneScanned) == 1

    store.drop_after_write = NetworkTimeout("timed out")
    assert (await qrcode.cancel(CancelScene(scene=SCENE, scan_hash=PHONE))).state == "cancelled"
    assert publisher.of(SceneCancelled) == 1


async def test_a_scan_that_did_not_land_is_store_unavailable_not_already_scanned() -> None:
    store = DroppingScenes(scene("pending", scan_hash=None))
    store.drop_before_write = AutoReconnect("connection reset by peer")
    qrcode, _ = handlers(store)

    with pytest.raises(StoreUnavailable):
        await qrcode.scan(ScanScene(scene=SCENE, scan_hash=OTHER_PHONE, ip="198.51.100.1"))
    assert store.scenes[SCENE].state == "pending"


async def test_a_redeem_that_landed_before_the_drop_hands_out_the_user() -> None:
    store = DroppingScenes(scene("confirmed", user_id="u_1"))
    store.drop_after_write = AutoReconnect("connection reset by peer")
    qrcode, _ = handlers(store)

    redeemed = await qrcode.redeem(RedeemScene(scene=SCENE, ticket_hash=TICKET))

    assert redeemed.user_id == "u_1" and store.scenes[SCENE].state == "redeemed" and store.writes == 1


async def test_an_error_that_proves_nothing_was_written_is_not_read_back() -> None:
    store = DroppingScenes(scene("scanned"))
    store.drop_before_write = OperationFailure("bad update", code=9)
    qrcode, _ = handlers(store)

    with pytest.raises(OperationFailure):  # the bus adapter answers any PyMongoError store_unavailable
        await qrcode.confirm(ConfirmScene(scene=SCENE, scan_hash=PHONE, user_id="u_1"))
