"""The bus over RabbitMQ (aio-pika), which heals itself after connection, channel and broker faults.

Names: events go to the durable topic exchange ``<service>.events`` with the event type as routing
key; ``subscribe`` consumes the durable queue ``<service>.<event type>`` shared by replicas;
``subscribe_broadcast`` gives each instance its own exclusive auto-delete queue; RPC requests go to
``<service>.rpc`` on the default exchange and are answered over direct reply-to. Queue arguments
(quorum queues, delivery limits, bounded dead letters) are in :mod:`shared.bus.topology`.

Healing. Everything the bus uses on the broker lives on one :class:`Link`: a plain (not
"robust") connection, its four channels, the direct reply-to consumer and this instance's consumers.
A link dies whole: when the connection or **any** of its channels closes (a dropped socket, a
closed connection, a channel error, a broker that stops), the supervisor

1. marks the bus down (``/readyz`` 503, ``wxlogin_bus_connected`` 0) and logs ``bus_disconnected``
   once;
2. fails every RPC call waiting on that link at once with ``bus_unavailable`` (its reply could only
   have come back on the lost channel);
3. reconnects with bounded, jittered backoff (0.1 s doubling to 2 s), trying each URL of a cluster
   in turn, for as long as it takes;
4. replays the *plan*: the exchange, the RPC reply path, and every queue, binding and consumer the
   service declared, in order, on the new link; then logs ``bus_reconnected`` and runs the
   ``on_reconnected`` hooks (catching up on broadcasts missed while cut off).

A link is also given up when it is alive but useless: a publish fails because its channel is gone,
or the broker has refused (``basic.nack``) every publish to one queue for :data:`REFUSED_FOR_SECONDS`.
In the 3-node chaos run on RabbitMQ 3.10, after the node holding the quorum queues' leaders stopped,
one service's channel kept failing every request to one queue (503 for the rest of the run) while
another service's channel on the same node reached that queue fine, and the broker refused
publishes to quorum queues while their leaders were being elected; a new connection is the cure.

While the bus is down, :meth:`AmqpBus.call` and :meth:`AmqpBus.publish` raise
:class:`~shared.errors.BusUnavailable` at once (503 ``bus_unavailable`` with ``Retry-After`` at the
gateway), never waiting out the caller's timeout.

What the broker confirms. Every publish waits for the broker's confirm, except a *hint*
(``Event.HINT``: a push that Mongo backs), published on a channel without confirms. RPC requests keep
theirs: aiormq hands a ``basic.return`` only to a confirm-mode publish, and the return is what fails a
call to a service nobody serves at once (``RpcUnavailable``) instead of after its timeout.

Messages go through aiormq's channels (under aio-pika's): publishing builds the AMQP properties once
and consuming hands the delivered frame to the adapter, without aio-pika's message objects, which
cost about as much CPU as the handlers of a login (docs/benchmarks.md). Each delivery is still handled
in a task of its own (:meth:`AmqpBus._detached`, about 6 µs), so that a closing channel cannot cancel it.
aio-pika still opens the connection and declares exchanges, queues and bindings.

No frame waits for its own socket write (aiormq's ``wait=False``): a publish, reply, ack or reject is
queued for the connection's writer, in order, and the caller goes on. By default aiormq holds the
channel's lock until the writer has written and drained the frame, which costs every frame a future
and two task switches and serialises the publishes of a channel behind the writer. What the broker
confirms is still awaited, and a dead connection still fails it (``GONE``); a written frame was never
proof of arrival, and the writer's bounded queue (10 frames) still holds publishers back when the
socket is slow.

The writer sends the frames it finds queued together in one socket write
(:mod:`shared.bus.gather`): a reply and the hint before it, the acks and replies of concurrent
requests. A frame with nothing queued behind it is written at once.

aio-pika's robust connection is not used because it does not restore a direct reply-to consumer on
the channel that publishes requests: after a reconnect every call failed with ``PRECONDITION_FAILED -
fast reply consumer does not exist`` until the process was restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity, ChannelPreconditionFailed, DeliveryError
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from yarl import URL

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
    version_of,
)
from shared.bus.gather import GatheringConnection, GatheringTransports, GatheringWriter
from shared.bus.interface import Bus, EventUndeliverable
from shared.bus.metrics import BusMetrics
from shared.bus.topology import (
    QueueType,
    dead_letter_queue_arguments,
    durable_queue_arguments,
    retry_pause,
)
from shared.errors import BusUnavailable, RpcTimeout, RpcUnavailable
from shared.messages import Event, Request, encode, new_id
from shared.sealing import Sealer

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
# A publish waits for the broker's confirm; a broker that never answers (blocked by an alarm, a
# half-open socket) must not hold a request forever.
PUBLISH_CONFIRM_SECONDS = 5.0
# One connection attempt; the next URL (or the same one after a pause) is tried after it.
CONNECT_ATTEMPT_SECONDS = 5.0
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0
# Heartbeats find a peer that vanished without closing the socket; a closed socket is seen at once.
HEARTBEAT_SECONDS = 10
# Failures of a channel or connection that just went away (the link is being replaced).
GONE = (AMQPError, ConnectionError, RuntimeError)
# A link whose publishes to one queue or exchange the broker has refused (basic.nack) for this long,
# with no publish there taken in between, is replaced; the wait doubles, up to the cap, while links
# keep being replaced for it (a queue that has truly lost its quorum stays refused on every link).
REFUSED_FOR_SECONDS = 2.0
REFUSED_FOR_MAX_SECONDS = 30.0

PlanStep = Callable[["Link"], Awaitable[None]]
REFUSED_MARK = "the broker refused every publish to"
_LINK_SERIALS = itertools.count(1)


def split_urls(url: str) -> list[str]:
    """The node URLs of ``WXLOGIN_AMQP_URL`` (one, or several comma-separated for a cluster)."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise ValueError("no AMQP URL given")
    return urls


