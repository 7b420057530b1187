"""Account linking's HTTP face (docs/linking.md): the site's backend opens link requests, asks how they
stand and removes links, authenticated as its client (HTTP Basic with the client id and secret, as at
``/oidc/token``; public clients cannot); the browser that showed a link code collects its outcome.

A link code is issued by ``POST /api/login/qrcode`` with the request's ``link_token`` (routes.py); the
WebSocket and the long-poll watch it as any code. The session service holds the state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.errors import BadRequest, ClientAuthRequired
from services.gateway.routes import (
    LIMITS,
    CompleteBody,
    check_browser_call,
    client_ip,
    read_body,
    registered_client,
    wire_client_id,
)
from services.gateway.ws import ticket_hash
from shared.clients import Client, MalformedCredentials, basic_credentials
from shared.messages import (
    AccountHint,
    CompleteLink,
    ExternalId,
    GetLinkStatus,
    LinkRequestId,
    OpenLink,
    Unlink,
)
from shared.runtime import BUS, CLIENTS

MAX_CREDENTIAL = 512


class LinkRequestBody(BaseModel):
    """``POST /api/link/requests``: the site's account to link (its own id for it, printable ASCII
    without spaces) and how the phone names it (a masked name or e-mail, up to 40 characters)."""

    model_config = ConfigDict(extra="ignore")
    external_id: ExternalId
    hint: AccountHint


class LinkPath(BaseModel):
    """``/api/link/requests/{link_request}``."""

    link_request: LinkRequestId


class UnlinkTarget(BaseModel):
    """``DELETE /api/links/{external_id}[?sub=…]``: every link of the account, or one WeChat user's."""

    external_id: ExternalId
    sub: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _credentials(header: str) -> tuple[str, str]:
    """``Authorization: Basic`` → (client_id, secret)."""
    try:
        credentials = basic_credentials(header)
    except MalformedCredentials:
        raise ClientAuthRequired("malformed Basic credentials") from None
    if credentials is None:
        raise ClientAuthRequired()
    return credentials


def site_backend(request: web.Request) -> Client:
    """The confidential client whose id and secret the request carries (HTTP Basic); 401
    ``client_auth_required`` otherwise (unknown client, wrong secret, a public client: one answer)."""
    request.app[LIMITS].check("session", client_ip(request))
    client_id, secret = _credentials(request.headers.get("Authorization", ""))
    client = request.app[CLIENTS].get(client_id) if 0 < len(client_id) <= 64 else None
    if client is None or client.public or len(secret) > MAX_CREDENTIAL or not client.check_secret(secret):
        raise ClientAuthRequired("client authentication failed")
    return client


def _path(request: web.Request, model: type[BaseModel], **values: Any) -> Any:
    try:
        return model.model_validate(values)
    except ValueError:
        raise BadRequest(f"invalid {', '.join(values)}") from None


async def open_link_request(request: web.Request) -> web.Response:
    """``POST /api/link/requests {external_id, hint}`` (client auth) → 201 ``{link_request, link_token,
    expires_at, expires_in}``: hand ``link_token`` to the signed-in user's page (the SDK's link mode)."""
    client = site_backend(request)
    body = await read_body(request, LinkRequestBody)
    opened = await request.app[BUS].call(
        OpenLink(client_id=client.client_id, external_id=body.external_id, hint=body.hint)
    )
    expires_in = max(0, int((opened.expires_at - datetime.now(UTC)).total_seconds()))
    return web.json_response(
        {
            "link_request": opened.link_request,
            "link_token": opened.link_token.get_secret_value(),
            "expires_at": _iso(opened.expires_at),
            "expires_in": expires_in,
        },
        status=201,
    )


async def link_request_status(request: web.Request) -> web.Response:
    """``GET /api/link/requests/{link_request}`` (client auth) → ``{link_request, state, reason?,
    external_id, expires_at, linked_at?, sub?}``; another client's request is 404."""
    client = site_backend(request)
    path = _path(request, LinkPath, link_request=request.match_info["link_request"])
    status = await request.app[BUS].call(
        GetLinkStatus(client_id=client.client_id, link_request=path.link_request)
    )
    answer: dict[str, Any] = {
        "link_request": status.link_request,
        "state": status.state,
        "external_id": status.external_id,
        "expires_at": _iso(status.expires_at),
    }
    if status.reason is not None:
        answer["reason"] = status.reason
    if status.linked_at is not None:
        answer["linked_at"] = _iso(status.linked_at)
    if status.sub is not None:
        answer["sub"] = status.sub
    return web.json_response(answer)


async def unlink(request: web.Request) -> web.Response:
    """``DELETE /api/links/{external_id}[?sub=…]`` (client auth) → ``{external_id, unlinked}``; an
    account without links is 404 ``link_not_found``."""
    client = site_backend(request)
    target = _path(
        request,
        UnlinkTarget,
        external_id=request.match_info["external_id"],
        **({"sub": request.query["sub"]} if "sub" in request.query else {}),
    )
    done = await request.app[BUS].call(
        Unlink(client_id=client.client_id, external_id=target.external_id, sub=target.sub)
    )
    return web.json_response({"external_id": target.external_id, "unlinked": done.unlinked})


async def complete_link(request: web.Request) -> web.Response:
    """``POST /api/link/complete {scene, ticket, client_id?}`` → ``{state: "linked", scene,
    link_request}``: the browser that showed the link code, once the phone confirmed. No token: the
    site's own session stays what it was."""
    body = await read_body(request, CompleteBody)
    client = registered_client(request, body.client_id)
    check_browser_call(request, "poll", client)
    done = await request.app[BUS].call(
        CompleteLink(
            scene=body.scene, ticket_hash=ticket_hash(body.ticket), client_id=wire_client_id(request, client)
        )
    )
    return web.json_response({"state": done.state, "scene": done.scene, "link_request": done.link_request})


def setup_linking_routes(app: web.Application) -> None:
    """The account-linking routes."""
    r = app.router
    r.add_post("/api/link/requests", open_link_request)
    r.add_get("/api/link/requests/{link_request}", link_request_status)
    r.add_delete("/api/links/{external_id}", unlink)
    r.add_post("/api/link/complete", complete_link)
