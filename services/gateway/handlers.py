"""Bus handlers of the gateway: scene and login events become WebSocket pushes on this instance."""

from __future__ import annotations

from services.gateway.ws import Hub
from shared.messages import (
    Event,
    LoginConfirmed,
    SceneCancelled,
    SceneConfirmed,
    SceneExpired,
    SceneScanned,
)

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

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def on_event(self, event: Event) -> None:
        state = PUSHED_EVENTS.get(type(event))
        scene = getattr(event, "scene", None)
        if state is not None and isinstance(scene, str):
            await self._hub.push(scene, state)