def user_of(url: str) -> str:
    """The broker user a URL logs in as (RabbitMQ's default, ``guest``, when it names none)."""
    return unquote(urlsplit(url).username or "guest")


def node_of(url: str) -> str:
    """``host:port`` of a URL, for logs (never the credentials)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}"


def backoff(attempt: int) -> float:
    """Pause before reconnect attempt ``attempt`` (1, 2, …): doubling, capped, with jitter."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Link:
    """One connection to one broker node and everything the bus holds on it; it dies whole."""

    def __init__(self, connection: AbstractConnection, node: str, *, refused_for: float) -> None:
        self.connection = connection
        self.node = node
        self.refused_for = refused_for  # how long refusals to one target are borne (see refused)
        self.refused_since: dict[str, float] = {}  # target → first refusal since it last took a publish
        self.serial = next(_LINK_SERIALS)  # AmqpBus.session: which link this is
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.consumers: list[tuple[RawChannel, str, str]] = []  # (channel, consumer tag, queue name)
        self.replies_ready = False
        self.writer: GatheringWriter | None = None  # the connection's socket writer (shared.bus.gather)
        self._closing = False
        self.watch(connection, "connection")
        # Set by AmqpBus._open once opened:
        self.publish: AbstractChannel
        self.hints: AbstractChannel
        self.rpc: AbstractChannel
        self.reply: AbstractChannel
        self.consume: AbstractChannel
        self.exchange: AbstractExchange
        # The aiormq channels under publish, hints, rpc, reply and consume, which messages go through.
        self.publish_raw: aiormq.Channel
        self.hints_raw: aiormq.Channel
        self.rpc_raw: aiormq.Channel
        self.reply_raw: aiormq.Channel
        self.consume_raw: aiormq.Channel

    def watch(self, closable: Any, what: str) -> None:
        """Treat the closing of ``closable`` (the connection or a channel) as the loss of the link."""

        def closed(_sender: Any, exc: BaseException | None = None, *_: Any) -> None:
            if not self._closing and not self.lost.done():
                detail = f"{type(exc).__name__}: {str(exc)[:160]}" if exc is not None else "closed"
                self.lost.set_result(f"{what} {detail}")

        closable.close_callbacks.add(closed)

    async def channel(self, what: str, *, confirms: bool) -> AbstractChannel:
        """A channel whose closing kills the link."""
        channel = await self.connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
        self.watch(channel, f"{what} channel")
        return channel

    def give_up(self, reason: str) -> None:
        """Treat the link as lost (the supervisor replaces it) although nothing on it closed."""
        if not self._closing and not self.lost.done():
            self.lost.set_result(reason)

    def refused(self, target: str) -> None:
        """The broker refused a publish to ``target``: give the link up once that has lasted
        :attr:`refused_for` seconds without a publish there being taken."""
        now = time.monotonic()
        since = self.refused_since.setdefault(target, now)
        if now - since >= self.refused_for:
            self.give_up(f"{REFUSED_MARK} {target} for {now - since:.1f} s")

    def taken(self, target: str) -> None:
        """The broker took a publish to ``target``: its refusals so far are forgotten."""
        if self.refused_since:
            self.refused_since.pop(target, None)

    @property
    def usable(self) -> bool:
        """True while nothing on this link has closed and the RPC reply path is consuming."""
        return self.replies_ready and not self.lost.done() and not self.connection.is_closed

    async def close(self) -> None:
        """Close the connection (and with it every channel); errors of a dead peer are ignored."""
        self._closing = True
        with contextlib.suppress(*GONE, TimeoutError):
            await asyncio.wait_for(self.connection.close(), 2.0)


