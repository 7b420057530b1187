"""Composition root of the gateway: middlewares, routes, the push hub and its bus subscriptions."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter

from services.gateway.auth import KeySet
from services.gateway.clientip import ClientIpResolver
from services.gateway.errors import status_for
from services.gateway.handlers import PUSHED_EVENTS, CatchUp, PushHandlers
from services.gateway.limits import GatewayLimits
from services.gateway.longpoll import StatusPoller
from services.gateway.origins import Origins, origin_of
from services.gateway.routes import CLIENT_IP, ISSUED, KEYS, LIMITS, ORIGINS, POLLER, SOCKETS, setup_routes
from services.gateway.store import IssuedHere, SubscriptionStore
from services.gateway.ws import Hub, SocketEndpoint, WsMetrics, origin_allowed
from shared.bus import MemoryBroker, reset_correlation_id, set_correlation_id
from shared.config import Settings
from shared.errors import ServiceError
from shared.logging import bind_context, get_logger, unbind_context
from shared.messages import new_id
from shared.runtime import (
    BUS,
    CLIENTS,
    READY_CHECKS,
    REGISTRY,
    SETTINGS,
    bus_context,
    clients_context,
    new_app,
    on_drain,
)

SERVICE = "gateway"
HUB = web.AppKey("hub", Hub)
# Error answers by route, code and exact status: wxlogin_http_requests counts status classes only, so
# a 503 of an outage (rpc_timeout, bus_unavailable, store_unavailable...) and a 500 look alike there.
ERROR_ANSWERS = web.AppKey("error_answers", Counter)
MAX_BODY = 16 * 1024

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Browser-facing API paths that a site's own pages may call cross-origin.
_CORS_PREFIXES = (
    "/api/login/",
    "/api/link/complete",  # the browser of a link code; never the site backend's /api/link/requests
    "/api/token/",
    "/api/me",
    "/api/logout",
    "/.well-known/",
)
# OAuth endpoints a registered client's single-page app may call: granted to the clients' origins,
# but a foreign Origin is not refused here (servers call them too; the answer is an OAuth one).
_OAUTH_CORS_PATHS = frozenset({"/oidc/token", "/oidc/userinfo", "/oidc/revoke"})

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(code: str, message: str, status: int, retry_after: float | None = None) -> web.Response:
    """The JSON error body of DESIGN §5."""
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@web.middleware
async def correlation(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One trace id per request (``X-Request-ID`` if sane), bound to logs and bus messages."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else new_id()
    token = set_correlation_id(request_id)
    bind_context(correlation_id=request_id)
    try:
        response = await handler(request)
    finally:
        unbind_context(["correlation_id", "scene"])
        reset_correlation_id(token)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"error": {"code", "message"}}``; a 500 only when truly unexpected."""
    try:
        return await handler(request)
    except ServiceError as exc:
        status = status_for(exc.error_code)
        if status >= 500:
            log.warning(
                "request_failed",
                path=request.path,
                error_code=exc.error_code,
                status=status,
                reason=exc.message[:200],
            )
        _count_error(request, exc.error_code, status)
        response = error_response(exc.error_code, exc.message, status, exc.retry_after)
        if exc.error_code == "client_auth_required":  # a site's backend route (linking.py)
            response.headers["WWW-Authenticate"] = 'Basic realm="wxlogin", charset="UTF-8"'
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        _count_error(request, code, exc.status)
        response = error_response(code, exc.reason, exc.status)
        if "Allow" in exc.headers:  # a 405 says which methods the path has (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("request_crashed", path=request.path)
        _count_error(request, "internal", 500)
        return error_response("internal", "internal error", 500)


def _count_error(request: web.Request, code: str, status: int) -> None:
    counter = request.app.get(ERROR_ANSWERS)
    if counter is not None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        counter.labels(route, code, str(status)).inc()


# The ops endpoints new_app() adds; the load balancer refuses them (docs/deploy.md).
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def ops_exact_spelling(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The ops endpoints answer only their exact spelling (``GET /metrics``), never ``/%6Detrics``.

    aiohttp routes the percent-decoded path, so a balancer rule on the raw path could be walked
    around; this way the balancer refuses the one spelling the gateway serves, and the gateway the
    rest (docs/security.md, L3).
    """
    if request.path in OPS_PATHS and request.raw_path.partition("?")[0] != request.path:
        raise web.HTTPNotFound()
    return await handler(request)


def security_headers(settings: Settings) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Headers on every response; pages may not be framed and send no referrer."""
    # The demo page's phone talks to the simulator, its relying party to the issuer (another origin
    # when the demo is opened at another address).
    issuer = origin_of(settings.issuer)
    connect = "'self'" + (f" {settings.wechat_api_base} {issuer}" if settings.demo else "")
    form_action = "'self'" + (f" {issuer}" if settings.demo else "")
    csp = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action {form_action}"
    )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if response.prepared:  # WebSocket
            return response
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy", csp)
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return middleware


