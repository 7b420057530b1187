"""The message bus every service uses: events on per-service topic exchanges and JSON RPC.

Two transports share one interface (:class:`Bus`) and one adapter (:class:`_Adapter`), so handlers
behave the same in the embedded process and over RabbitMQ:

* :class:`AmqpBus` (aio-pika). Events go to the durable topic exchange ``<service>.events`` with the
  event type as routing key. ``subscribe`` consumes a durable shared queue ``<consumer>.<event type>``
  (work is split between replicas); ``subscribe_broadcast`` gives each instance its own exclusive
  auto-delete queue (every replica sees every event: the gateway's pushes, token broadcasts). RPC
  requests go to ``<service>.rpc`` on the default exchange and are answered over direct reply-to.
* :class:`MemoryBus` on a shared :class:`MemoryBroker`: the same semantics inside one process.

Properties on every message: ``type`` (message type), ``headers.v`` (schema version), ``message_id``,
``correlation_id`` (the trace id of the whole flow), ``timestamp``, ``app_id`` (sending service). An
RPC reply's ``correlation_id`` is the request's ``message_id`` (the JMS convention), its ``type`` is the
reply type or ``error``.

Ack policy, in one place:

* an event is acked after its handler returns (a :class:`ServiceError` counts as handled: the handler
  decided the outcome);
* an undecodable message, or one of unknown type/version, is rejected without requeue; it lands in
  the consumer's dead-letter queue ``<consumer>.dead``;
* a handler that raises anything else gets the message back once (requeue); the second failure
  dead-letters it;
* an RPC request is always acked once its reply (or error reply) is sent; retrying is the caller's
  call, bounded by its timeout, which is also the request's AMQP ``expiration``;
* shutting down (:meth:`Bus.drain`): consumers are cancelled first, so the broker sends new work to
  other replicas; a delivery that still arrives is requeued at once; deliveries being handled get
  until the deadline, then their handlers are cancelled and the messages requeued. Nothing is acked
  that was not handled, so a stopped replica never loses a message.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import functools
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol, TypeVar

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity, DeliveryError
from pamqp import commands as spec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.errors import (
    InternalError,
    InvalidRequest,
    RemoteError,
    RpcTimeout,
    RpcUnavailable,
    ServiceError,
)
from shared.logging import get_logger
from shared.messages import (
    Event,
    InvalidMessage,
    Message,
    Reply,
    Request,
    UnknownMessage,
    decode,
    decode_as,
    decode_error,
    encode,
    encode_error,
)
from shared.retry import connect_policy
from shared.sealing import Sealer

log = get_logger(__name__)

E = TypeVar("E", bound=Event)
R = TypeVar("R", bound=Reply)
EventHandler = Callable[[Any], Awaitable[None]]
RpcHandler = Callable[[Any], Awaitable[Reply]]

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


def current_correlation_id() -> str:
    """The trace id of the flow being handled, or a fresh one."""
    return _correlation.get() or uuid.uuid4().hex


def set_correlation_id(value: str | None) -> contextvars.Token[str | None]:
    """Make ``value`` the trace id for the current task (returns a token for ``reset``)."""
    return _correlation.set(value)


def reset_correlation_id(token: contextvars.Token[str | None]) -> None:
    """Undo :func:`set_correlation_id`."""
    _correlation.reset(token)


class EventUndeliverable(ServiceError):
    """No queue is bound for an event that must arrive."""

    code = "event_undeliverable"
    default_message = "nobody is subscribed to this event"


# --- transport-neutral delivery handling ----------------------------------------------------------


class Outcome(Enum):
    """What the transport does with a delivery after the adapter is done."""

    ACK = "ack"
    REJECT = "reject"  # dead-letter, never requeue
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message, stripped of its transport."""

    type: str
    version: int
    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    app_id: str | None = None
    redelivered: bool = False


def version_of(headers: Mapping[str, Any] | None) -> int:
    """``headers.v`` as an int (0 when absent or garbage, which no schema uses)."""
    try:
        return int((headers or {}).get("v", 0))
    except (TypeError, ValueError):
        return 0


