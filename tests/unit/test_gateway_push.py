"""Events become pushes: ``confirmed`` is announced twice (qrcode's ``scene.confirmed`` at once, then the
session service's ``login.confirmed``), and whichever comes first reaches the browser, exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.gateway.handlers import CatchUp, PushHandlers
from services.gateway.store import Subscription, SubscriptionStore
from services.gateway.ws import Hub, WsMetrics
from shared.errors import RemoteError
from shared.messages import Event, LoginConfirmed, SceneConfirmed, SceneScanned, SceneStatus

SCENE = "S" * 32


class Browser:
    """One subscribed socket: what it was sent, and whether the server closed it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def close(self) -> None:
        self.closed = True


def subscribed(hub: Hub) -> Browser:
    browser = Browser()
    sub = Subscription(SCENE, browser.send, browser.close)
    hub.store.add(sub)
    assert sub.offer(sub.verify("pending")) == "pending"
    return browser


@pytest.mark.parametrize(
    "events",
    [
        [SceneConfirmed(scene=SCENE), LoginConfirmed(scene=SCENE, user_id="u_1")],
        [LoginConfirmed(scene=SCENE, user_id="u_1"), SceneConfirmed(scene=SCENE)],
        [SceneConfirmed(scene=SCENE)],  # login.confirmed lost: the browser is told all the same
    ],
    ids=["qrcode-first", "session-first", "qrcode-only"],
)
async def test_the_first_confirmed_event_is_pushed_once_and_ends_the_socket(events: list[Event]) -> None:
    hub = Hub(SubscriptionStore(), WsMetrics(CollectorRegistry()))
    browser = subscribed(hub)
    handlers = PushHandlers(hub)

    await handlers.on_event(SceneScanned(scene=SCENE))
    for event in events:
        await handlers.on_event(event)

    assert [m["state"] for m in browser.sent] == ["scanned", "confirmed"]
    assert browser.closed and len(hub.store) == 0


class StatusReader:
    """``qrcode.status`` as the gateway sees it: the stored state of each scene, or an outage."""

    def __init__(self, states: dict[str, str], down: bool = False) -> None:
        self.states = states
        self.down = down

    async def call(self, request: Any, *, timeout: float | None = None) -> Any:
        if self.down:
            raise RemoteError("store_unavailable", "database down", retry_after=2)
        state = self.states[request.scene]
        return SceneStatus(scene=request.scene, state=state, expires_at=datetime.now(UTC))


async def test_after_the_bus_comes_back_a_confirm_whose_push_was_missed_reaches_the_browser() -> None:
    hub = Hub(SubscriptionStore(), WsMetrics(CollectorRegistry()))
    browser = subscribed(hub)
    # Confirmed while this gateway's broadcast queue was gone: the events never came.
    await CatchUp(hub, StatusReader({SCENE: "confirmed"}))()
    assert [m["state"] for m in browser.sent] == ["confirmed"]
    assert browser.closed and len(hub.store) == 0


async def test_catching_up_sends_nothing_new_when_nothing_changed_and_survives_an_outage() -> None:
    hub = Hub(SubscriptionStore(), WsMetrics(CollectorRegistry()))
    browser = subscribed(hub)
    await CatchUp(hub, StatusReader({SCENE: "pending"}))()
    await CatchUp(hub, StatusReader({}, down=True))()
    assert browser.sent == [] and not browser.closed and len(hub.store) == 1
