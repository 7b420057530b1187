"""What services see of the bus: :class:`Bus`, and the narrow protocols handlers depend on."""

from __future__ import annotations

import abc
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from shared.bus.acl import Gate
from shared.bus.adapter import (
    UNAVAILABLE_CODES,
    Adapter,
    E,
    EventHandler,
    R,
    Routes,
    RpcHandler,
    log,
)
from shared.bus.metrics import BusMetrics, InFlight
from shared.errors import RemoteError, RpcTimeout, ServiceError
from shared.messages import Event, Request
from shared.sealing import Sealer

ReconnectHook = Callable[[], Awaitable[Any]]


class EventUndeliverable(ServiceError):
    """No queue is bound for an event that must arrive."""

    code = "event_undeliverable"
    default_message = "nobody is subscribed to this event"


class Publisher(Protocol):
    """What handlers need to announce events (a :class:`Bus`, or a recording fake in unit tests)."""

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None: ...


class Caller(Protocol):
    """What handlers need to call other services (a :class:`Bus`, or a fake in unit tests)."""

    async def call(self, request: Request[R], *, timeout: float | None = None) -> R: ...


def call_outcome(exc: BaseException | None) -> str:
    """The ``outcome`` label of an RPC call: ok, timeout, unavailable (a dependency is down) or error."""
    if exc is None:
        return "ok"
    if isinstance(exc, RpcTimeout):
        return "timeout"
    if isinstance(exc, RemoteError) and exc.error_code in UNAVAILABLE_CODES:
        return "unavailable"
    return "error"


class Bus(abc.ABC):
    """What services see of the bus. One instance per service instance."""

    def __init__(
        self,
        service: str,
        sealer: Sealer,
        *,
        rpc_timeout: float = 3.0,
        metrics: BusMetrics | None = None,
        user: str | None = None,
    ) -> None:
        self.service = service
        self.instance = f"{service}.{uuid.uuid4().hex[:10]}"
        self.rpc_timeout = rpc_timeout
        self.user = user  # the broker user this instance sends as (shared.bus.acl)
        self._adapter = Adapter(service, sealer, Gate(user))
        self.metrics = metrics
        self.draining = False
        self._inflight = InFlight()
        self._reconnect_hooks: list[ReconnectHook] = []
        if metrics is not None:
            self._inflight.gauge = metrics.inflight

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and declare this service's exchange."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming, cancel whatever is still being handled (requeued), then disconnect."""

    @abc.abstractmethod
    async def _cancel_consumers(self) -> None:
        """Tell the transport to stop delivering to this instance (RPC replies excepted)."""

    def on_reconnected(self, hook: ReconnectHook) -> None:
        """Run ``hook`` each time the bus is back after an outage (consumers restored).

        Broadcasts sent while this instance was cut off never reach it: a hook catches up from the
        source of truth (the gateway re-reads the scenes its browsers watch, caches re-fetch tokens).
        """
        self._reconnect_hooks.append(hook)

    async def _run_reconnect_hooks(self) -> None:
        for hook in self._reconnect_hooks:
            try:
                await hook()
            except Exception:  # one failing hook must not keep the others from catching up
                log.exception("reconnect_hook_failed", hook=getattr(hook, "__qualname__", str(hook)))

    async def stop_consuming(self) -> None:
        """Cancel this instance's consumers so the broker gives new work to other replicas.

        Replies to this instance's own RPC calls keep arriving: in-flight requests still need them.
        Idempotent.
        """
        if self.draining:
            return
        self.draining = True
        if self.metrics is not None:
            self.metrics.draining.set(1)
        await self._cancel_consumers()
        log.info("bus_consumers_cancelled", instance=self.instance, inflight=len(self._inflight))

    async def drain(self, timeout: float) -> int:
        """Stop consuming, then give deliveries being handled up to ``timeout`` seconds to finish.

        Handlers still running at the deadline are cancelled and their messages requeued for another
        replica. Returns how many were cancelled.
        """
        deadline = time.monotonic() + timeout
        await self.stop_consuming()
        cancelled = await self._inflight.finish(deadline - time.monotonic())
        if cancelled:
            log.warning("bus_drain_deadline_passed", instance=self.instance, requeued=cancelled)
        else:
            log.info("bus_drained", instance=self.instance)
        return cancelled

    @property
    def inflight(self) -> int:
        """How many deliveries this instance is handling now."""
        return len(self._inflight)

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while the transport is usable, RPC reply path included (for ``/readyz``)."""

    @property
    def session(self) -> int | None:
        """Which unbroken stretch of connection this is: a number that changes each time the bus
        reconnects, None while it is down. Broadcasts received under one number are all of them."""
        return 0 if self.connected else None

    @abc.abstractmethod
    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        """Publish ``event`` on this service's exchange.

        The broker confirms every publish but a hint's (``Event.HINT``, not awaited). With
        ``must_arrive`` (never a hint then) an event no queue is bound for
        raises :class:`EventUndeliverable`; otherwise it is dropped with a log line. While the bus
        is down it raises :class:`~shared.errors.BusUnavailable` at once.
        """

    async def call(self, request: Request[R], *, timeout: float | None = None) -> R:
        """Send ``request`` to its service and wait for the reply.

        Raises :class:`RemoteError` with the remote code, :class:`RpcTimeout`, :class:`RpcUnavailable`
        (nobody serves it) or :class:`~shared.errors.BusUnavailable` (the bus is down, or the
        connection the request went out on was lost: its reply can no longer arrive).
        """
        started = time.monotonic()
        failure: BaseException | None = None
        try:
            return await self._call(request, timeout or self.rpc_timeout)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if self.metrics is not None and not isinstance(failure, asyncio.CancelledError):
                self.metrics.called(request.TYPE, call_outcome(failure), time.monotonic() - started)

    @abc.abstractmethod
    async def _call(self, request: Request[R], timeout: float) -> R:
        """The transport's half of :meth:`call`."""

    @abc.abstractmethod
    async def subscribe(self, event: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        """Consume ``event`` from the durable queue ``<service>.<event type>`` shared by replicas."""

    @abc.abstractmethod
    async def subscribe_broadcast(self, events: Sequence[type[Event]], handler: EventHandler) -> None:
        """Consume ``events`` on a queue of this instance alone (every replica sees every event)."""

    @abc.abstractmethod
    async def serve(self, handlers: Mapping[type[Request[Any]], RpcHandler]) -> None:
        """Answer RPC requests for this service."""

    def _check_publisher(self, event: Event) -> None:
        if self.service not in type(event).PUBLISHERS:
            raise ValueError(f"{self.service} does not publish {event.TYPE}")

    @staticmethod
    def _routes(handlers: Mapping[type[Request[Any]], RpcHandler]) -> Routes:
        return {cls.TYPE: (cls, handler) for cls, handler in handlers.items()}
