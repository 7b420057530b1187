"""Pieces every service's composition root assembles: resource contexts, the ops endpoints, shutdown.

Each resource is one aiohttp ``cleanup_ctx`` generator (built from settings, closed on shutdown);
every service serves ``/healthz`` (alive), ``/readyz`` (its dependencies answer) and ``/metrics``.

Graceful shutdown, in this order (aiohttp runs it on ``AppRunner.cleanup()``, i.e. after SIGTERM):

1. the listening socket is closed (aiohttp) and ``/readyz`` turns 503 (``draining``);
2. the ``on_drain`` hooks run: the gateway closes every WebSocket with 1001 "going away";
3. the bus stops consuming (RabbitMQ hands new work to other replicas);
4. HTTP requests and bus deliveries in flight get until one deadline
   (``WXLOGIN_SHUTDOWN_TIMEOUT_SECONDS`` after the signal); deliveries still running then are
   cancelled and requeued, requests are cancelled by aiohttp;
5. background tasks stop, then the resources close in reverse order: HTTP client, bus, MongoDB (the
   health monitor first; ``client.close()`` is bounded, so a gone MongoDB cannot hold the stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pymongo.asynchronous.database import AsyncDatabase

from shared.bus import AmqpBus, Bus, BusMetrics, MemoryBroker, MemoryBus
from shared.clients import ClientRegistry
from shared.config import Settings
from shared.logging import get_logger
from shared.mongo import Index, MongoHealth, close_client, ensure_indexes, make_client, wait_ready
from shared.sealing import Sealer

log = get_logger(__name__)

Database = AsyncDatabase[dict[str, Any]]
ReadyCheck = Callable[[], Awaitable[bool]]

SETTINGS = web.AppKey("settings", Settings)
BUS = web.AppKey("bus", Bus)
DB = web.AppKey("db", AsyncDatabase)
HTTP = web.AppKey("http", aiohttp.ClientSession)
REGISTRY = web.AppKey("registry", CollectorRegistry)
READY_CHECKS = web.AppKey("ready_checks", dict)
# Other services' registries, rendered by this app's /metrics too (the one-process `run all`).
EXTRA_REGISTRIES = web.AppKey("extra_registries", list)
CLIENTS = web.AppKey("clients", ClientRegistry)


class Shutdown:
    """Graceful-stop state of one app: the deadline, the draining flag, the requests in flight."""

    def __init__(self, timeout: float, registry: CollectorRegistry, service: str = "") -> None:
        self.service = ""
        self.timeout = timeout
        self.draining = False
        # Set when shutdown begins, for long waits (long-polls) that should answer now, not at the deadline.
        self.stopping = asyncio.Event()
        self.deadline: float | None = None
        self.on_drain: list[Callable[[], Awaitable[Any]]] = []
        self._requests: set[asyncio.Task[Any]] = set()
        self._draining_gauge = Gauge(
            "wxlogin_draining", "1 while this instance is shutting down", ["service"], registry=registry
        )
        self.inflight = Gauge(
            "wxlogin_http_inflight",
            "HTTP requests being handled (kind: http or websocket)",
            ["service", "kind"],
            registry=registry,
        )
        self.requests = Counter(
            "wxlogin_http_requests",
            "HTTP responses by route and status class",
            ["service", "route", "status"],
            registry=registry,
        )
        if service:
            self.name(service)

    def name(self, service: str) -> None:
        """Label this app's series with ``service`` (the first name given wins)."""
        if not self.service:
            self.service = service
            self._draining_gauge.labels(service).set(0)

    def begin(self) -> None:
        """Start the clock: everything in flight must finish by ``deadline``."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.timeout
            self.draining = True
            self.stopping.set()
            self._draining_gauge.labels(self.service).set(1)

    def remaining(self) -> float:
        """Seconds left until the deadline (the full timeout before shutdown began)."""
        if self.deadline is None:
            return self.timeout
        return max(0.0, self.deadline - time.monotonic())

    def track(self, task: asyncio.Task[Any]) -> None:
        """Count ``task`` (a request handler) as in flight until it ends."""
        self._requests.add(task)

    def untrack(self, task: asyncio.Task[Any]) -> None:
        """The request handled by ``task`` is done."""
        self._requests.discard(task)

    async def wait_for_requests(self) -> int:
        """Wait until no request is in flight or the deadline passes; returns how many remain."""
        pending = {t for t in self._requests if t is not asyncio.current_task()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.remaining())
        return len(pending)


SHUTDOWN = web.AppKey("shutdown", Shutdown)


def on_drain(app: web.Application, hook: Callable[[], Awaitable[Any]]) -> None:
    """Run ``hook`` first thing on shutdown, before the bus stops and in-flight work is awaited."""
    app[SHUTDOWN].on_drain.append(hook)


@web.middleware
async def track_requests(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Any:
    """Counts requests in flight (shutdown waits for them) and responses by route and status class."""
    shutdown = request.app[SHUTDOWN]
    task = asyncio.current_task()
    kind = "websocket" if request.headers.get("Upgrade", "").lower() == "websocket" else "http"
    gauge = shutdown.inflight.labels(shutdown.service, kind)
    if task is not None:
        shutdown.track(task)
    gauge.inc()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if shutdown.draining and not response.prepared:
            # No keep-alive while stopping: a request sent later on an idle connection would not be read.
            response.force_close()
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        gauge.dec()
        if task is not None:
            shutdown.untrack(task)
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        shutdown.requests.labels(shutdown.service, name, f"{status // 100}xx").inc()


async def graceful_stop(app: web.Application) -> None:
    """``on_shutdown``: the ordered stop described in this module's docstring (steps 2 to 4)."""
    shutdown = app[SHUTDOWN]
    shutdown.begin()
    log.info("shutdown_started", deadline_s=shutdown.timeout)
    for hook in shutdown.on_drain:
        try:
            await asyncio.wait_for(hook(), shutdown.remaining())
        except TimeoutError:
            log.warning("drain_hook_timed_out", hook=getattr(hook, "__qualname__", str(hook)))
        except Exception:  # one failing hook must not stop the rest of the shutdown
            log.exception("drain_hook_failed")
    bus = app.get(BUS)
    waits: list[Awaitable[int]] = [shutdown.wait_for_requests()]
    if bus is not None:
        waits.append(bus.drain(shutdown.remaining()))
    left = await asyncio.gather(*waits)
    log.info("shutdown_drained", requests_left=left[0], deliveries_requeued=sum(left[1:]))


