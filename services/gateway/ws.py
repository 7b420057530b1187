"""The browser's WebSocket: subscribe to a scene with its ticket, get the current state, then pushes.

Protocol (DESIGN §5): the client sends ``{"type":"subscribe","scene","ticket"}``; the server answers
``{"type":"state","scene","state"}`` at once and on every change, or ``{"type":"error","code"}`` and
closes. An error the browser should wait out (a dependency down, a busy limit: HTTP 503 or 429) also
carries ``retry_after`` (seconds), as an HTTP answer would carry ``Retry-After``, and closes with 1013
"try again later". The server closes the socket after a final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.gateway.clientip import ClientIpResolver
from services.gateway.errors import OriginNotAllowed, status_for
from services.gateway.jsonbody import loads
from services.gateway.limits import GatewayLimits
from services.gateway.store import IssuedHere, Subscription, SubscriptionStore
from shared.bus import Caller
from shared.errors import RemoteError
from shared.logging import get_logger
from shared.messages import GetSceneStatus, SceneId

log = get_logger(__name__)

MAX_FRAME = 1024  # a subscribe frame is about 120 bytes; a bigger one closes the socket (1009)
SUBSCRIBE_TIMEOUT = 10.0  # a socket that never subscribes is closed
HEARTBEAT = 25.0
RETRY_STATUSES = frozenset({429, 503})  # refusals a browser waits out and subscribes again
DEFAULT_RETRY_AFTER = 2.0  # seconds, for a retryable refusal that came without a hint


def ticket_hash(ticket: str) -> str:
    """What the qrcode service stores and compares instead of the ticket."""
    return hashlib.sha256(ticket.encode()).hexdigest()


class SubscribeFrame(BaseModel):
    """The one frame a browser sends."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(pattern="^subscribe$")
    scene: SceneId
    ticket: str = Field(min_length=16, max_length=128)


