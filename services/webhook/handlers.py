"""The webhook service's work: record bus events in the outbox, deliver them, and what operators and
sites may do about deliveries (list, replay, enable). Nothing here knows AMQP or HTTP: events come in
typed, attempts go out through a :class:`~services.webhook.sender.Sender`.

Delivery semantics (docs/webhooks.md):

* **at least once**: a message is recorded before the bus event is acked, and marked delivered only
  after a 2xx; a replica that dies mid-attempt leaves a lease that lapses, and the next attempt
  sends the same ``webhook-id`` again;
* **in order per endpoint**: only an endpoint's oldest pending message (its head) may be sent, so a
  later event waits while an earlier one to the same endpoint is retried. A site then never sees
  ``session.revoked`` before the ``login.succeeded`` it ends. The price: one failing message holds
  back that endpoint's queue (never other endpoints');
* **retries** on :class:`RetryPolicy`'s schedule with jitter, or after the receiver's
  ``Retry-After`` on 429 and 503; when a message has no attempt left it fails and its endpoint is
  disabled, and so is an endpoint that answers 410. A disabled endpoint keeps collecting messages;
  enabling it (CLI, admin route) sends them, oldest first.
"""

from __future__ import annotations

import asyncio
import random
import secrets as random_ids
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pymongo.errors import PyMongoError

from services.webhook.errors import EndpointUnknown, MessageUnknown
from services.webhook.events import from_bus, message_id, render
from services.webhook.metrics import WebhookMetrics
from services.webhook.sender import Attempt, Sender
from services.webhook.store import (
    DeliveryLog,
    DeliveryRecord,
    EndpointStates,
    OutboxItem,
    OutboxStore,
    endpoint_key,
)
from shared.bus import current_message_id
from shared.clients import Client, ClientRegistry, WebhookEndpoint
from shared.config import Settings
from shared.logging import get_logger
from shared.messages import Event

log = get_logger(__name__)

# Replays of a time range touch at most this many messages at once.
REPLAY_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again: ``schedule[n]`` seconds after the n-th failed attempt (``schedule[0]`` is
    the first attempt: at once), times 1 ± ``jitter``; a ``Retry-After`` hint replaces the delay."""

    schedule: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    jitter: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """``WXLOGIN_WEBHOOK_RETRY_SCHEDULE``."""
        return cls(tuple(settings.webhook_retry_schedule))

    @property
    def attempts(self) -> int:
        """How many attempts a message gets."""
        return len(self.schedule)

    def delay_after(
        self, attempts: int, *, retry_after: float | None = None, rng: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait after the ``attempts``-th attempt failed, or None when none is left."""
        if attempts >= len(self.schedule):
            return None
        if retry_after is not None:
            return max(0.0, retry_after)
        return self.schedule[attempts] * (1 + self.jitter * (2 * rng() - 1))


@dataclass(frozen=True, slots=True)
class Target:
    """A configured endpoint and the client it belongs to."""

    client_id: str
    endpoint: WebhookEndpoint

    @property
    def key(self) -> str:
        """The endpoint key (``<client_id>/<endpoint id>``)."""
        return endpoint_key(self.client_id, self.endpoint.id)


class Directory:
    """The endpoints the clients file declares, and their secrets (read from the environment)."""

    def __init__(self, registry: ClientRegistry, environ: Mapping[str, str] | None = None) -> None:
        self._registry = registry
        self._environ = environ

    def client(self, client_id: str | None) -> Client | None:
        """The client ``client_id`` (None: the default client)."""
        return self._registry.get(client_id)

    def targets(self, client_id: str | None = None) -> dict[str, Target]:
        """Every declared endpoint (of one client, when given), by key."""
        clients = self._registry.all() if client_id is None else [c for c in [self.client(client_id)] if c]
        return {
            target.key: target
            for client in clients
            for target in (Target(client.client_id, endpoint) for endpoint in client.webhooks)
        }

    def target(self, key: str) -> Target | None:
        """The endpoint ``key``, while it is declared."""
        return self.targets().get(key)

    def secrets(self, target: Target) -> list[str]:
        """Its signing secrets (every one signs: rotation)."""
        return target.endpoint.secrets(dict(self._environ) if self._environ is not None else None)