def bus_sealer(settings: Settings) -> Sealer:
    """The sealer for secret fields on the bus (``WXLOGIN_BUS_KEY``)."""
    key = settings.bus_key.get_secret_value()
    if not key:
        raise RuntimeError("WXLOGIN_BUS_KEY is not set (every service must share the same key)")
    return Sealer.from_text(key)


def make_bus(
    settings: Settings,
    service: str,
    broker: MemoryBroker | None = None,
    *,
    metrics: BusMetrics | None = None,
) -> Bus:
    """The bus selected by ``WXLOGIN_AMQP_URL`` (``memory://`` needs the process's broker)."""
    sealer = bus_sealer(settings)
    if settings.embedded_bus:
        if broker is None:
            raise RuntimeError("the in-memory bus only works with all services in one process (run all)")
        return MemoryBus(broker, service, sealer, rpc_timeout=settings.rpc_timeout_seconds, metrics=metrics)
    return AmqpBus(
        settings.amqp_url,
        service,
        sealer,
        prefix=settings.bus_prefix,
        rpc_timeout=settings.rpc_timeout_seconds,
        queue_type=settings.bus_queue_type,
        metrics=metrics,
    )


def new_app(
    settings: Settings,
    *,
    service: str = "",
    client_max_size: int = 64 * 1024,
    middlewares: Iterable[Any] = (),
    **kwargs: Any,
) -> web.Application:
    """An application with the shared keys set, the ops routes added and graceful shutdown wired."""
    app = web.Application(
        client_max_size=client_max_size, middlewares=[track_requests, *middlewares], **kwargs
    )
    app[SETTINGS] = settings
    app[REGISTRY] = CollectorRegistry(auto_describe=True)
    app[READY_CHECKS] = {}
    app[EXTRA_REGISTRIES] = []
    app[SHUTDOWN] = Shutdown(settings.shutdown_timeout_seconds, app[REGISTRY], service)
    # First on_shutdown handler: runs before any registered later (background tasks stop after it).
    app.on_shutdown.append(graceful_stop)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def bus_context(
    service: str, broker: MemoryBroker | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: connect the bus on start-up, close it on shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[SHUTDOWN].name(service)  # for apps whose new_app() was not given it
        bus = make_bus(app[SETTINGS], service, broker, metrics=BusMetrics(app[REGISTRY], service))
        await bus.start()
        app[BUS] = bus
        app[READY_CHECKS]["bus"] = _bus_ready(bus)
        try:
            yield
        finally:
            await bus.close()

    return ctx


def _bus_ready(bus: Bus) -> ReadyCheck:
    async def check() -> bool:
        return bus.connected

    return check


# Up to this long for ``client.close()`` on shutdown, MongoDB gone or not (shared.mongo.close_client).
MONGO_CLOSE_TIMEOUT = 2.0
STORE_MONITOR = web.AppKey("store_monitor", MongoHealth)


def selection_timeout_ms(settings: Settings) -> int:
    """How long a MongoDB operation waits for a server: two thirds of the RPC timeout (0.5 to 5 s), so
    a caller hears ``store_unavailable`` during an outage, not its own timeout."""
    return int(1000 * min(5.0, max(0.5, settings.rpc_timeout_seconds * 2 / 3)))


class _StoreUpCollector:
    """``wxlogin_store_up{service}``: 1 while this instance's MongoDB answers its health pings, else 0.

    Labelled at scrape time, so it carries the service name given by ``bus_context`` (which runs after
    ``mongo_context``)."""

    def __init__(self, app: web.Application, monitor: MongoHealth) -> None:
        self._app = app
        self._monitor = monitor

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "wxlogin_store_up", "1 while MongoDB answers this instance's health pings", labels=["service"]
        )
        family.add_metric([self._app[SHUTDOWN].service], 1.0 if self._monitor.up else 0.0)
        return [family]


