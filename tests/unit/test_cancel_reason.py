"""Why the phone cancelled reaches the browser (security review M4: the 不是我 button): the cancel event's
reason goes with the pushed ``cancelled``, a late subscriber and a long-poll read it from the stored
scene, and a plain 取消 stays a plain cancel."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from services.gateway.handlers import CatchUp, PushHandlers
from services.gateway.longpoll import StatusPoller, status_body
from services.gateway.store import Subscription, SubscriptionStore
from services.gateway.ws import Hub, WsMetrics
from shared.messages import SceneCancelled, SceneScanned, SceneStatus

SCENE = "S" * 32
HASH = "a" * 64


class Browser:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def close(self) -> None:
        self.closed = True


class StoredScene:
    """``qrcode.status``: the stored state and cancel reason."""

    def __init__(self, state: str, reason: str | None = None) -> None:
        self.state, self.reason = state, reason

    async def call(self, request: Any, *, timeout: float | None = None) -> Any:
        return SceneStatus(
            scene=request.scene,
            state=self.state,  # type: ignore[arg-type]
            expires_at=datetime.now(UTC),
            reason=self.reason,
        )


def hub_with_browser() -> tuple[Hub, Browser, Subscription]:
    hub = Hub(SubscriptionStore(), WsMetrics(CollectorRegistry()))
    browser = Browser()
    sub = Subscription(SCENE, browser.send, browser.close)
    hub.store.add(sub)
    return hub, browser, sub


async def test_not_me_is_pushed_with_the_cancelled_state() -> None:
    hub, browser, sub = hub_with_browser()
    await hub.deliver(sub, sub.verify("pending"))
    handlers = PushHandlers(hub)
    await handlers.on_event(SceneScanned(scene=SCENE))
    await handlers.on_event(SceneCancelled(scene=SCENE, reason="not_me"))
    assert browser.sent[-1] == {"type": "state", "scene": SCENE, "state": "cancelled", "reason": "not_me"}
    assert "reason" not in browser.sent[-2]  # only a cancel has one
    assert browser.closed


async def test_a_cancel_event_of_an_earlier_version_is_pushed_without_a_reason() -> None:
    hub, browser, sub = hub_with_browser()
    await hub.deliver(sub, sub.verify("scanned"))
    await PushHandlers(hub).on_event(SceneCancelled(scene=SCENE))
    assert browser.sent[-1] == {"type": "state", "scene": SCENE, "state": "cancelled"}


async def test_a_subscriber_that_comes_after_the_cancel_reads_the_reason_from_the_scene() -> None:
    hub, browser, sub = hub_with_browser()
    status = await StoredScene("cancelled", "not_me").call(type("Q", (), {"scene": SCENE})())
    await hub.deliver(sub, sub.verify(status.state, status.reason))
    assert browser.sent == [{"type": "state", "scene": SCENE, "state": "cancelled", "reason": "not_me"}]


async def test_catching_up_after_an_outage_carries_the_reason() -> None:
    hub, browser, sub = hub_with_browser()
    await hub.deliver(sub, sub.verify("scanned"))
    await CatchUp(hub, StoredScene("cancelled", "declined"))()
    assert browser.sent[-1]["reason"] == "declined"


async def test_a_long_poll_answers_410_with_the_reason_whether_pushed_or_read() -> None:
    hub = Hub(SubscriptionStore(), WsMetrics(CollectorRegistry()))
    waiting = StatusPoller(hub, StoredScene("scanned"), max_wait=2.0)
    polled = asyncio.create_task(waiting.poll_status(SCENE, HASH, wait=2, since="scanned"))
    await asyncio.sleep(0.05)
    await PushHandlers(hub).on_event(SceneCancelled(scene=SCENE, reason="not_me"))
    assert await asyncio.wait_for(polled, 1) == ("cancelled", "not_me")

    late = StatusPoller(hub, StoredScene("cancelled", "not_me"), max_wait=2.0)
    assert await late.poll_status(SCENE, HASH, wait=2, since="scanned") == ("cancelled", "not_me")
    assert await late.poll(SCENE, HASH, wait=2) == "cancelled"

    status, body = status_body(SCENE, "cancelled", "not_me")
    assert (status, body["reason"], body["error"]["code"]) == (410, "not_me", "scene_cancelled")
    assert "不是我" in body["error"]["message"]
    status, body = status_body(SCENE, "cancelled", "declined")
    assert body["reason"] == "declined" and body["error"]["message"] == "the login was cancelled"
    assert "reason" not in status_body(SCENE, "cancelled")[1]