def cors(allowed: list[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """CORS for the browser API, only for the registered clients' origins and the issuer's own
    (``app[ORIGINS]``, read at every request: the clients file may change; ``allowed`` before the
    app has started)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        rules = request.app.get(ORIGINS)
        origins = rules.all() if rules is not None else allowed
        if request.path in _OAUTH_CORS_PATHS:
            if origin and origin_allowed(origin, origins):
                response: web.StreamResponse = (
                    web.Response(status=204) if request.method == "OPTIONS" else await handler(request)
                )
                if not response.prepared:
                    _grant(response, origin)
                return response
            return await handler(request)
        browser_api = request.path.startswith(_CORS_PREFIXES)
        if browser_api and origin and not origin_allowed(origin, origins):
            # Refused before any handler runs, and readable by the refused page (only this refusal
            # carries its origin), so the SDK can say which setting to change instead of a bare
            # "Failed to fetch". The preflight must pass for the page to see it.
            refusal = (
                web.Response(status=204)
                if request.method == "OPTIONS"
                else error_response(
                    "origin_not_allowed",
                    f"the origin {origin} is not in WXLOGIN_ALLOWED_ORIGINS of this login service",
                    403,
                )
            )
            _grant(refusal, origin)
            return refusal
        applies = browser_api and origin
        if request.method == "OPTIONS" and applies:
            response = web.Response(status=204)
        else:
            response = await handler(request)
        if applies and not response.prepared:
            _grant(response, str(origin))
        return response

    return middleware


def _grant(response: web.StreamResponse, origin: str) -> None:
    """Let the page at ``origin`` read ``response`` (no credentials: the API takes none)."""
    response.headers["Access-Control-Allow-Origin"] = origin
    if response.status == 204:
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, X-Login-Ticket"
        response.headers["Access-Control-Max-Age"] = "600"
    # The SDK waits out a 503/429 for as long as Retry-After says; a client of userinfo reads why its
    # token was refused.
    response.headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-ID, WWW-Authenticate"
    response.headers["Vary"] = "Origin"


def create_app(
    settings: Settings, *, broker: MemoryBroker | None = None, clock: Callable[[], float] = time.time
) -> web.Application:
    """The gateway as an aiohttp app; ``clock`` is what judges whether a scene issued here has expired."""
    app = new_app(
        settings,
        client_max_size=MAX_BODY,
        # cors outside errors: an error answer to an allowed origin must be readable by that page.
        middlewares=[
            correlation,
            cors(settings.allowed_origins),
            errors,
            ops_exact_spelling,
            security_headers(settings),
        ],
    )
    app[ERROR_ANSWERS] = Counter(
        "wxlogin_gateway_errors",
        "Error answers by route, error code and status (503: a dependency is down or timed out)",
        ["route", "code", "status"],
        registry=app[REGISTRY],
    )
    app.cleanup_ctx.append(bus_context(SERVICE, broker))
    app.cleanup_ctx.append(clients_context)  # app[CLIENTS], re-read on change and on SIGHUP

    async def handlers_ctx(app: web.Application) -> AsyncIterator[None]:
        settings, bus, clients = app[SETTINGS], app[BUS], app[CLIENTS]
        origins = Origins(clients, issuer=settings.issuer, allowed=settings.allowed_origins)
        app[ORIGINS] = origins
        hub = Hub(SubscriptionStore(), WsMetrics(app[REGISTRY]))
        app[HUB] = hub
        # Shutdown, first step: long-polls answer now and sockets close with 1001 (browsers move on).
        on_drain(app, hub.close)
        limits = GatewayLimits.from_settings(settings, app[REGISTRY])
        client_ip = ClientIpResolver(settings.trusted_proxies)
        app[LIMITS], app[CLIENT_IP] = limits, client_ip
        issued = IssuedHere(clock=clock, session=lambda: bus.session)
        app[ISSUED] = issued
        app[SOCKETS] = SocketEndpoint(
            hub,
            bus,
            origins.all,
            limits=limits,
            client_ip=client_ip,
            issued=issued,
        )
        on_drain(app, app[SOCKETS].close_all)
        app[POLLER] = StatusPoller(hub, bus, max_wait=settings.status_max_wait_seconds, issued=issued)
        # Access tokens of the browser API (WXLOGIN_JWT_ISSUER) and of OpenID Connect (the issuer),
        # for any registered client (the audience is the client's id).
        keys = KeySet(
            bus, issuer=settings.jwt_issuer, oidc_issuer=settings.issuer, audience=clients.audiences
        )
        app[KEYS] = keys
        await bus.subscribe_broadcast(list(PUSHED_EVENTS), PushHandlers(hub, issued).on_event)
        bus.on_reconnected(CatchUp(hub, bus))
        await keys.refresh(force=True)  # the session service may not be up yet; retried on demand

        async def keys_ready() -> bool:
            return keys.loaded or await keys.refresh()

        app[READY_CHECKS]["jwks"] = keys_ready
        yield

    app.cleanup_ctx.append(handlers_ctx)
    setup_routes(app)
    return app