class _Adapter:
    """Decodes deliveries, binds the log context, runs handlers, and decides acks and replies."""

    def __init__(self, service: str, sealer: Sealer) -> None:
        self.service = service
        self.sealer = sealer

    async def handle_event(self, delivery: Delivery, handler: EventHandler) -> Outcome:
        try:
            event = decode(delivery.type, delivery.version, delivery.body, self.sealer)
        except (UnknownMessage, InvalidMessage) as exc:
            log.warning("message_rejected", type=delivery.type, v=delivery.version, reason=str(exc)[:200])
            return Outcome.REJECT
        token = set_correlation_id(delivery.correlation_id)
        bound = structlog.contextvars.bind_contextvars(
            service=self.service, correlation_id=delivery.correlation_id, message=delivery.type
        )
        try:
            await handler(event)
        except ServiceError as exc:
            log.info("event_refused", type=delivery.type, error_code=exc.error_code, detail=exc.message)
        except Exception:
            log.exception("event_handler_failed", type=delivery.type, redelivered=delivery.redelivered)
            return Outcome.REJECT if delivery.redelivered else Outcome.REQUEUE
        finally:
            _correlation.reset(token)
            structlog.contextvars.reset_contextvars(**bound)
        return Outcome.ACK

    async def handle_request(
        self, delivery: Delivery, handlers: Mapping[str, tuple[type[Request[Any]], RpcHandler]]
    ) -> tuple[str, int, bytes]:
        """Run the handler; returns the reply's ``(type, version, body)``."""
        token = set_correlation_id(delivery.correlation_id)
        bound = structlog.contextvars.bind_contextvars(
            service=self.service, correlation_id=delivery.correlation_id, message=delivery.type
        )
        try:
            entry = handlers.get(delivery.type)
            if entry is None:
                raise InvalidRequest(f"{self.service} does not answer {delivery.type!r}")
            cls, handler = entry
            if delivery.version != cls.VERSION:
                raise InvalidRequest(f"{delivery.type} version {delivery.version} is not served")
            try:
                request = decode_as(cls, delivery.body, self.sealer)
            except InvalidMessage as exc:
                raise InvalidRequest(str(exc)) from None
            reply = await handler(request)
            return reply.TYPE, reply.VERSION, encode(reply, self.sealer)
        except ServiceError as exc:
            return "error", 1, encode_error(exc.to_wire())
        except Exception:
            log.exception("rpc_handler_failed", type=delivery.type)
            return "error", 1, encode_error(InternalError().to_wire())
        finally:
            _correlation.reset(token)
            structlog.contextvars.reset_contextvars(**bound)

    def reply_from(self, request: Request[R], type_: str, body: bytes) -> R:
        if type_ == "error":
            err = decode_error(body)
            raise RemoteError(err["code"], str(err.get("message", "")), retry_after=err.get("retry_after"))
        try:
            return decode_as(request.REPLY, body, self.sealer)
        except InvalidMessage as exc:
            log.error("rpc_reply_invalid", type=request.TYPE, reason=str(exc)[:200])
            raise RemoteError("internal", "malformed reply") from None


# --- shutdown and metrics -------------------------------------------------------------------------


class BusMetrics:
    """Prometheus metrics of one bus instance; every series carries the ``service`` label."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.inflight = Gauge(
            "wxlogin_bus_inflight", "Deliveries being handled now", ["service"], registry=registry
        ).labels(service)
        self.deliveries = Counter(
            "wxlogin_bus_deliveries",
            "Deliveries handled, by kind (event/rpc) and outcome (ack/reject/requeue)",
            ["service", "kind", "outcome"],
            registry=registry,
        )
        self.calls = Counter(
            "wxlogin_bus_rpc_calls",
            "RPC calls made, by method and outcome (ok/error/timeout/unavailable)",
            ["service", "method", "outcome"],
            registry=registry,
        )
        self.call_seconds = Histogram(
            "wxlogin_bus_rpc_call_seconds",
            "RPC round trip as the caller sees it",
            ["service", "method"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.draining = Gauge(
            "wxlogin_bus_draining", "1 once this instance stopped consuming", ["service"], registry=registry
        ).labels(service)

    def delivered(self, kind: str, outcome: str) -> None:
        """Count one delivery's outcome."""
        self.deliveries.labels(self.service, kind, outcome).inc()

    def called(self, method: str, outcome: str, seconds: float) -> None:
        """Count one RPC call and its duration."""
        self.calls.labels(self.service, method, outcome).inc()
        self.call_seconds.labels(self.service, method).observe(seconds)


