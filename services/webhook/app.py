"""Composition root of the webhook service: builds its clients and wires its handlers.

It serves no bus RPC: it consumes events (durable queues ``webhook.<event>``, so nothing is lost
while it is down), records them in its outbox and delivers them to the clients' endpoints over
HTTPS. Its HTTP side is the ops endpoints plus the admin route (services.webhook.admin).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp import web

from services.webhook.admin import ADMIN, setup_routes
from services.webhook.events import CONSUMED
from services.webhook.handlers import (
    Deliverer,
    Directory,
    EventRecorder,
    KeyUnavailable,
    Monitor,
    RetryPolicy,
    WebhookAdmin,
)
from services.webhook.metrics import WebhookMetrics
from services.webhook.sender import HttpSender
from services.webhook.ssrf import GuardedResolver, UrlGuard
from services.webhook.store import INDEXES, DeliveryLog, EndpointStates, OutboxStore
from shared.bus import MemoryBroker
from shared.clients import webhook_secret_problems
from shared.config import Settings
from shared.logging import get_logger
from shared.runtime import (
    BUS,
    CLIENTS,
    DB,
    REGISTRY,
    SETTINGS,
    Database,
    background,
    bus_context,
    clients_context,
    mongo_context,
    new_app,
)
from shared.subjects import subject_key

SERVICE = "webhook"
DELIVERER = web.AppKey("deliverer", Deliverer)
WEBHOOK_HTTP = web.AppKey("webhook_http", aiohttp.ClientSession)

log = get_logger(__name__)


def url_guard(settings: Settings) -> UrlGuard:
    """Where webhooks may go: ``WXLOGIN_WEBHOOK_HTTP_HOSTS``, ``WXLOGIN_WEBHOOK_ALLOWED_NETWORKS``."""
    return UrlGuard(settings.webhook_http_hosts, settings.webhook_allowed_networks)


def lease_seconds(settings: Settings) -> float:
    """How long a claimed message is held: longer than an attempt can take, then it lapses."""
    return settings.webhook_timeout_seconds * 1.5 + 1.0


def keep_seconds(settings: Settings) -> float:
    """``WXLOGIN_WEBHOOK_RETENTION_DAYS`` in seconds."""
    return settings.webhook_retention_days * 86400.0


def subject_key_source(settings: Settings) -> Callable[[], bytes]:
    """The subject key, read when a pairwise client first needs it (``KeyUnavailable`` without it)."""
    cache: list[bytes] = []

    def key() -> bytes:
        if not cache:
            try:
                cache.append(subject_key(settings))
            except ValueError as exc:
                raise KeyUnavailable(f"set WXLOGIN_SUBJECT_KEY (pairwise clients): {exc}") from None
        return cache[0]

    return key


def stores(db: Database, settings: Settings) -> tuple[OutboxStore, DeliveryLog, EndpointStates]:
    """The three stores over one database."""
    keep = keep_seconds(settings)
    return OutboxStore(db, keep_seconds=keep), DeliveryLog(db, keep_seconds=keep), EndpointStates(db)


def http_context(guard: UrlGuard) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: the outbound HTTP session whose resolver is the SSRF guard."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        resolver = GuardedResolver(guard)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, limit=100, ttl_dns_cache=60),
            trust_env=False,  # no proxy from the environment: it would connect, not us
            raise_for_status=False,
        )
        app[WEBHOOK_HTTP] = session
        try:
            yield
        finally:
            await session.close()
            await resolver.close()  # a resolver passed in is not the connector's to close

    return ctx


def create_app(
    settings: Settings,
    *,
    broker: MemoryBroker | None = None,
    clock: Callable[[], float] = time.time,
    environ: Mapping[str, str] | None = None,
) -> web.Application:
    """The webhook service as an aiohttp app (ops endpoints and the admin route).

    ``environ`` is where the endpoints' ``secret_envs`` are looked up (the process environment by
    default).
    """
    app = new_app(settings)
    guard = url_guard(settings)
    app.cleanup_ctx.extend(
        [mongo_context(INDEXES), bus_context(SERVICE, broker), clients_context, http_context(guard)]
    )

    async def handlers_ctx(app: web.Application) -> AsyncIterator[None]:
        settings, bus, db = app[SETTINGS], app[BUS], app[DB]
        registry = app[CLIENTS]
        directory = Directory(registry, environ)
        for problem in webhook_secret_problems(
            registry.all(), dict(environ) if environ is not None else None
        ):
            log.error("webhook_secret_problem", problem=problem)
        metrics = WebhookMetrics(app[REGISTRY])
        outbox, deliveries, states = stores(db, settings)
        deliverer = Deliverer(
            outbox,
            deliveries,
            states,
            directory,
            HttpSender(app[WEBHOOK_HTTP], guard, timeout=settings.webhook_timeout_seconds, clock=clock),
            RetryPolicy.from_settings(settings),
            metrics,
            # Operators see in a claimed message which host and process holds it.
            owner=f"{socket.gethostname()}/{os.getpid()}/{bus.instance}",
            lease=lease_seconds(settings),
            poll=settings.webhook_poll_seconds,
            clock=clock,
        )
        recorder = EventRecorder(
            outbox,
            directory,
            metrics,
            subject_key=subject_key_source(settings),
            notify=deliverer.notify,
            clock=clock,
        )
        app[DELIVERER] = deliverer
        app[ADMIN] = WebhookAdmin(outbox, deliveries, states, directory, notify=deliverer.notify, clock=clock)
        for event in CONSUMED:
            await bus.subscribe(event, recorder.on_event)
        background(app, deliverer.run(), "webhook-delivery")
        background(app, Monitor(outbox, states, directory, metrics, clock=clock).run(), "webhook-metrics")
        yield

    app.cleanup_ctx.append(handlers_ctx)
    setup_routes(app)
    return app