class EventRecorder:
    """Consumes the bus events: one outbox message per interested endpoint, before the ack."""

    def __init__(
        self,
        outbox: OutboxStore,
        directory: Directory,
        metrics: WebhookMetrics,
        *,
        subject_key: Callable[[], bytes],
        notify: Callable[[str], None] = lambda _key: None,
        clock: Callable[[], float] = time.time,
        bus_message_id: Callable[[], str | None] = current_message_id,
    ) -> None:
        self._outbox = outbox
        self._directory = directory
        self._metrics = metrics
        self._subject_key = subject_key
        self._notify = notify
        self._clock = clock
        self._bus_message_id = bus_message_id

    async def on_event(self, event: Event) -> None:
        """Handle one bus event (see services.webhook.events for the mapping)."""
        mapped = from_bus(event, self._bus_message_id())
        if mapped is None:
            return
        client = self._directory.client(mapped.client_id)
        if client is None:
            log.warning("webhook_client_unknown", client_id=mapped.client_id, type=mapped.type)
            return
        endpoints = [endpoint for endpoint in client.webhooks if endpoint.wants(mapped.type)]
        if not endpoints:
            return
        now = self._clock()
        try:
            body = render(mapped, client, datetime.fromtimestamp(now, UTC), self._subject_key).decode()
        except KeyUnavailable:
            log.error("webhook_subject_key_missing", client_id=client.client_id, type=mapped.type)
            return
        for endpoint in endpoints:
            item = OutboxItem(
                id=message_id(client.client_id, endpoint.id, mapped.source),
                client_id=client.client_id,
                endpoint_id=endpoint.id,
                type=mapped.type,
                body=body,
                source=mapped.source,
                seq=now,
                created_at=now,
                next_at=now,
            )
            if await self._outbox.enqueue(item):
                self._metrics.recorded.labels(mapped.type).inc()
                log.info("webhook_recorded", message_id=item.id, endpoint=item.endpoint, type=item.type)
                self._notify(item.endpoint)
            else:
                log.info("webhook_already_recorded", message_id=item.id, endpoint=item.endpoint)


class KeyUnavailable(RuntimeError):
    """The subject key (pairwise ``sub``) is not configured."""


