"""The webhook service's admin HTTP route, on its own port beside ``/healthz``, ``/readyz`` and
``/metrics``: a site's backend, authenticated as its client (HTTP Basic: client id and client
secret, checked with ``Client.check_secret``), lists its endpoints and their delivery log, replays one
message or a time range, and enables an endpoint the service disabled. A client sees only its own
endpoints; anything else is answered as unknown (404). Answers are JSON; errors
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from pymongo.errors import PyMongoError

from services.webhook.errors import ClientAuthRequired
from services.webhook.handlers import WebhookAdmin
from shared.clients import Client, MalformedCredentials, basic_credentials
from shared.errors import InvalidRequest, ServiceError, StoreUnavailable
from shared.logging import get_logger
from shared.runtime import CLIENTS

log = get_logger(__name__)

ADMIN = web.AppKey("webhook_admin", WebhookAdmin)

STATUS_BY_CODE = {
    "invalid_request": 400,
    "client_auth_required": 401,
    "webhook_endpoint_unknown": 404,
    "webhook_message_unknown": 404,
    "store_unavailable": 503,
}
MAX_LIMIT = 1000

Handler = Callable[[web.Request, Client], Awaitable[Any]]


def parse_time(value: str | None, name: str) -> float | None:
    """``since``/``until``: epoch seconds or ISO 8601 with a time zone (raises ``InvalidRequest``)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name}: epoch seconds or ISO 8601, e.g. 2025-05-01T08:00:00+08:00") from None
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{name}: give a time zone (Z or +08:00)")
    return parsed.timestamp()


def _error(exc: ServiceError) -> web.Response:
    status = STATUS_BY_CODE.get(exc.error_code, 500)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="wxlogin webhooks", charset="UTF-8"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(max(1, exc.retry_after)))
    return web.json_response({"error": exc.to_wire()}, status=status, headers=headers)


def authenticate(request: web.Request) -> Client:
    """The client named by HTTP Basic whose secret matches (``client_auth_required`` otherwise).

    Id and secret are form-urlencoded before base64, as OAuth 2.0 (RFC 6749 §2.3.1) asks of client
    credentials; public clients (no secret) cannot use this route.
    """
    try:
        credentials = basic_credentials(request.headers.get("Authorization", ""))
    except MalformedCredentials:
        raise ClientAuthRequired() from None
    if credentials is None:
        raise ClientAuthRequired()
    client_id, secret = credentials
    client = request.app[CLIENTS].get(client_id)
    if client is None or not client.check_secret(secret):
        log.info("webhook_admin_auth_failed", client_id=client_id[:64])
        raise ClientAuthRequired("unknown client or wrong secret")
    return client


def _as_client(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            client = authenticate(request)
            return web.json_response(await handler(request, client), headers={"Cache-Control": "no-store"})
        except ServiceError as exc:
            return _error(exc)
        except PyMongoError as exc:
            log.warning("webhook_admin_store_unavailable", error=type(exc).__name__)
            return _error(StoreUnavailable(retry_after=2))

    return wrapped


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


def _limit(value: str | None) -> int:
    if value is None:
        return 100
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidRequest(f"limit: a whole number from 1 to {MAX_LIMIT}")
    return int(value)


async def list_endpoints(request: web.Request, client: Client) -> Any:
    """GET /webhooks/endpoints: the client's endpoints and whether they are enabled."""
    return {"endpoints": await request.app[ADMIN].endpoints(client.client_id)}


async def list_deliveries(request: web.Request, client: Client) -> Any:
    """GET /webhooks/deliveries?endpoint=&message_id=&since=&until=&limit=: attempts, newest first."""
    query = request.query
    deliveries = await request.app[ADMIN].deliveries(
        client.client_id,
        endpoint_id=query.get("endpoint") or None,
        message_id=query.get("message_id") or None,
        since=parse_time(query.get("since"), "since"),
        until=parse_time(query.get("until"), "until"),
        limit=_limit(query.get("limit")),
    )
    return {"deliveries": deliveries}


async def get_message(request: web.Request, client: Client) -> Any:
    """GET /webhooks/messages/{message_id}: one message, its state and body."""
    return await request.app[ADMIN].message(client.client_id, request.match_info["message_id"])


async def replay_message(request: web.Request, client: Client) -> Any:
    """POST /webhooks/messages/{message_id}/replay: send it again (same webhook-id)."""
    return await request.app[ADMIN].replay_message(client.client_id, request.match_info["message_id"])


async def replay_range(request: web.Request, client: Client) -> Any:
    """POST /webhooks/endpoints/{endpoint}/replay {since, until?}: send a time range again."""
    body = await _body(request)
    since = parse_time(_text(body.get("since")), "since")
    if since is None:
        raise InvalidRequest("since is required")
    until = parse_time(_text(body.get("until")), "until") or time.time()
    if until <= since:
        raise InvalidRequest("until must be after since")
    return await request.app[ADMIN].replay_range(
        client.client_id, request.match_info["endpoint"], since=since, until=until
    )


async def enable_endpoint(request: web.Request, client: Client) -> Any:
    """POST /webhooks/endpoints/{endpoint}/enable: resume an endpoint the service disabled."""
    return await request.app[ADMIN].enable(client.client_id, request.match_info["endpoint"])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    raise InvalidRequest("since and until are strings (ISO 8601) or numbers (epoch seconds)")


def setup_routes(app: web.Application) -> None:
    """Every admin route, in one place."""
    app.router.add_get("/webhooks/endpoints", _as_client(list_endpoints))
    app.router.add_post("/webhooks/endpoints/{endpoint}/enable", _as_client(enable_endpoint))
    app.router.add_post("/webhooks/endpoints/{endpoint}/replay", _as_client(replay_range))
    app.router.add_get("/webhooks/deliveries", _as_client(list_deliveries))
    app.router.add_get("/webhooks/messages/{message_id}", _as_client(get_message))
    app.router.add_post("/webhooks/messages/{message_id}/replay", _as_client(replay_message))
