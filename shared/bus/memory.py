"""The bus inside one process (``memory://``): the same semantics as RabbitMQ, for ``run all`` and tests."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.bus.adapter import (
    Delivery,
    E,
    EventHandler,
    Outcome,
    R,
    Routes,
    RpcHandler,
    current_correlation_id,
    log,
)
from shared.bus.interface import Bus, EventUndeliverable
from shared.bus.metrics import BusMetrics
from shared.bus.topology import DELIVERY_LIMIT
from shared.errors import BusUnavailable, RpcTimeout, RpcUnavailable
from shared.messages import Event, Message, Request, encode, new_id
from shared.sealing import Sealer

# A delivery whose handler found a dependency down is offered again after this pause.
RETRY_PAUSE_SECONDS = 0.5

@dataclass
class _MemoryQueue:
    name: str
    consumers: list[Callable[[Delivery], Awaitable[Outcome]]] = field(default_factory=list)
    cycle: Any = None
    dead: list[Delivery] = field(default_factory=list)

    def next_consumer(self) -> Callable[[Delivery], Awaitable[Outcome]] | None:
        if not self.consumers:
            return None
        if self.cycle is None:
            self.cycle = itertools.cycle(list(self.consumers))
        return next(self.cycle)


class MemoryBroker:
    """Exchanges, queues and RPC servers of one process; share one between the services' buses."""

    def __init__(self) -> None:
        self.bindings: dict[tuple[str, str], list[_MemoryQueue]] = {}  # (exchange, key) -> queues
        self.queues: dict[str, _MemoryQueue] = {}
        self.servers: dict[str, list[Callable[[Delivery], Awaitable[tuple[str, int, bytes]]]]] = {}
        self._server_cycles: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.published: list[tuple[str, Delivery]] = []  # (exchange, delivery), for tests

    def queue(self, name: str) -> _MemoryQueue:
        return self.queues.setdefault(name, _MemoryQueue(name))

    def bind(self, queue: _MemoryQueue, exchange: str, key: str) -> None:
        bound = self.bindings.setdefault((exchange, key), [])
        if queue not in bound:
            bound.append(queue)

    def route(self, exchange: str, delivery: Delivery) -> int:
        """Deliver to every bound queue (one consumer each); returns how many queues took it."""
        self.published.append((exchange, delivery))
        queues = self.bindings.get((exchange, delivery.type), [])
        for queue in queues:
            self._spawn(self._deliver(queue, delivery))
        return len(queues)

    async def _deliver(self, queue: _MemoryQueue, delivery: Delivery) -> None:
        consumer = queue.next_consumer()
        if consumer is None:
            return  # like a queue without consumers: the message would wait; here nobody will come
        outcome = await consumer(delivery)
        again = Delivery(**{**_fields(delivery), "redelivered": True, "attempt": delivery.attempt + 1})
        if outcome is Outcome.REJECT or (outcome is not Outcome.ACK and again.attempt >= DELIVERY_LIMIT):
            queue.dead.append(delivery)
        elif outcome is Outcome.REQUEUE:
            await self._deliver(queue, again)
        elif outcome is Outcome.RETRY:
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            await self._deliver(queue, again)

    def add_server(
        self, service: str, server: Callable[[Delivery], Awaitable[tuple[str, int, bytes]]]
    ) -> None:
        self.servers.setdefault(service, []).append(server)
        self._server_cycles[service] = itertools.cycle(list(self.servers[service]))

    def remove_consumers_of(self, owner: object) -> None:
        for queue in self.queues.values():
            queue.consumers = [c for c in queue.consumers if getattr(c, "bus", None) is not owner]
            queue.cycle = None
        for service, servers in list(self.servers.items()):
            kept = [s for s in servers if getattr(s, "bus", None) is not owner]
            self.servers[service] = kept
            self._server_cycles[service] = itertools.cycle(kept) if kept else None

    def server_for(self, service: str) -> Callable[[Delivery], Awaitable[tuple[str, int, bytes]]] | None:
        cycle = self._server_cycles.get(service)
        return next(cycle) if cycle is not None else None

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every delivery in flight has been handled (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _fields(delivery: Delivery) -> dict[str, Any]:
    return {f: getattr(delivery, f) for f in Delivery.__slots__}


class MemoryBus(Bus):
    """The bus inside one process; messages are still encoded, so schemas are exercised."""

    def __init__(
        self,
        broker: MemoryBroker,
        service: str,
        sealer: Sealer,
        *,
        rpc_timeout: float = 3.0,
        metrics: BusMetrics | None = None,
    ) -> None:
        # In one process the sender is known for sure: the table of shared.bus.acl is enforced.
        super().__init__(service, sealer, rpc_timeout=rpc_timeout, metrics=metrics, user=f"wxlogin-{service}")
        self.broker = broker
        self._serving: set[asyncio.Future[tuple[str, int, bytes]]] = set()
        self._started = False
        self._event_handlers: dict[int, EventHandler] = {}

    async def start(self) -> None:
        self._started = True

    async def _cancel_consumers(self) -> None:
        self.broker.remove_consumers_of(self)

    async def close(self) -> None:
        await self.stop_consuming()
        # In one process there is no broker to requeue to: whatever is unfinished now is lost with it.
        await self._inflight.finish(0)
        self._started = False

    @property
    def connected(self) -> bool:
        return self._started

    def _delivery(self, message: Message) -> Delivery:
        message_id = new_id()
        return Delivery(
            type=message.TYPE,
            version=message.VERSION,
            body=encode(message, self._adapter.sealer, message_id=message_id),
            message_id=message_id,
            correlation_id=current_correlation_id(),
            app_id=self.service,
            user_id=self.user,
        )

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        self._check_publisher(event)
        if not self._started:
            raise BusUnavailable(event.TYPE, "bus not started")
        taken = self.broker.route(f"{self.service}.events", self._delivery(event))
        if not taken:
            if must_arrive:
                raise EventUndeliverable(f"no queue is bound for {event.TYPE}")
            log.debug("event_unroutable", type=event.TYPE)

    async def _call(self, request: Request[R], timeout: float) -> R:
        server = self.broker.server_for(request.service())
        if server is None:
            raise RpcUnavailable(request.TYPE)
        started = time.monotonic()
        # The server's handler runs as its own task and is never cancelled by the caller giving up,
        # as over RabbitMQ: cancelling a handler inside a PyMongo call can wedge the client.
        delivery = self._delivery(request)
        handling = asyncio.ensure_future(server(delivery))
        self._serving.add(handling)
        handling.add_done_callback(self._serving.discard)
        try:
            type_, _version, body = await asyncio.wait_for(asyncio.shield(handling), timeout)
        except TimeoutError:
            raise RpcTimeout(request.TYPE, timeout) from None
        log.debug("rpc_done", type=request.TYPE, ms=round((time.monotonic() - started) * 1000, 2))
        return self._adapter.reply_from(request, type_, body, message_id=delivery.message_id or "")

    async def subscribe(self, event: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        queue = self.broker.queue(f"{self.service}.{event.TYPE}")
        for publisher in event.PUBLISHERS:
            self.broker.bind(queue, f"{publisher}.events", event.TYPE)
        self._add_consumer(queue, handler)

    async def subscribe_broadcast(self, events: Sequence[type[Event]], handler: EventHandler) -> None:
        queue = self.broker.queue(f"{self.instance}.{uuid.uuid4().hex[:6]}")
        for event in events:
            for publisher in event.PUBLISHERS:
                self.broker.bind(queue, f"{publisher}.events", event.TYPE)
        self._add_consumer(queue, handler)

    def _add_consumer(self, queue: _MemoryQueue, handler: EventHandler) -> None:
        key = len(self._event_handlers)
        self._event_handlers[key] = handler
        queue.consumers.append(_BoundConsumer(self, key))
        queue.cycle = None

    async def _consume(self, key: int, delivery: Delivery) -> Outcome:
        with self._inflight.track():
            outcome = await self._adapter.handle_event(delivery, self._event_handlers[key])
        if self.metrics is not None:
            self.metrics.delivered("event", outcome.value)
        return outcome

    async def serve(self, handlers: Mapping[type[Request[Any]], RpcHandler]) -> None:
        routes = self._routes(handlers)
        self.broker.add_server(self.service, _BoundServer(self, routes))

    async def _answer(
        self, routes: Routes, delivery: Delivery
    ) -> tuple[str, int, bytes]:
        with self._inflight.track():
            answer = await self._adapter.handle_request(delivery, routes)
        if self.metrics is not None:
            self.metrics.delivered("rpc", "ack")
        return answer


@dataclass(frozen=True)
class _BoundConsumer:
    """A queue consumer owned by one bus (so ``close`` can remove exactly its consumers)."""

    bus: MemoryBus
    key: int

    async def __call__(self, delivery: Delivery) -> Outcome:
        return await self.bus._consume(self.key, delivery)


@dataclass(frozen=True)
class _BoundServer:
    bus: MemoryBus
    routes: Routes

    async def __call__(self, delivery: Delivery) -> tuple[str, int, bytes]:
        return await self.bus._answer(self.routes, delivery)