class Deliverer:
    """Sends each endpoint's messages, one at a time and in order, on every replica.

    One task per declared endpoint; every replica runs them all. Which replica sends a message is
    decided by :meth:`OutboxStore.claim` (a lease on the message); the others find the head leased and
    wait. A replica's own new messages wake its task at once; other replicas' are seen within
    ``poll`` seconds.
    """

    def __init__(
        self,
        outbox: OutboxStore,
        deliveries: DeliveryLog,
        states: EndpointStates,
        directory: Directory,
        sender: Sender,
        policy: RetryPolicy,
        metrics: WebhookMetrics,
        *,
        owner: str,
        lease: float,
        poll: float = 1.0,
        batch: int = 100,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._outbox = outbox
        self._deliveries = deliveries
        self._batch = batch
        self._states = states
        self._directory = directory
        self._sender = sender
        self._policy = policy
        self._metrics = metrics
        self._owner = owner
        self._lease = lease
        self._poll = poll
        self._clock = clock
        self._rng = rng
        self._wakes: dict[str, asyncio.Event] = {}

    def notify(self, key: str) -> None:
        """A message was recorded for endpoint ``key``: look now."""
        self._wake(key).set()

    def _wake(self, key: str) -> asyncio.Event:
        return self._wakes.setdefault(key, asyncio.Event())

    async def run(self, *, reconcile_every: float = 2.0) -> None:
        """Serve every declared endpoint until cancelled (endpoints come and go with the clients file)."""
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                declared = set(self._directory.targets())
                for key in declared - tasks.keys():
                    tasks[key] = asyncio.ensure_future(self.serve(key))
                for key in set(tasks) - declared:
                    tasks.pop(key).cancel()
                for key, task in list(tasks.items()):
                    if task.done():  # serve() survives everything but a cancel; restart it anyway
                        if not task.cancelled() and task.exception() is not None:
                            log.error("webhook_worker_crashed", endpoint=key, exc_info=task.exception())
                        tasks[key] = asyncio.ensure_future(self.serve(key))
                await asyncio.sleep(reconcile_every)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def serve(self, key: str) -> None:
        """Deliver endpoint ``key``'s messages until cancelled."""
        wake = self._wake(key)
        while True:
            wake.clear()
            try:
                wait = await self.step(key)
            except PyMongoError as exc:
                log.warning("webhook_store_unavailable", endpoint=key, error=type(exc).__name__)
                wait = self._poll
            except Exception:  # one endpoint's surprise must not stop its deliveries for good
                log.exception("webhook_step_failed", endpoint=key)
                wait = self._poll
            if wait > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)

    async def step(self, key: str) -> float:
        """Send the endpoint's due messages in order, as long as each attempt succeeds; returns how
        long to wait before looking again.

        The queue is read once per batch (``batch`` messages, oldest first), but each message is
        still claimed on its own: a claim that fails (another replica took over, or a replay changed
        the queue) ends the batch, so the order holds whoever sends.
        """
        target = self._directory.target(key)
        if target is None or not target.endpoint.enabled:
            return self._poll
        if (await self._states.get(key)).disabled:
            return self._poll
        queue = await self._outbox.queue(key, limit=self._batch)
        if not queue:
            return self._poll
        for head in queue:
            now = self._clock()
            if head.next_at > now:
                return min(head.next_at - now, self._poll)
            if head.lease_until > now:  # another replica is sending it
                return min(head.lease_until - now, self._poll)
            item = await self._outbox.claim(head.id, owner=self._owner, now=now, lease=self._lease)
            if item is None or await self.attempt(target, item) != "delivered":
                return 0.0  # look at the queue again: the head changed, or waits for its retry
        return 0.0

    async def attempt(self, target: Target, item: OutboxItem) -> str:
        """One attempt at ``item`` (claimed), recorded; returns the outcome label."""
        result = await self._sender.send(
            target.endpoint.url, item.id, item.body.encode(), self._directory.secrets(target)
        )
        now = self._clock()
        outcome: str = result.outcome
        if result.outcome == "delivered":
            # The two writes are independent: together, they cost one round trip of waiting.
            await asyncio.gather(
                self._outbox.delivered(item.id, now=now, status=result.status),
                self._record(target, item, result, outcome, now),
            )
            self._metrics.queue_time.observe(max(0.0, now - item.seq))
            return outcome
        if result.outcome == "gone":
            # It stays at the head, due at once, for when the endpoint is enabled again.
            await self._outbox.retry_at(item.id, at=now, status=result.status, error=result.error)
            await self._disable(target, "gone", now)
        else:
            delay = self._policy.delay_after(item.attempts, retry_after=result.retry_after, rng=self._rng)
            if delay is None:
                outcome = "failed_final"
                await self._outbox.failed(item.id, status=result.status, error=result.error)
                await self._disable(target, "failing", now)
            else:
                await self._outbox.retry_at(item.id, at=now + delay, status=result.status, error=result.error)
        await self._record(target, item, result, outcome, now)
        return outcome

    async def _record(
        self, target: Target, item: OutboxItem, result: Attempt, outcome: str, now: float
    ) -> None:
        self._metrics.attempts.labels(outcome).inc()
        if result.status is not None:
            self._metrics.latency.observe(result.latency)
        await self._deliveries.record(
            DeliveryRecord(
                id=random_ids.token_hex(12),
                message_id=item.id,
                client_id=target.client_id,
                endpoint_id=target.endpoint.id,
                type=item.type,
                attempt=item.attempts,
                at=now,
                outcome=outcome,
                status=result.status,
                latency_ms=round(result.latency * 1000, 2),
                error=result.error,
            )
        )
        fields: dict[str, Any] = {
            "message_id": item.id,
            "endpoint": target.key,
            "type": item.type,
            "attempt": item.attempts,
            "status": result.status,
            "ms": round(result.latency * 1000, 2),
        }
        if outcome == "delivered":
            log.info("webhook_delivered", **fields)
        else:
            log.warning("webhook_attempt_failed", outcome=outcome, error=result.error, **fields)

    async def _disable(self, target: Target, reason: str, now: float) -> None:
        if await self._states.set(target.key, disabled=True, reason=reason, now=now):
            self._metrics.disabled.labels(target.client_id, target.endpoint.id).set(1)
            log.warning("webhook_endpoint_disabled", endpoint=target.key, reason=reason)


