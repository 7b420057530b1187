"""The long-poll waits on the hub, not on Mongo: it reads once, then answers at the first change, at
its deadline, or at shutdown; it never reports a state before the ticket is checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.gateway.longpoll import StatusPoller, status_body
from services.gateway.store import SubscriptionStore
from services.gateway.ws import Hub, WsMetrics
from shared.errors import RemoteError
from shared.messages import GetSceneStatus, SceneStatus

SCENE = "S" * 32
HASH = "a" * 64


class FakeQrcode:
    """Answers ``qrcode.status`` from a dict; counts reads; can hold the reply until told."""

    def __init__(self, state: str = "pending", *, refuse: str | None = None) -> None:
        self.state = state
        self.refuse = refuse
        self.reads = 0
        self.release = asyncio.Event()
        self.release.set()

    async def call(self, request: Any, *, timeout: float | None = None) -> Any:
        assert isinstance(request, GetSceneStatus)
        self.reads += 1
        await self.release.wait()
        if self.refuse:
            raise RemoteError(self.refuse)
        return SceneStatus(scene=request.scene, state=self.state, expires_at=datetime.now(UTC))  # type: ignore[arg-type]


def make(state: str = "pending", **kwargs: Any) -> tuple[Hub, FakeQrcode, StatusPoller]:
    hub = Hub(SubscriptionStore(), WsMetrics(CollectorRegistry()))
    qrcode = FakeQrcode(state, **kwargs)
    return hub, qrcode, StatusPoller(hub, qrcode, max_wait=2.0)


async def test_a_poll_answers_at_the_first_pushed_change_after_one_read() -> None:
    hub, qrcode, poller = make()
    waiting = asyncio.create_task(poller.poll(SCENE, HASH, wait=2))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await hub.push(SCENE, "scanned")
    assert await asyncio.wait_for(waiting, 1) == "scanned"
    assert qrcode.reads == 1
    assert len(hub.store) == 0


async def test_two_changes_in_a_row_report_the_newest() -> None:
    hub, _, poller = make()
    waiting = asyncio.create_task(poller.poll(SCENE, HASH, wait=2))
    await asyncio.sleep(0.05)
    await hub.push(SCENE, "scanned")
    await hub.push(SCENE, "confirmed")
    assert await asyncio.wait_for(waiting, 1) in ("scanned", "confirmed")


async def test_a_change_during_the_read_is_not_lost() -> None:
    hub, qrcode, poller = make("pending")
    qrcode.release.clear()  # the status read is in flight...
    waiting = asyncio.create_task(poller.poll(SCENE, HASH, wait=2, since="pending"))
    await asyncio.sleep(0.05)
    await hub.push(SCENE, "scanned")  # ...when the scan is pushed
    qrcode.release.set()
    assert await asyncio.wait_for(waiting, 1) == "scanned"


async def test_with_nothing_new_the_poll_answers_at_its_deadline_capped_by_the_gateway() -> None:
    _, _, poller = make()
    poller.max_wait = 0.2
    assert await asyncio.wait_for(poller.poll(SCENE, HASH, wait=3600), 1) == "pending"


async def test_a_final_or_newer_state_answers_at_once() -> None:
    for state, since in (
        ("confirmed", None),
        ("expired", None),
        ("cancelled", "pending"),
        ("scanned", "pending"),
    ):
        _, _, poller = make("redeemed" if state == "confirmed" else state)
        assert await asyncio.wait_for(poller.poll(SCENE, HASH, wait=30, since=since), 0.5) == state


async def test_shutdown_answers_waiting_polls() -> None:
    hub, _, poller = make()
    waiting = asyncio.create_task(poller.poll(SCENE, HASH, wait=30))
    await asyncio.sleep(0.05)
    await hub.close()
    assert await asyncio.wait_for(waiting, 1) == "pending"


async def test_a_refused_ticket_reports_nothing_and_leaves_nothing_behind() -> None:
    hub, _, poller = make(refuse="ticket_invalid")
    pushed = asyncio.create_task(hub.push(SCENE, "scanned"))
    with pytest.raises(RemoteError) as refused:
        await poller.poll(SCENE, HASH, wait=1)
    await pushed
    assert refused.value.error_code == "ticket_invalid"
    assert len(hub.store) == 0


@pytest.mark.parametrize(
    ("state", "status", "error"),
    [
        ("pending", 202, None),
        ("scanned", 202, None),
        ("confirmed", 200, None),
        ("cancelled", 410, "scene_cancelled"),
        ("expired", 408, "scene_expired"),
    ],
)
def test_each_state_has_its_http_status(state: str, status: int, error: str | None) -> None:
    code, body = status_body(SCENE, state)
    assert (code, body["state"], body.get("error", {}).get("code")) == (status, state, error)