def mongo_context(indexes: Sequence[Index]) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: connect to MongoDB, create ``indexes``, watch it, close on shutdown.

    One :class:`~shared.mongo.MongoHealth` monitor pings every second with PyMongo's own timeout;
    ``/readyz`` (check ``mongo``) and ``wxlogin_store_up`` read its verdict, so a readiness probe never
    runs, let alone cancels, a MongoDB operation (see shared.mongo on the wedged-client bug that caused).
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        if not settings.mongo_url:
            raise RuntimeError("WXLOGIN_MONGO_URL is not set")
        client = make_client(settings.mongo_url, selection_timeout_ms=selection_timeout_ms(settings))
        monitor: MongoHealth | None = None
        try:
            await wait_ready(client)
            db = client[settings.mongo_db]
            await ensure_indexes(db, indexes)
            app[DB] = db
            monitor = MongoHealth(db)
            app[STORE_MONITOR] = monitor
            app[REGISTRY].register(_StoreUpCollector(app, monitor))
            app[READY_CHECKS]["mongo"] = monitor.check
            monitor.start()
            yield
        finally:
            if monitor is not None:
                await monitor.stop()
            await close_client(client, timeout=MONGO_CLOSE_TIMEOUT)

    return ctx


async def http_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: one aiohttp client session for outbound calls (WeChat)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
        trust_env=False,
        raise_for_status=False,
    )
    app[HTTP] = session
    try:
        yield
    finally:
        await session.close()


async def stop_task(task: asyncio.Future[Any], *, timeout: float = 5.0) -> bool:
    """Cancel ``task`` and wait until it has ended; False if it still runs after ``timeout`` seconds.

    It cancels again every 0.25 s while the task runs. On Python 3.11 a cancellation that arrives just
    as an inner ``asyncio.wait_for`` completes is swallowed (CPython gh-86296, fixed in 3.12); PyMongo
    awaits ``wait_for`` inside every operation, so a loop of ours could lose its one cancel there and
    go back to sleep, and a plain ``cancel(); await task`` then waits forever (seen: a test run hung in
    the session service's shutdown).

    A cancel that lands inside a PyMongo call can, on 3.11, also wedge that client for good (see
    shared.mongo): this is only for shutdown, after which the client is closed with a bound
    (:func:`~shared.mongo.close_client`). Never use it, or ``asyncio.wait_for``, to time-limit a
    MongoDB operation of a running service; use ``pymongo.timeout``.
    """
    deadline = time.monotonic() + timeout
    while not task.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("task_did_not_stop", task=getattr(task, "get_name", lambda: "?")())
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.25, remaining))
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it again; background() logs crashes
    return True