class Monitor:
    """Refreshes the gauges from MongoDB (the oldest due message, pending count, disabled endpoints)."""

    def __init__(
        self,
        outbox: OutboxStore,
        states: EndpointStates,
        directory: Directory,
        metrics: WebhookMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._states = states
        self._directory = directory
        self._metrics = metrics
        self._clock = clock

    async def refresh(self) -> None:
        """Read once and set every gauge."""
        states = await self._states.all()
        disabled = {key for key, state in states.items() if state.disabled}
        for target in self._directory.targets().values():
            self._metrics.disabled.labels(target.client_id, target.endpoint.id).set(
                1 if target.key in disabled else 0
            )
        now = self._clock()
        oldest = await self._outbox.oldest_due(now, skip=disabled)
        self._metrics.oldest_due.set(max(0.0, now - oldest.seq) if oldest else 0.0)
        self._metrics.pending.set(await self._outbox.pending())

    async def run(self, interval: float = 5.0) -> None:
        """:meth:`refresh` every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except PyMongoError as exc:
                log.info("webhook_metrics_unavailable", error=type(exc).__name__)
            await asyncio.sleep(interval)


class WebhookAdmin:
    """What the CLI (every client, ``client_id`` None) and the admin route (one client: its own
    endpoints only) may do: list endpoints and deliveries, replay, enable."""

    def __init__(
        self,
        outbox: OutboxStore,
        deliveries: DeliveryLog,
        states: EndpointStates,
        directory: Directory,
        *,
        notify: Callable[[str], None] = lambda _key: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._deliveries = deliveries
        self._states = states
        self._directory = directory
        self._notify = notify
        self._clock = clock

    def _targets(self, client_id: str | None) -> dict[str, Target]:
        return self._directory.targets(client_id)

    def _target(self, owner: str | None, endpoint_id: str, *, client_id: str | None = None) -> Target:
        """Endpoint ``endpoint_id`` of ``owner`` (the authenticated client; None: the CLI, which may
        name the ``client_id`` when two clients use the same endpoint id)."""
        for target in self._targets(owner).values():
            if target.endpoint.id == endpoint_id and (client_id is None or target.client_id == client_id):
                return target
        raise EndpointUnknown()

    async def endpoints(self, owner: str | None) -> list[dict[str, Any]]:
        """The declared endpoints with their state (the URL without credentials or query)."""
        states = await self._states.all()
        out = []
        for key, target in sorted(self._targets(owner).items()):
            state = states.get(key)
            disabled = state is not None and state.disabled
            out.append(
                {
                    "client_id": target.client_id,
                    "endpoint": target.endpoint.id,
                    "url": _display_url(target.endpoint.url),
                    "events": list(target.endpoint.events) or ["*"],
                    # declared off in the clients file, or disabled by the service (410, failing)
                    "enabled": target.endpoint.enabled and not disabled,
                    "declared_enabled": target.endpoint.enabled,
                    "disabled_reason": state.reason if state is not None and disabled else None,
                    "disabled_at": state.changed_at if state is not None and disabled else None,
                }
            )
        return out

    async def deliveries(
        self,
        owner: str | None,
        *,
        client_id: str | None = None,
        endpoint_id: str | None = None,
        message_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Attempts, newest first, of the caller's endpoints (of one endpoint, or one message)."""
        if endpoint_id is not None:
            keys: set[str] | None = {self._target(owner, endpoint_id, client_id=client_id).key}
        elif owner is not None or client_id is not None:
            keys = set(self._targets(owner or client_id))
        else:
            keys = None
        records = await self._deliveries.list(
            endpoints=keys, message_id=message_id, since=since, until=until, limit=limit
        )
        return [record.view() for record in records]

    async def _own_message(self, owner: str | None, message_id_: str) -> OutboxItem:
        item = await self._outbox.get(message_id_)
        if item is None or (owner is not None and item.endpoint not in self._targets(owner)):
            raise MessageUnknown()
        return item

    async def message(self, owner: str | None, message_id_: str) -> dict[str, Any]:
        """One message: its state and body."""
        item = await self._own_message(owner, message_id_)
        return {**item.view(), "body": item.body}

    async def replay_message(self, owner: str | None, message_id_: str) -> dict[str, Any]:
        """Send one message again (same ``webhook-id``), behind what is pending for its endpoint."""
        item = await self._own_message(owner, message_id_)
        replayed = await self._outbox.replay([item], now=self._clock())
        self._notify(item.endpoint)
        return {"message_id": item.id, "replayed": replayed, "state": "pending" if replayed else item.state}

    async def replay_range(
        self, owner: str | None, endpoint_id: str, *, since: float, until: float, client_id: str | None = None
    ) -> dict[str, Any]:
        """Send again every message of one endpoint recorded in ``[since, until)``, in order."""
        target = self._target(owner, endpoint_id, client_id=client_id)
        items = await self._outbox.in_range(target.key, since=since, until=until, limit=REPLAY_LIMIT)
        replayed = await self._outbox.replay(items, now=self._clock())
        self._notify(target.key)
        return {"endpoint": endpoint_id, "client_id": target.client_id, "replayed": replayed}

    async def enable(
        self, owner: str | None, endpoint_id: str, *, client_id: str | None = None
    ) -> dict[str, Any]:
        """Enable an endpoint the service disabled; its pending messages are sent at once."""
        target = self._target(owner, endpoint_id, client_id=client_id)
        now = self._clock()
        changed = await self._states.set(target.key, disabled=False, reason=None, now=now)
        resumed = await self._outbox.resume(target.key, now=now)
        self._notify(target.key)
        if changed:
            log.info("webhook_endpoint_enabled", endpoint=target.key, pending=resumed)
        return {"endpoint": endpoint_id, "client_id": target.client_id, "enabled": True, "pending": resumed}


def _display_url(url: str) -> str:
    """``url`` without user:password (never shown) and without its query (it may carry a token)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