class InFlight:
    """The handler tasks of deliveries being handled, so shutdown can wait for them (or cancel them)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.gauge: Gauge | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count the current task as in flight for the duration of the block."""
        task = asyncio.current_task()
        assert task is not None, "track() runs inside a task"
        self._tasks.add(task)
        if self.gauge is not None:
            self.gauge.inc()
        try:
            yield
        finally:
            self._tasks.discard(task)
            if self.gauge is not None:
                self.gauge.dec()

    async def finish(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the tracked tasks; cancel the rest. Returns how many were cancelled."""
        pending = set(self._tasks)
        if pending and timeout > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            # Let the cancelled handlers run their clean-up (requeueing their message).
            await asyncio.wait(pending, timeout=2.0)
        return len(pending)


# --- the interface --------------------------------------------------------------------------------


class Publisher(Protocol):
    """What handlers need to announce events (a :class:`Bus`, or a recording fake in unit tests)."""

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None: ...


class Caller(Protocol):
    """What handlers need to call other services (a :class:`Bus`, or a fake in unit tests)."""

    async def call(self, request: Request[R], *, timeout: float | None = None) -> R: ...


class Bus(abc.ABC):
    """What services see of the bus. One instance per service instance."""

    def __init__(
        self, service: str, sealer: Sealer, *, rpc_timeout: float = 3.0, metrics: BusMetrics | None = None
    ) -> None:
        self.service = service
        self.instance = f"{service}.{uuid.uuid4().hex[:10]}"
        self.rpc_timeout = rpc_timeout
        self._adapter = _Adapter(service, sealer)
        self.metrics = metrics
        self.draining = False
        self._inflight = InFlight()
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
        """True while the transport is usable (for ``/readyz``)."""

    @abc.abstractmethod
    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        """Publish ``event`` on this service's exchange.

        The broker confirms every publish. With ``must_arrive`` an event no queue is bound for
        raises :class:`EventUndeliverable`; otherwise it is dropped with a log line.
        """

    @abc.abstractmethod
    async def call(self, request: Request[R], *, timeout: float | None = None) -> R:
        """Send ``request`` to its service and wait for the reply.

        Raises :class:`RemoteError` with the remote code, :class:`RpcTimeout` or :class:`RpcUnavailable`.
        """

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
    def _routes(
        handlers: Mapping[type[Request[Any]], RpcHandler],
    ) -> dict[str, tuple[type[Request[Any]], RpcHandler]]:
        return {cls.TYPE: (cls, handler) for cls, handler in handlers.items()}


# --- RabbitMQ -------------------------------------------------------------------------------------

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
# A publish waits for the broker's confirm; a broker that never answers (blocked by an alarm, a
# half-open socket) must not hold a request forever.
PUBLISH_CONFIRM_SECONDS = 5.0


class AmqpBus(Bus):
    """The bus over RabbitMQ with aio-pika (``connect_robust`` reconnects after the first connect)."""

    def __init__(
        self,
        url: str,
        service: str,
        sealer: Sealer,
        *,
        prefix: str = "",
        rpc_timeout: float = 3.0,
        prefetch: int = 64,
        connect_timeout: float = 30.0,
        metrics: BusMetrics | None = None,
    ) -> None:
        super().__init__(service, sealer, rpc_timeout=rpc_timeout, metrics=metrics)
        self._url = url
        self._prefix = prefix
        self._prefetch = prefetch
        self._connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._rpc_channel: AbstractChannel | None = None
        self._reply_channel: AbstractChannel | None = None
        self._consume_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._pending: dict[str, asyncio.Future[tuple[str, bytes]]] = {}
        self._consumers: list[tuple[Any, str]] = []
        self._rpc_lock = asyncio.Lock()
        self._rpc_ready = False

    def name(self, suffix: str) -> str:
        """A broker object name with this bus's prefix."""
        return f"{self._prefix}{suffix}"

    # Every broker object name this bus uses comes from one of these (the least-privilege broker
    # definitions in deploy/rabbitmq are tested against them).

    def exchange_name(self, service: str) -> str:
        """The durable topic exchange ``service`` publishes its events on."""
        return self.name(f"{service}.events")

    def rpc_queue_name(self, service: str) -> str:
        """The queue of ``service``'s RPC requests (reached through the default exchange)."""
        return self.name(f"{service}.rpc")

    def event_queue_name(self, event: type[Event]) -> str:
        """This service's durable queue for ``event``, shared by its replicas."""
        return self.name(f"{self.service}.{event.TYPE}")

    def dead_letter_name(self) -> str:
        """This service's dead-letter exchange and queue (same name)."""
        return self.name(f"{self.service}.dead")

    def broadcast_queue_name(self) -> str:
        """A fresh name for a queue of this instance alone (exclusive, auto-delete)."""
        return self.name(f"{self.instance}.{uuid.uuid4().hex[:6]}")

    async def start(self) -> None:
        async for attempt in connect_policy(
            "amqp_connect", max_seconds=self._connect_timeout, retry_on=(OSError, AMQPError)
        ):
            with attempt:
                self._connection = await aio_pika.connect_robust(
                    self._url, client_properties={"connection_name": self.instance}
                )
        assert self._connection is not None
        self._publish_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._reply_channel = await self._connection.channel(publisher_confirms=False)
        self._consume_channel = await self._connection.channel(publisher_confirms=False)
        await self._consume_channel.set_qos(prefetch_count=self._prefetch)
        self._exchange = await self._declare_exchange(self._publish_channel, self.service)
        log.info("bus_connected", instance=self.instance)

    async def _declare_exchange(self, channel: AbstractChannel, service: str) -> AbstractExchange:
        return await channel.declare_exchange(
            self.exchange_name(service), aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def _cancel_consumers(self) -> None:
        consumers, self._consumers = self._consumers, []

        async def cancel(queue: Any, tag: str) -> None:
            try:
                await asyncio.wait_for(queue.cancel(tag), 5.0)
            except (AMQPError, ConnectionError, RuntimeError, TimeoutError):
                # The connection is going away anyway; closing it cancels the consumer too.
                log.warning("consumer_cancel_failed", queue=queue.name)

        # Together: with the broker unreachable each would wait its full timeout.
        await asyncio.gather(*(cancel(queue, tag) for queue, tag in consumers))

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self.stop_consuming()
        # Normally drained already (graceful shutdown); anything left is cancelled and requeued.
        await self._inflight.finish(0)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RpcUnavailable("bus", "closing"))
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    def _properties(self, message: Message, **extra: Any) -> aio_pika.Message:
        return aio_pika.Message(
            body=b"",
            content_type="application/json",
            type=message.TYPE,
            headers={"v": message.VERSION},
            message_id=uuid.uuid4().hex,
            correlation_id=current_correlation_id(),
            timestamp=datetime.now(UTC),
            app_id=self.service,
            **extra,
        )

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        self._check_publisher(event)
        if self._exchange is None:
            raise RpcUnavailable(event.TYPE, "bus not started")
        message = self._properties(
            event,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            expiration=max(ttl, 0.001) if ttl is not None else None,
        )
        message.body = encode(event, self._adapter.sealer)
        try:
            await self._exchange.publish(
                message, routing_key=event.TYPE, mandatory=True, timeout=PUBLISH_CONFIRM_SECONDS
            )
        except TimeoutError:
            raise RpcUnavailable(event.TYPE, "broker did not confirm the publish") from None
        except DeliveryError as exc:
            if isinstance(exc.frame, spec.Basic.Return):
                if must_arrive:
                    raise EventUndeliverable(f"no queue is bound for {event.TYPE}") from None
                log.debug("event_unroutable", type=event.TYPE)
                return
            raise RpcUnavailable(event.TYPE, "broker refused the publish") from None

    async def _ensure_rpc_client(self) -> AbstractChannel:
        if self._rpc_ready and self._rpc_channel is not None:
            return self._rpc_channel
        async with self._rpc_lock:
            if not self._rpc_ready:
                assert self._connection is not None, "bus not started"
                self._rpc_channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                replies = await self._rpc_channel.get_queue(DIRECT_REPLY_TO, ensure=False)
                await replies.consume(self._on_reply, no_ack=True)
                self._rpc_ready = True
        assert self._rpc_channel is not None
        return self._rpc_channel

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result((message.type or "", message.body))

    async def call(self, request: Request[R], *, timeout: float | None = None) -> R:
        started = time.monotonic()
        outcome = "unavailable"
        try:
            reply = await self._call(request, timeout or self.rpc_timeout)
            outcome = "ok"
            return reply
        except RemoteError:
            outcome = "error"
            raise
        except RpcTimeout:
            outcome = "timeout"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.called(request.TYPE, outcome, time.monotonic() - started)

    async def _call(self, request: Request[R], timeout: float) -> R:
        channel = await self._ensure_rpc_client()
        message = self._properties(request, reply_to=DIRECT_REPLY_TO, expiration=timeout)
        message.body = encode(request, self._adapter.sealer)
        assert message.message_id is not None
        future: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[message.message_id] = future
        try:
            try:
                await channel.default_exchange.publish(
                    message,
                    routing_key=self.rpc_queue_name(request.service()),
                    mandatory=True,
                    timeout=timeout,
                )
            except TimeoutError:
                raise RpcTimeout(request.TYPE, timeout) from None
            except DeliveryError:
                raise RpcUnavailable(request.TYPE) from None
            except (AMQPError, ConnectionError, RuntimeError) as exc:
                raise RpcUnavailable(request.TYPE, f"bus: {type(exc).__name__}") from None
            try:
                type_, body = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise RpcTimeout(request.TYPE, timeout) from None
        finally:
            self._pending.pop(message.message_id, None)
        return self._adapter.reply_from(request, type_, body)

    async def _dead_letter_args(self) -> dict[str, Any]:
        assert self._consume_channel is not None
        dead = await self._consume_channel.declare_exchange(
            self.dead_letter_name(), aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await self._consume_channel.declare_queue(self.dead_letter_name(), durable=True)
        await queue.bind(dead)
        return {"x-dead-letter-exchange": dead.name}

    async def subscribe(self, event: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        assert self._consume_channel is not None, "bus not started"
        args = await self._dead_letter_args()
        queue = await self._consume_channel.declare_queue(
            self.event_queue_name(event), durable=True, arguments=args
        )
        for publisher in event.PUBLISHERS:
            await queue.bind(await self._source_exchange(publisher), routing_key=event.TYPE)
        await self._consume(queue, functools.partial(self._on_event, handler=handler))

    async def subscribe_broadcast(self, events: Sequence[type[Event]], handler: EventHandler) -> None:
        assert self._consume_channel is not None, "bus not started"
        queue = await self._consume_channel.declare_queue(
            self.broadcast_queue_name(), exclusive=True, auto_delete=True
        )
        for event in events:
            for publisher in event.PUBLISHERS:
                await queue.bind(await self._source_exchange(publisher), routing_key=event.TYPE)
        await self._consume(queue, functools.partial(self._on_event, handler=handler))

    async def _source_exchange(self, publisher: str) -> AbstractExchange | str:
        """The events exchange of ``publisher``, for binding a queue to it.

        Declaring an exchange needs ``configure`` permission on its name, which a least-privilege
        broker user has only for its own (``deploy/rabbitmq``). A passive declare needs none, so look
        first and declare only when the exchange does not exist yet: a development broker on which
        the publisher has not started. Deployments declare every exchange up front.
        """
        assert self._connection is not None, "bus not started"
        assert self._consume_channel is not None, "bus not started"
        if publisher == self.service:
            return await self._declare_exchange(self._consume_channel, publisher)
        name = self.exchange_name(publisher)
        # A passive declare of a missing exchange closes its channel, so probe on a throw-away one.
        probe = await self._connection.channel(publisher_confirms=False)
        try:
            await probe.get_exchange(name, ensure=True)
        except ChannelNotFoundEntity:
            return await self._declare_exchange(self._consume_channel, publisher)
        finally:
            with contextlib.suppress(AMQPError, ConnectionError, RuntimeError):
                await probe.close()
        return name

    async def serve(self, handlers: Mapping[type[Request[Any]], RpcHandler]) -> None:
        assert self._consume_channel is not None, "bus not started"
        routes = self._routes(handlers)
        queue = await self._consume_channel.declare_queue(self.rpc_queue_name(self.service), durable=True)
        await self._consume(queue, functools.partial(self._on_request, routes=routes))

    async def _consume(
        self, queue: Any, callback: Callable[[AbstractIncomingMessage], Awaitable[None]]
    ) -> None:
        tag = await queue.consume(callback)
        self._consumers.append((queue, tag))

    @staticmethod
    def _delivery(message: AbstractIncomingMessage) -> Delivery:
        return Delivery(
            type=message.type or "",
            version=version_of(message.headers),
            body=message.body,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            app_id=message.app_id,
            redelivered=bool(message.redelivered),
        )

    async def _give_back(self, message: AbstractIncomingMessage, kind: str) -> None:
        """Requeue a delivery this instance will not handle (it is stopping)."""
        with contextlib.suppress(AMQPError, ConnectionError, RuntimeError):
            await message.reject(requeue=True)
        if self.metrics is not None:
            self.metrics.delivered(kind, "requeue")
        log.info("delivery_requeued", type=message.type, reason="stopping")

    async def _on_event(self, message: AbstractIncomingMessage, handler: EventHandler) -> None:
        if self.draining:  # arrived between our basic.cancel and its cancel-ok
            await self._give_back(message, "event")
            return
        with self._inflight.track():
            try:
                outcome = await self._adapter.handle_event(self._delivery(message), handler)
            except asyncio.CancelledError:  # the shutdown deadline passed
                await self._give_back(message, "event")
                raise
            if outcome is Outcome.ACK:
                await message.ack()
            else:
                await message.reject(requeue=outcome is Outcome.REQUEUE)
            if self.metrics is not None:
                self.metrics.delivered("event", outcome.value)

    async def _on_request(
        self, message: AbstractIncomingMessage, routes: Mapping[str, tuple[type[Request[Any]], RpcHandler]]
    ) -> None:
        if self.draining:
            await self._give_back(message, "rpc")
            return
        with self._inflight.track():
            try:
                await self._answer_request(message, routes)
            except asyncio.CancelledError:
                await self._give_back(message, "rpc")
                raise
        if self.metrics is not None:
            self.metrics.delivered("rpc", "ack")

    async def _answer_request(
        self, message: AbstractIncomingMessage, routes: Mapping[str, tuple[type[Request[Any]], RpcHandler]]
    ) -> None:
        type_, version, body = await self._adapter.handle_request(self._delivery(message), routes)
        if message.reply_to and self._reply_channel is not None:
            reply = aio_pika.Message(
                body=body,
                content_type="application/json",
                type=type_,
                headers={"v": version},
                message_id=uuid.uuid4().hex,
                correlation_id=message.message_id,
                timestamp=datetime.now(UTC),
                app_id=self.service,
            )
            try:
                # mandatory=False: RabbitMQ returns mandatory publishes to direct reply-to even when it
                # delivers them.
                await self._reply_channel.default_exchange.publish(
                    reply, routing_key=message.reply_to, mandatory=False, timeout=PUBLISH_CONFIRM_SECONDS
                )
            except (AMQPError, ConnectionError, RuntimeError, TimeoutError):
                log.warning("rpc_reply_failed", type=message.type)
        await message.ack()


# --- in-process -----------------------------------------------------------------------------------


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
        if outcome is Outcome.REQUEUE:
            await self._deliver(queue, Delivery(**{**_fields(delivery), "redelivered": True}))
        elif outcome is Outcome.REJECT:
            queue.dead.append(delivery)

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
        super().__init__(service, sealer, rpc_timeout=rpc_timeout, metrics=metrics)
        self.broker = broker
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
        return Delivery(
            type=message.TYPE,
            version=message.VERSION,
            body=encode(message, self._adapter.sealer),
            message_id=uuid.uuid4().hex,
            correlation_id=current_correlation_id(),
            app_id=self.service,
        )

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        self._check_publisher(event)
        if not self._started:
            raise RpcUnavailable(event.TYPE, "bus not started")
        taken = self.broker.route(f"{self.service}.events", self._delivery(event))
        if not taken:
            if must_arrive:
                raise EventUndeliverable(f"no queue is bound for {event.TYPE}")
            log.debug("event_unroutable", type=event.TYPE)

    async def call(self, request: Request[R], *, timeout: float | None = None) -> R:
        timeout = timeout or self.rpc_timeout
        server = self.broker.server_for(request.service())
        if server is None:
            raise RpcUnavailable(request.TYPE)
        started = time.monotonic()
        try:
            type_, _version, body = await asyncio.wait_for(server(self._delivery(request)), timeout)
        except TimeoutError:
            raise RpcTimeout(request.TYPE, timeout) from None
        log.debug("rpc_done", type=request.TYPE, ms=round((time.monotonic() - started) * 1000, 2))
        return self._adapter.reply_from(request, type_, body)

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
        self, routes: Mapping[str, tuple[type[Request[Any]], RpcHandler]], delivery: Delivery
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
    routes: Mapping[str, tuple[type[Request[Any]], RpcHandler]]

    async def __call__(self, delivery: Delivery) -> tuple[str, int, bytes]:
        return await self.bus._answer(self.routes, delivery)
