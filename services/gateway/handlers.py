"""Bus handlers of the gateway: scene and login events become WebSocket pushes on this instance."""

from __future__ import annotations

import asyncio

from services.gateway.store import IssuedHere
from services.gateway.ws import Hub
from shared.bus import Caller
from shared.errors import RemoteError
from shared.logging import get_logger
from shared.messages import (
    Event,
    GetSceneStatus,
    LoginConfirmed,
    SceneCancelled,
    SceneConfirmed,
    SceneExpired,
    SceneScanned,
)

log = get_logger(__name__)

# Events the gateway pushes, and the state each announces. "confirmed" comes twice, from the qrcode
# service (at once) and from the session service (after it): the first one is pushed, once.
PUSHED_EVENTS: dict[type[Event], str] = {
    SceneScanned: "scanned",
    SceneConfirmed: "confirmed",
    LoginConfirmed: "confirmed",
    SceneCancelled: "cancelled",
    SceneExpired: "expired",
}


class PushHandlers:
    """Turns events into pushes (every gateway instance gets every event on its own queue)."""

    def __init__(self, hub: Hub, issued: IssuedHere | None = None) -> None:
        self._hub = hub
        self._issued = issued

    async def on_event(self, event: Event) -> None:
        state = PUSHED_EVENTS.get(type(event))
        scene = getattr(event, "scene", None)
        reason = event.reason if isinstance(event, SceneCancelled) else None
        if state is not None and isinstance(scene, str):
            if self._issued is not None:  # before the push: a subscribe from now on sees it too
                self._issued.saw(scene, state)
            await self._hub.push(scene, state, reason)


class CatchUp:
    """After the bus comes back: re-read every scene this instance watches and push what changed.

    Pushes sent while this gateway's broadcast queue was gone (it dies with the connection) never
    arrive; Mongo, behind ``qrcode.status``, is the truth. Subscriptions only move forward, so a
    state already pushed is not sent again.
    """

    def __init__(self, hub: Hub, bus: Caller, *, concurrency: int = 16) -> None:
        self._hub = hub
        self._bus = bus
        self._limit = asyncio.Semaphore(concurrency)

    async def __call__(self) -> None:
        scenes = list(self._hub.store.by_scene)
        results = await asyncio.gather(*(self._one(scene) for scene in scenes))
        log.info("pushes_caught_up", scenes=len(scenes), unavailable=results.count(False))

    async def _one(self, scene: str) -> bool:
        async with self._limit:
            try:
                status = await self._bus.call(GetSceneStatus(scene=scene))
            except RemoteError as exc:
                log.info("catch_up_skipped", scene=scene, error_code=exc.error_code)
                return False
            await self._hub.push(scene, status.state, status.reason)
            return True