# SIGHUP ("re-read your files"): one handler per event loop runs every hook registered on it, so each
# service of the one-process ``run all`` reloads.
_RELOAD_HOOKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callable[[], Any]]] = (
    weakref.WeakKeyDictionary()
)


def _run_reload_hooks(loop: asyncio.AbstractEventLoop) -> None:
    log.info("reload_signal")
    for hook in list(_RELOAD_HOOKS.get(loop, [])):
        try:
            hook()
        except Exception:  # one failing reload must not stop the others
            log.exception("reload_hook_failed")


def on_reload_signal(hook: Callable[[], Any]) -> Callable[[], None]:
    """Call ``hook`` (synchronous) on SIGHUP until the returned function is called.

    Where the loop cannot handle signals (not the main thread, Windows) nothing is installed and the
    hook never runs; files watched by polling (:meth:`~shared.clients.ClientRegistry.watch`) are
    still re-read when they change.
    """
    loop = asyncio.get_running_loop()
    hooks = _RELOAD_HOOKS.setdefault(loop, [])
    if not hooks:
        try:
            loop.add_signal_handler(signal.SIGHUP, _run_reload_hooks, loop)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            log.info("reload_signal_unavailable")
    hooks.append(hook)

    def remove() -> None:
        if hook in hooks:
            hooks.remove(hook)
        if not hooks and not loop.is_closed():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
                loop.remove_signal_handler(signal.SIGHUP)

    return remove


async def clients_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the registered clients (:mod:`shared.clients`) as ``app[CLIENTS]``, re-read when
    ``WXLOGIN_CLIENTS_FILE`` changes and on SIGHUP. An invalid file stops the start-up; one that turns
    invalid later is logged and ignored (the clients read last stay in force)."""
    registry = ClientRegistry.from_settings(app[SETTINGS])
    app[CLIENTS] = registry
    watcher = asyncio.ensure_future(registry.watch()) if app[SETTINGS].clients_file else None
    remove_hook = on_reload_signal(lambda: registry.reload(force=True))
    try:
        yield
    finally:
        remove_hook()
        if watcher is not None:
            await stop_task(watcher)


def background(app: web.Application, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
    """Run ``coro`` for the life of the app; it is cancelled on shutdown, crashes are logged."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)

    def done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("background_task_crashed", task=name, exc_info=t.exception())

    task.add_done_callback(done)

    async def stop(_app: web.Application) -> None:
        await stop_task(task)

    app.on_shutdown.append(stop)
    return task


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """Ready: every registered dependency check passes and the app is not shutting down (503 otherwise)."""
    if request.app[SHUTDOWN].draining:
        return web.json_response(
            {"status": "draining", "checks": {}}, status=503, headers={"Retry-After": "5"}
        )
    checks: dict[str, ReadyCheck] = request.app[READY_CHECKS]
    results: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            results[name] = bool(await asyncio.wait_for(check(), 2.0))
        except Exception:  # a readiness probe must answer, whatever the dependency does
            log.warning("ready_check_failed", check=name, exc_info=True)
            results[name] = False
    ok = bool(results) and all(results.values())
    return web.json_response(
        {"status": "ready" if ok else "not_ready", "checks": results},
        status=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )


class _Merged:
    """Several registries as one collector: a metric family present in more than one (the shared
    ``wxlogin_bus_*`` metrics of ``run all``) is rendered once, with the samples of all."""

    def __init__(self, registries: Sequence[CollectorRegistry]) -> None:
        self._registries = registries

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for registry in self._registries:
            for family in registry.collect():
                if family.name in families:
                    families[family.name].samples.extend(family.samples)
                else:
                    merged = copy.copy(family)
                    merged.samples = list(family.samples)
                    families[family.name] = merged
        return families.values()


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format of this service's registry (and any others attached)."""
    body = generate_latest(_Merged([request.app[REGISTRY], *request.app[EXTRA_REGISTRIES]]))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class AccessLogger(AbstractAccessLogger):
    """aiohttp access log through structlog, without query strings (they may carry secrets)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info(
            "http_request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round(time * 1000, 2),
            remote=request.remote,
        )
