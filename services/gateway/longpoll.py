"""``GET /api/login/status``: the long-poll fallback for browsers that cannot hold a WebSocket.

A poll registers with the hub like a socket does, reads the current state once (ticket checked by the
qrcode service; on the gateway that issued the scene, from what it knows, as a subscribe does: see
:class:`services.gateway.store.IssuedHere`), then waits on this gateway's own event feed, not on
Mongo, until the state moves past what the browser already knows or ``wait`` runs out. Answers
(DESIGN §2): 202 pending/scanned, 200 confirmed, 410 cancelled, 408 expired, 404 unknown; the body
always names the state.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.store import FINAL_STATES, IssuedHere, Subscription, visible_state
from services.gateway.ws import Hub
from shared.bus import Caller
from shared.messages import GetSceneStatus, SceneId

VisibleState = Literal["pending", "scanned", "confirmed", "cancelled", "expired"]

HTTP_STATUS: dict[str, int] = {
    "pending": 202,
    "scanned": 202,
    "confirmed": 200,
    "cancelled": 410,
    "expired": 408,
}
ERRORS: dict[str, tuple[str, str]] = {
    "cancelled": ("scene_cancelled", "the login was cancelled"),
    "expired": ("scene_expired", "the login code has expired"),
}
# A cancel's reason the browser is told in so many words (security review M4).
REASON_MESSAGES = {
    "not_me": "the login was cancelled: the phone's user said it was not them who asked (不是我)",
}


class StatusQuery(BaseModel):
    """The query string of a status poll (the ticket is a header, never a parameter)."""

    model_config = ConfigDict(extra="ignore")

    scene: SceneId
    wait: int = Field(default=0, ge=0, le=3600)  # seconds; capped by the gateway's maximum
    since: VisibleState | None = None  # the last state this browser saw


def status_body(scene: str, state: str, reason: str | None = None) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body that report ``state`` (``cancelled`` with its ``reason``)."""
    body: dict[str, Any] = {"scene": scene, "state": state}
    if state == "cancelled" and reason:
        body["reason"] = reason
    if state in ERRORS:
        code, message = ERRORS[state]
        if state == "cancelled" and reason in REASON_MESSAGES:
            message = REASON_MESSAGES[reason]
        body["error"] = {"code": code, "message": message}
    return HTTP_STATUS[state], body


class StatusPoller:
    """Waits for a scene's next state on this gateway's hub."""

    def __init__(
        self,
        hub: Hub,
        bus: Caller,
        *,
        max_wait: float,
        issued: IssuedHere | None = None,
    ) -> None:
        self._hub = hub
        self._bus = bus
        self.max_wait = max_wait
        # Scenes this gateway issued: a poll of one needs no qrcode.status while the bus is up.
        self._issued = issued

    async def poll(self, scene: str, ticket_hash: str, *, wait: float, since: str | None = None) -> str:
        """The state to report: at once when it differs from ``since`` (or is final), else at the
        first change within ``wait`` seconds, else the unchanged state.

        Raises the qrcode service's errors (``ticket_invalid``, ``scene_not_found``) as RemoteError.
        """
        state, _ = await self.poll_status(scene, ticket_hash, wait=wait, since=since)
        return state

    async def poll_status(
        self, scene: str, ticket_hash: str, *, wait: float, since: str | None = None
    ) -> tuple[str, str | None]:
        """:meth:`poll`, and why a ``cancelled`` scene was cancelled (None when not said)."""
        changes: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()

        async def send(message: dict[str, Any]) -> None:
            changes.put_nowait((str(message["state"]), message.get("reason")))

        async def close() -> None:
            return None

        sub = Subscription(scene, send, close)
        self._hub.store.add(sub)  # before reading, so no change slips between the read and the wait
        try:
            known = self._issued.status(scene, ticket_hash) if self._issued else None
            if known is not None:  # issued here, and every event since has reached this gateway
                current, reason = known, None
            else:
                status = await self._bus.call(GetSceneStatus(scene=scene, ticket_hash=ticket_hash))
                current, reason = status.state, status.reason
            await self._hub.deliver(sub, sub.verify(current, reason))
            seen = changes.get_nowait() if not changes.empty() else (visible_state(current), sub.reason)
            state = seen[0]
            unchanged = since is None or since == state
            if state in FINAL_STATES or not unchanged or wait <= 0 or self._hub.closing.is_set():
                return seen
            return await self._next(changes, seen, min(float(wait), self.max_wait))
        finally:
            self._hub.store.remove(sub)

    async def _next(
        self, changes: asyncio.Queue[tuple[str, str | None]], state: tuple[str, str | None], timeout: float
    ) -> tuple[str, str | None]:
        getter = asyncio.ensure_future(changes.get())
        closing = asyncio.ensure_future(self._hub.closing.wait())
        try:
            await asyncio.wait({getter, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (getter, closing):
                task.cancel()
            await asyncio.gather(getter, closing, return_exceptions=True)
        if getter.done() and not getter.cancelled():
            state = getter.result()
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:  # two changes in a row: report the newest
                state = changes.get_nowait()
        return state