class AmqpBus(Bus):
    """The bus over RabbitMQ; see the module docstring for how it heals."""

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
        queue_type: QueueType = "quorum",
        metrics: BusMetrics | None = None,
    ) -> None:
        urls = split_urls(url)
        super().__init__(service, sealer, rpc_timeout=rpc_timeout, metrics=metrics, user=user_of(urls[0]))
        self._urls = urls
        self._prefix = prefix
        self._prefetch = prefetch
        self._connect_timeout = connect_timeout
        self._queue_type: QueueType = queue_type
        self._link: Link | None = None
        self._plan: list[PlanStep] = []
        self._pending: dict[str, asyncio.Future[tuple[str, bytes]]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._hooks_task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_url = 0
        self._warned_queues: set[str] = set()
        self._refused_for = REFUSED_FOR_SECONDS
        self._refusal_replaced_at = -math.inf  # when a link was last replaced for refusals
        self._handling: set[asyncio.Task[None]] = set()  # deliveries being handled (see _consume)

    @property
    def urls(self) -> list[str]:
        """The broker node URLs this bus connects to, in the order it tries them."""
        return list(self._urls)

    # --- names ------------------------------------------------------------------------------------
    # Every broker object name this bus uses comes from one of these (the least-privilege broker
    # definitions in deploy/rabbitmq are tested against them).

    def name(self, suffix: str) -> str:
        """A broker object name with this bus's prefix."""
        return f"{self._prefix}{suffix}"

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

    # --- the link and its supervisor ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying for up to ``connect_timeout`` seconds), then watch the link for good."""
        self._link = await self._connect(deadline=time.monotonic() + self._connect_timeout)
        self._set_connected(True)
        log.info("bus_connected", instance=self.instance, node=self._link.node)
        if not self._adapter.gate.enforced:
            log.warning(
                "bus_sender_check_off",
                user=self.user,
                reason="this service has no broker user of its own, so senders cannot be told apart",
            )
        self._supervisor = asyncio.ensure_future(self._supervise())

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.usable

    @property
    def session(self) -> int | None:
        link = self._link
        return link.serial if link is not None and link.usable else None

    def _set_connected(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.connected.set(1 if up else 0)

    async def _connect(self, *, deadline: float | None) -> Link:
        """A new link on the first node that answers; with no ``deadline``, until one does."""
        attempt = 0
        last_reason = ""
        while not self._closing:
            url = self._urls[self._next_url % len(self._urls)]
            try:
                return await self._open(url)
            except (*GONE, TimeoutError) as exc:
                self._next_url += 1
                reason = f"{type(exc).__name__}: {str(exc)[:160]}"
                if not last_reason:  # the first failure says why; the rest are counted, not logged
                    log.warning("bus_connect_failed", node=node_of(url), reason=reason)
                last_reason = reason
            attempt += 1
            pause = backoff(attempt)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise ConnectionError(f"RabbitMQ did not answer ({attempt} attempts): {last_reason}")
            await asyncio.sleep(pause)
        raise BusUnavailable("bus", "closing")

    async def _open(self, url: str) -> Link:
        """Connect to ``url``, open the channels and the reply path, and replay the plan."""
        query = {} if "heartbeat=" in url else {"heartbeat": HEARTBEAT_SECONDS}
        transports = GatheringTransports(url)
        connection = GatheringConnection(
            URL(url).update_query(query),
            client_properties={"connection_name": self.instance},
            transport_factory=transports,
        )
        await connection.connect(timeout=CONNECT_ATTEMPT_SECONDS)
        transports.bind(connection)
        link = Link(connection, node_of(url), refused_for=self._refusal_window())
        link.writer = transports.writer
        try:
            link.publish = await link.channel("publish", confirms=True)
            link.hints = await link.channel("hints", confirms=False)
            link.rpc = await link.channel("rpc", confirms=True)
            link.reply = await link.channel("reply", confirms=False)
            link.consume = await link.channel("consume", confirms=False)
            await link.consume.set_qos(prefetch_count=self._prefetch)
            link.publish_raw = _concrete(await link.publish.get_underlay_channel())
            link.hints_raw = _concrete(await link.hints.get_underlay_channel())
            link.rpc_raw = _concrete(await link.rpc.get_underlay_channel())
            link.reply_raw = _concrete(await link.reply.get_underlay_channel())
            link.consume_raw = _concrete(await link.consume.get_underlay_channel())
            # The reply consumer must be on the channel that publishes the requests.
            await link.rpc_raw.basic_consume(DIRECT_REPLY_TO, self._on_reply, no_ack=True)
            link.replies_ready = True
            link.exchange = await self._declare_exchange(link.publish, self.service)
            for step in self._plan:
                await step(link)
        except BaseException:
            await link.close()
            raise
        if link.lost.done():  # something closed while the plan ran: not a usable link
            await link.close()
            raise ConnectionError(f"link lost while opening: {link.lost.result()}")
        return link

    async def _supervise(self) -> None:
        """For the life of the bus: wait for the link to die, then replace it."""
        while not self._closing:
            link = self._link
            assert link is not None
            reason = await link.lost
            if self._closing:
                return
            down_since = time.monotonic()
            self._link = None
            self._set_connected(False)
            log.warning("bus_disconnected", node=link.node, reason=reason, calls_failed=len(self._pending))
            self._fail_pending(f"connection lost ({reason[:60]})")
            if reason.startswith(REFUSED_MARK):
                self._bear_refusals_longer()
            await link.close()
            try:
                new = await self._connect(deadline=None)
            except BusUnavailable:  # closing
                return
            self._link = new
            self._set_connected(True)
            if self.metrics is not None:
                self.metrics.reconnects.inc()
            log.info(
                "bus_reconnected",
                node=new.node,
                down_s=round(time.monotonic() - down_since, 2),
                consumers=len(new.consumers),
            )
            self._hooks_task = asyncio.ensure_future(self._run_reconnect_hooks())

    def _bear_refusals_longer(self) -> None:
        """A link was replaced for refusals: the next one bears them twice as long (up to the cap)."""
        self._refused_for = min(REFUSED_FOR_MAX_SECONDS, 2 * self._refused_for)
        self._refusal_replaced_at = time.monotonic()

    def _refusal_window(self) -> float:
        """How long a new link bears refusals: back to the first wait once the last replacement for
        refusals is long past (it cured them; a later episode starts afresh)."""
        if time.monotonic() - self._refusal_replaced_at > 2 * REFUSED_FOR_MAX_SECONDS:
            self._refused_for = REFUSED_FOR_SECONDS
        return self._refused_for

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BusUnavailable("rpc", reason))

    def _usable_link(self, what: str) -> Link:
        link = self._link
        if link is None or not link.usable:
            raise BusUnavailable(what)
        return link

    async def _cancel_consumers(self) -> None:
        link = self._link
        if link is None:
            return
        consumers, link.consumers = link.consumers, []

        async def cancel(channel: RawChannel, tag: str, queue: str) -> None:
            try:
                await asyncio.wait_for(channel.basic_cancel(tag), 5.0)
            except (*GONE, TimeoutError):
                # The connection is going away anyway; closing it cancels the consumer too.
                log.warning("consumer_cancel_failed", queue=queue)

        # Together: with the broker unreachable each would wait its full timeout.
        await asyncio.gather(*(cancel(channel, tag, queue) for channel, tag, queue in consumers))

    async def close(self) -> None:
        if self.connected:
            await self.stop_consuming()
        self._closing = True
        # Normally drained already (graceful shutdown); anything left is cancelled and requeued.
        await self._inflight.finish(0)
        self._fail_pending("closing")
        for task in (self._supervisor, self._hooks_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 2.0)
        link, self._link = self._link, None
        self._set_connected(False)
        if link is not None:
            await link.close()

    # --- publishing and calling -----------------------------------------------------------------------

    def _properties(
        self, type_: str, version: int, message_id: str, *, correlation_id: str | None, **extra: Any
    ) -> spec.Basic.Properties:
        """The AMQP properties of every message this bus sends (events, requests and replies)."""
        return spec.Basic.Properties(
            content_type="application/json",
            message_type=type_,
            headers={"v": version},
            message_id=message_id,
            correlation_id=correlation_id,
            timestamp=datetime.now(UTC),
            app_id=self.service,
            user_id=self.user,
            **extra,
        )

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        self._check_publisher(event)
        link = self._usable_link(event.TYPE)
        message_id = new_id()
        properties = self._properties(
            event.TYPE,
            event.VERSION,
            message_id,
            correlation_id=current_correlation_id(),
            delivery_mode=PERSISTENT,
            expiration=_expiration(ttl, at_least=0.001),
        )
        body = encode(event, self._adapter.sealer, message_id=message_id)
        # A hint asks for no confirm and no return: nobody bound means nobody to hurry.
        hint = event.HINT and not must_arrive
        exchange = self.exchange_name(self.service)
        target = f"{exchange}/{event.TYPE}"
        try:
            await (link.hints_raw if hint else link.publish_raw).basic_publish(
                body,
                exchange=exchange,
                routing_key=event.TYPE,
                properties=properties,
                mandatory=not hint,
                timeout=PUBLISH_CONFIRM_SECONDS,
                wait=False,
            )
        except TimeoutError:
            raise BusUnavailable(event.TYPE, "broker did not take or confirm the publish") from None
        except DeliveryError as exc:
            if isinstance(exc.frame, spec.Basic.Return):
                if must_arrive:
                    raise EventUndeliverable(f"no queue is bound for {event.TYPE}") from None
                log.debug("event_unroutable", type=event.TYPE)
                return
            link.refused(target)
            raise BusUnavailable(event.TYPE, "broker refused the publish") from None
        except GONE as exc:
            link.give_up(f"publish failed: {type(exc).__name__}")
            raise BusUnavailable(event.TYPE, f"bus: {type(exc).__name__}") from None
        if not hint:  # a hint is never confirmed, so never refused either
            link.taken(target)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        future = self._pending.get(properties.correlation_id or "")
        if future is not None and not future.done():
            future.set_result((properties.message_type or "", message.body))

    async def _call(self, request: Request[R], timeout: float) -> R:
        link = self._usable_link(request.TYPE)
        deadline = time.monotonic() + timeout
        message_id = new_id()
        properties = self._properties(
            request.TYPE,
            request.VERSION,
            message_id,
            correlation_id=current_correlation_id(),
            reply_to=DIRECT_REPLY_TO,
            expiration=_expiration(timeout),
        )
        body = encode(request, self._adapter.sealer, message_id=message_id)
        future: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        queue = self.rpc_queue_name(request.service())
        try:
            try:
                await link.rpc_raw.basic_publish(
                    body,
                    exchange="",
                    routing_key=queue,
                    properties=properties,
                    mandatory=True,
                    timeout=timeout,
                    wait=False,
                )
            except TimeoutError:
                raise RpcTimeout(request.TYPE, timeout) from None
            except DeliveryError as exc:
                if isinstance(exc.frame, spec.Basic.Return):
                    raise RpcUnavailable(request.TYPE) from None
                link.refused(queue)
                raise BusUnavailable(request.TYPE, "broker refused the request") from None
            except GONE as exc:
                link.give_up(f"request failed: {type(exc).__name__}")
                raise BusUnavailable(request.TYPE, f"bus: {type(exc).__name__}") from None
            link.taken(queue)
            try:
                type_, reply = await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RpcTimeout(request.TYPE, timeout) from None
        finally:
            self._pending.pop(message_id, None)
        return self._adapter.reply_from(request, type_, reply, message_id=message_id)

    # --- what this service consumes (recorded in the plan, replayed on every new link) --------------

    async def _add_step(self, step: PlanStep) -> None:
        self._plan.append(step)
        link = self._link
        if link is not None and link.usable:
            await step(link)
        # Otherwise the supervisor runs it with the rest of the plan once the bus is back.

    async def _declare_exchange(self, channel: AbstractChannel, service: str) -> AbstractExchange:
        return await channel.declare_exchange(
            self.exchange_name(service), aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def _durable_queue(self, link: Link, name: str, arguments: dict[str, Any]) -> Any:
        """Declare a durable queue with ``arguments`` (on a throw-away channel) and return it.

        RabbitMQ refuses to change a queue's arguments and closes the channel that asked. A queue an
        earlier version declared (classic, unbounded) is then used as it is, with one warning, so a
        rolling upgrade keeps serving until the operator migrates it (docs/deploy.md).
        """
        probe = await link.connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(name, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as exc:
            if name not in self._warned_queues:
                self._warned_queues.add(name)
                log.warning(
                    "queue_arguments_differ",
                    queue=name,
                    wanted=sorted(arguments),
                    reason=str(exc)[:200],
                    hint="the queue keeps its old arguments until migrated: see docs/deploy.md",
                )
        finally:
            with contextlib.suppress(*GONE):
                await probe.close()
        return await link.consume.get_queue(name, ensure=False)

    async def _dead_letters(self, link: Link) -> str:
        """Declare this service's bounded dead-letter exchange and queue; returns the exchange name."""
        name = self.dead_letter_name()
        exchange = await link.consume.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await self._durable_queue(link, name, dead_letter_queue_arguments(self._queue_type))
        await queue.bind(exchange)
        return name

    async def subscribe(self, event: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        name = self.event_queue_name(event)
        on_event = functools.partial(self._on_event, handler=handler)

        async def step(link: Link) -> None:
            dead = await self._dead_letters(link)
            queue = await self._durable_queue(link, name, durable_queue_arguments(self._queue_type, dead))
            for publisher in event.PUBLISHERS:
                await queue.bind(await self._source_exchange(link, publisher), routing_key=event.TYPE)
            await self._consume(link, queue, on_event)

        await self._add_step(step)

    async def subscribe_broadcast(self, events: Sequence[type[Event]], handler: EventHandler) -> None:
        on_event = functools.partial(self._on_event, handler=handler)

        async def step(link: Link) -> None:
            # A fresh queue on every link: the old one went away with its connection.
            queue = await link.consume.declare_queue(
                self.broadcast_queue_name(), exclusive=True, auto_delete=True
            )
            for event in events:
                for publisher in event.PUBLISHERS:
                    await queue.bind(await self._source_exchange(link, publisher), routing_key=event.TYPE)
            await self._consume(link, queue, on_event)

        await self._add_step(step)

    async def _source_exchange(self, link: Link, publisher: str) -> AbstractExchange | str:
        """The events exchange of ``publisher``, for binding a queue to it.

        Declaring an exchange needs ``configure`` permission on its name, which a least-privilege
        broker user has only for its own (``deploy/rabbitmq``). A passive declare needs none, so look
        first and declare only when the exchange does not exist yet: a development broker on which
        the publisher has not started. Deployments declare every exchange up front.
        """
        if publisher == self.service:
            return await self._declare_exchange(link.consume, publisher)
        name = self.exchange_name(publisher)
        # A passive declare of a missing exchange closes its channel, so probe on a throw-away one.
        probe = await link.connection.channel(publisher_confirms=False)
        try:
            await probe.get_exchange(name, ensure=True)
        except ChannelNotFoundEntity:
            return await self._declare_exchange(link.consume, publisher)
        finally:
            with contextlib.suppress(*GONE):
                await probe.close()
        return name

    async def serve(self, handlers: Mapping[type[Request[Any]], RpcHandler]) -> None:
        routes = self._routes(handlers)
        name = self.rpc_queue_name(self.service)
        on_request = functools.partial(self._on_request, routes=routes)

        async def step(link: Link) -> None:
            # No dead-letter exchange: requests expire with their caller's timeout, and an expired
            # request is of no use to anyone. A poison request is dropped at the delivery limit.
            queue = await self._durable_queue(link, name, durable_queue_arguments(self._queue_type, None))
            await self._consume(link, queue, on_request)

        await self._add_step(step)

    async def _consume(
        self, link: Link, queue: Any, callback: Callable[[DeliveredMessage], Coroutine[Any, Any, None]]
    ) -> None:
        if self.draining:  # a link replaced during shutdown serves only this instance's own calls
            return
        ok = await link.consume_raw.basic_consume(queue.name, self._detached(callback), no_ack=False)
        assert ok.consumer_tag is not None
        link.consumers.append((link.consume_raw, ok.consumer_tag, queue.name))

    def _detached(
        self, handle: Callable[[DeliveredMessage], Coroutine[Any, Any, None]]
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        """The consumer callback: each delivery is handled in a task of its own.

        aiormq runs a consumer callback as a task of its channel and cancels it when the channel
        closes. A handler cut off halfway by a broker fault is worse than one that finishes: it may
        have spent a single-use wx.login code at WeChat and not yet stored what came back, or be
        inside a PyMongo call, which a cancel can wedge (shared/mongo.py). Finished, its reply and
        ack go nowhere, the broker redelivers the message, and the handler answers the redelivery
        from what it stored. Shutdown still cancels what outlives its deadline (``InFlight``).
        """

        async def deliver(message: DeliveredMessage) -> None:
            task = asyncio.ensure_future(handle(message))
            self._handling.add(task)
            task.add_done_callback(self._handled)

        return deliver

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._handling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery_handling_failed", exc_info=task.exception())

    # --- handling deliveries ----------------------------------------------------------------------------

    @staticmethod
    def _delivery(message: DeliveredMessage) -> Delivery:
        properties = message.header.properties
        headers = properties.headers or {}
        raw = headers.get("x-delivery-count")
        count = raw if isinstance(raw, int) else 0
        redelivered = bool(message.redelivered)
        return Delivery(
            type=properties.message_type or "",
            version=version_of(headers),
            body=message.body,
            message_id=properties.message_id,
            correlation_id=properties.correlation_id,
            app_id=properties.app_id,
            user_id=properties.user_id,
            redelivered=redelivered,
            attempt=max(count, 1 if redelivered else 0),
        )

    async def _settle(self, message: DeliveredMessage, outcome: Outcome) -> None:
        """Ack or reject; on a channel that died meanwhile the broker redelivers it anyway."""
        tag = message.delivery_tag
        assert tag is not None
        try:
            if outcome is Outcome.ACK:
                await message.channel.basic_ack(tag, wait=False)
            else:
                requeue = outcome in (Outcome.REQUEUE, Outcome.RETRY)
                await message.channel.basic_reject(tag, requeue=requeue, wait=False)
        except GONE:
            log.debug("delivery_settle_failed", type=_type_of(message), outcome=outcome.value)

    async def _give_back(self, message: DeliveredMessage, kind: str) -> None:
        """Requeue a delivery this instance will not handle (it is stopping)."""
        tag = message.delivery_tag
        if tag is not None:
            with contextlib.suppress(*GONE):
                await message.channel.basic_reject(tag, requeue=True, wait=False)
        if self.metrics is not None:
            self.metrics.delivered(kind, "requeue")
        log.info("delivery_requeued", type=_type_of(message), reason="stopping")

    async def _on_event(self, message: DeliveredMessage, handler: EventHandler) -> None:
        if self.draining:  # arrived between our basic.cancel and its cancel-ok
            await self._give_back(message, "event")
            return
        with self._inflight.track():
            delivery = self._delivery(message)
            try:
                outcome = await self._adapter.handle_event(delivery, handler)
                if outcome is Outcome.RETRY:
                    await asyncio.sleep(retry_pause(delivery.attempt))
            except asyncio.CancelledError:  # the shutdown deadline passed
                await self._give_back(message, "event")
                raise
            await self._settle(message, outcome)
            if self.metrics is not None:
                self.metrics.delivered("event", outcome.value)

    async def _on_request(self, message: DeliveredMessage, routes: Routes) -> None:
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

    async def _answer_request(self, message: DeliveredMessage, routes: Routes) -> None:
        type_, version, body = await self._adapter.handle_request(self._delivery(message), routes)
        link = self._link
        asked = message.header.properties
        # Answered on the link the request came in on only: a request from a lost link was most likely
        # made on a link its caller lost in the same fault (the caller has failed the call already),
        # and RabbitMQ 3.10 closes the connection of a reply to a node that stopped (INTERNAL_ERROR).
        if asked.reply_to and link is not None and link.usable and message.channel is link.consume_raw:
            properties = self._properties(type_, version, new_id(), correlation_id=asked.message_id)
            try:
                # mandatory=False: RabbitMQ returns mandatory publishes to direct reply-to even when it
                # delivers them.
                await link.reply_raw.basic_publish(
                    body,
                    exchange="",
                    routing_key=asked.reply_to,
                    properties=properties,
                    mandatory=False,
                    timeout=PUBLISH_CONFIRM_SECONDS,
                    wait=False,
                )
            except (*GONE, TimeoutError):
                log.warning("rpc_reply_failed", type=asked.message_type)
        await self._settle(message, Outcome.ACK)


PERSISTENT = 2  # AMQP delivery mode: the broker writes the message to disk


def _concrete(channel: RawChannel) -> aiormq.Channel:
    """aiormq's own channel under aio-pika's: its ``basic_publish`` takes ``wait``, which the abstract
    signature leaves out."""
    if not isinstance(channel, aiormq.Channel):
        raise TypeError(f"not an aiormq channel: {type(channel).__name__}")
    return channel


def _expiration(seconds: float | None, *, at_least: float = 0.0) -> str | None:
    """A per-message TTL as AMQP carries it: whole milliseconds, as text."""
    return None if seconds is None else str(int(max(seconds, at_least) * 1000))


def _type_of(message: DeliveredMessage) -> str | None:
    return message.header.properties.message_type