class WsMetrics:
    """Gauges and counters of the push side."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge("wxlogin_gateway_websockets", "Open WebSockets on this gateway", registry=registry)
        self.pushes = Counter("wxlogin_gateway_pushes", "State messages pushed", ["state"], registry=registry)
        self.refused = Counter(
            "wxlogin_gateway_subscribe_refused", "Refused subscriptions", ["code"], registry=registry
        )


class Hub:
    """Pushes state changes to the subscriptions of this gateway instance (sockets and long-polls)."""

    def __init__(self, store: SubscriptionStore, metrics: WsMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self.closing = asyncio.Event()

    async def close(self, *_: object) -> None:
        """Shutting down: long-polls answer now with what they know instead of being cut."""
        self.closing.set()

    async def push(self, scene: str, state: str, reason: str | None = None) -> None:
        """Offer ``state`` (and, for ``cancelled``, its reason) to everything on this instance that
        watches ``scene``."""
        for sub in self.store.watching(scene):
            await self.deliver(sub, state, reason)

    async def deliver(self, sub: Subscription, state: str, reason: str | None = None) -> None:
        """Send ``state`` to one subscription if it is newer than what it has; close it when final.

        ``cancelled`` goes with the reason when one is known (``not_me``: the browser says why)."""
        to_send = sub.offer(state, reason)
        if to_send is None:
            return
        message: dict[str, Any] = {"type": "state", "scene": sub.scene, "state": to_send}
        if to_send == "cancelled" and sub.reason:
            message["reason"] = sub.reason
        try:
            await sub.send(message)
            self.metrics.pushes.labels(to_send).inc()
        except (ConnectionError, RuntimeError):
            log.debug("push_failed", scene=sub.scene)
        if sub.finished:
            self.store.remove(sub)
            await sub.close()


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """Exact match against the allow-list (``*`` allows any, for development only).

    Browsers serialise an Origin as lowercase ``scheme://host[:port]`` with no default port, path,
    userinfo or trailing dot, so anything else (``null``, ``HTTPS://…``, ``…example.com.``) is either
    not a browser or not a page we trust, and byte-for-byte comparison is the whole check.
    """
    if "*" in allowed:
        return True
    return origin is not None and origin in allowed


def request_origin_allowed(request: web.BaseRequest, allowed: list[str]) -> bool:
    """The request carries exactly one Origin header and it is allowed."""
    origins = request.headers.getall("Origin", [])
    return len(origins) == 1 and origin_allowed(origins[0], allowed)


class SocketEndpoint:
    """``GET /api/login/ws``."""

    def __init__(
        self,
        hub: Hub,
        bus: Caller,
        allowed_origins: list[str] | Callable[[], list[str]],
        *,
        limits: GatewayLimits | None = None,
        client_ip: ClientIpResolver | None = None,
        issued: IssuedHere | None = None,
    ) -> None:
        self._hub = hub
        self._bus = bus
        # Scenes this gateway issued: their subscribe needs no qrcode.status while the bus is up.
        self._issued = issued
        self._allowed = allowed_origins
        self._limits = limits
        self._client_ip = client_ip or ClientIpResolver()
        # Every open socket of this instance, so shutdown can tell each browser to go elsewhere.
        self._open: set[web.WebSocketResponse] = set()
        self._going_away = False

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """Check Origin and the per-IP connect limit (403/429 before upgrading), then serve."""
        allowed = self._allowed() if callable(self._allowed) else self._allowed
        if not request_origin_allowed(request, allowed):
            raise OriginNotAllowed()
        if self._limits is not None:
            self._limits.check("ws", self._client_ip.for_request(request))
        # compress=False: browsers offer permessage-deflate, and accepting it costs each socket its own
        # zlib contexts (several times the memory of an idle socket) for frames of a few bytes.
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, compress=False, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        if self._going_away:  # this gateway is stopping: the client reconnects (to another one)
            await self._going(ws)
            return ws
        metrics = self._hub.metrics
        metrics.open.inc()
        self._open.add(ws)
        sub: Subscription | None = None
        try:
            sub = await self._serve(ws)
        except Exception:
            # After the upgrade an HTTP error answer would be written into the socket's frames: log
            # the bug and close the socket as a server error instead.
            log.exception("websocket_crashed")
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=WSCloseCode.INTERNAL_ERROR)
        finally:
            self._open.discard(ws)
            metrics.open.dec()
            if sub is not None:
                self._hub.store.remove(sub)
        return ws

    async def close_all(self) -> None:
        """Shutdown: close every socket with 1001 "going away" and refuse new ones the same way.

        Browsers reconnect (through the load balancer, to another gateway) and subscribe again; the
        first message there is the scene's current state, so nothing that happened is missed.
        """
        self._going_away = True
        sockets = list(self._open)
        await asyncio.gather(*(self._going(ws) for ws in sockets))
        log.info("websockets_closed", count=len(sockets), code=int(WSCloseCode.GOING_AWAY))

    @staticmethod
    async def _going(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def _serve(self, ws: web.WebSocketResponse) -> Subscription | None:
        sub: Subscription | None = None
        while not ws.closed:
            try:
                msg = await ws.receive(timeout=None if sub else SUBSCRIBE_TIMEOUT)
            except TimeoutError:
                await self._refuse(ws, "subscribe_timeout")
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            if msg.type != WSMsgType.TEXT:
                await self._refuse(ws, "invalid_request")
                break
            if sub is not None:
                await self._refuse(ws, "already_subscribed")
                break
            frame = _parse(msg.data)
            if frame is None:
                await self._refuse(ws, "invalid_request")
                break
            sub = await self._subscribe(ws, frame)
            if sub is None:
                break
        return sub

    async def _subscribe(self, ws: web.WebSocketResponse, frame: SubscribeFrame) -> Subscription | None:
        async def close() -> None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=1000, message=b"final state")

        sub = Subscription(frame.scene, ws.send_json, close)
        self._hub.store.add(sub)  # before reading, so no change slips between read and registration
        hashed = ticket_hash(frame.ticket)
        known = self._issued.status(frame.scene, hashed) if self._issued else None
        if known is not None:  # issued here, and every event since has reached this gateway
            await self._hub.deliver(sub, sub.verify(known))
            return sub
        try:
            status = await self._bus.call(GetSceneStatus(scene=frame.scene, ticket_hash=hashed))
        except RemoteError as exc:
            self._hub.store.remove(sub)
            await self._refuse(ws, exc.error_code, exc.retry_after)
            return None
        await self._hub.deliver(sub, sub.verify(status.state, status.reason))
        return sub

    async def _refuse(self, ws: web.WebSocketResponse, code: str, retry_after: float | None = None) -> None:
        self._hub.metrics.refused.labels(code).inc()
        frame: dict[str, Any] = {"type": "error", "code": code}
        close_code = 1008 if code in {"ticket_invalid", "invalid_request"} else 1000
        if status_for(code) in RETRY_STATUSES:
            # The same hint an HTTP 503/429 gives in Retry-After: the SDK subscribes again after it.
            hint = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER
            frame["retry_after"] = max(1, round(hint))
            close_code = WSCloseCode.TRY_AGAIN_LATER
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(frame)
            await ws.close(code=close_code)


def _parse(data: Any) -> SubscribeFrame | None:
    try:
        return SubscribeFrame.model_validate(loads(data))
    except (ValueError, ValidationError, TypeError):
        return None
