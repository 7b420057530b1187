"""HTTP routes of the gateway (DESIGN §5): the browser's login API, the mini-program API, the pages."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, ValidationError

from services.gateway.auth import KeySet, bearer_token
from services.gateway.clientip import ClientIpResolver
from services.gateway.errors import (
    BadRequest,
    ClientUnknown,
    OriginNotAllowed,
    TicketInUrl,
    TicketRequired,
    UnsupportedMediaType,
)
from services.gateway.jsonbody import JSON_MEDIA_TYPE, loads
from services.gateway.limits import GatewayLimits
from services.gateway.longpoll import StatusPoller, StatusQuery, status_body
from services.gateway.origins import Origins
from services.gateway.store import IssuedHere
from services.gateway.ws import SocketEndpoint, origin_allowed, ticket_hash
from shared.clients import Client
from shared.errors import RemoteError
from shared.logging import get_logger
from shared.logincode import ALPHABET as LOGIN_CODE_ALPHABET
from shared.logincode import LENGTH as LOGIN_CODE_LENGTH
from shared.logincode import normalize as normalize_login_code
from shared.messages import (
    CancelReason,
    CancelScene,
    ClientIdField,
    CompleteLogin,
    ConfirmLogin,
    EnterLoginCode,
    IdentifyScanner,
    IssueLinkScene,
    IssueScene,
    Place,
    ScanInfo,
    ScanScene,
    SceneId,
    TokenPair,
)
from shared.runtime import BUS, CLIENTS, SETTINGS

log = get_logger(__name__)

STATIC = Path(__file__).parent / "static"
UNKNOWN_PLACE = Place(kind="unknown", label="未知位置 (unknown)")
KEYS = web.AppKey("keys", KeySet)
SOCKETS = web.AppKey("sockets", SocketEndpoint)
LIMITS = web.AppKey("limits", GatewayLimits)
CLIENT_IP = web.AppKey("client_ip", ClientIpResolver)
POLLER = web.AppKey("poller", StatusPoller)
ISSUED = web.AppKey("issued_here", IssuedHere)
ORIGINS = web.AppKey("origins", Origins)

M = TypeVar("M", bound=BaseModel)

TICKET_PATTERN = r"^[A-Za-z0-9_-]+$"
Ticket = Field(min_length=16, max_length=128, pattern=TICKET_PATTERN)


class IssueBody(BaseModel):
    """``POST /api/login/qrcode``: the registered client the login is for (none: the default client);
    a browser on a phone asks for a ``login_code`` to type and a ``url_link`` to open WeChat. With a
    ``link_token`` (from the site's backend: docs/linking.md) the code links an account instead."""

    model_config = ConfigDict(extra="ignore")
    client_id: ClientIdField | None = None
    login_code: StrictBool = False
    url_link: StrictBool = False
    link_token: str | None = Field(default=None, min_length=16, max_length=128, pattern=TICKET_PATTERN)


class CompleteBody(BaseModel):
    """``POST /api/login/complete``: ``client_id`` as the code was issued for (none: the default)."""

    model_config = ConfigDict(extra="ignore")
    scene: SceneId
    ticket: str = Ticket
    client_id: ClientIdField | None = None


# Printable ASCII, as WeChat's codes are; the bounds keep garbage out of the bus.
WxCode = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")


# A scan token the phone chose: at least 32 random bytes in base64url (43 characters), as ours are.
ChosenScanToken = Field(min_length=43, max_length=128, pattern=TICKET_PATTERN)


class ScanBody(BaseModel):
    """``POST /api/mp/scan``: ``code`` (from wx.login) lets the confirm skip the WeChat exchange;
    ``launch_scene`` is WeChat's launch scene of the page (1047: the camera scanned the code);
    ``scan_token``, random bytes the phone chose, makes a retry of the scan get the first one's answer
    (without it the gateway mints one, and a retry after a lost answer is ``already_scanned``)."""

    model_config = ConfigDict(extra="ignore")
    scene: SceneId
    code: Annotated[str, WxCode] | None = None
    launch_scene: Annotated[int, Field(ge=0, le=99999)] | None = None
    scan_token: Annotated[str, ChosenScanToken] | None = None


class CancelBody(BaseModel):
    """``POST /api/mp/cancel``: only the phone that scanned (it holds the scan token) may cancel;
    ``reason`` ``not_me`` (the 不是我 button) tells the browser the phone's user did not ask."""

    model_config = ConfigDict(extra="ignore")
    scene: SceneId
    scan_token: str = Ticket
    reason: CancelReason = "declined"


class ConfirmBody(BaseModel):
    """``POST /api/mp/confirm``: only the phone that scanned (it holds the scan token) may confirm."""

    model_config = ConfigDict(extra="ignore")
    scene: SceneId
    scan_token: str = Ticket
    # Required unless the scan sent one and answered ``identified: true``.
    code: Annotated[str, WxCode] | None = None


class EnterCodeBody(BaseModel):
    """``POST /api/mp/enter_code``: the login code typed on the phone (any case; spaces and dashes
    between groups are ignored) and a ``wx.login`` code, required: entries are counted per user."""

    model_config = ConfigDict(extra="ignore")
    login_code: str = Field(min_length=8, max_length=16, pattern=r"^[A-Za-z0-9 -]+$")
    code: Annotated[str, WxCode]
    # As in ScanBody: the phone's own scan token; a retry with it and the same code is answered again.
    scan_token: Annotated[str, ChosenScanToken] | None = None


async def read_body(request: web.Request, model: type[M]) -> M:
    """The JSON body validated as ``model`` (400 ``invalid_request``; 415 for a body of another type)."""
    if request.body_exists and request.content_type != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType()
    try:
        raw = await request.read()
    except ConnectionResetError:  # the client went away mid-body: nobody hears the answer
        raise BadRequest("the body was cut off") from None
    try:
        data = loads(raw or b"null")
    except ValueError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        raise BadRequest(f"invalid or missing fields: {fields}") from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """The query string validated as ``model`` (400 ``invalid_request`` otherwise)."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        raise BadRequest(f"invalid or missing parameters: {fields}") from None


def client_ip(request: web.Request) -> str:
    """The client's address: the socket peer, or what our trusted proxies say (``X-Forwarded-For``)."""
    return request.app[CLIENT_IP].for_request(request)


def registered_client(request: web.Request, client_id: str | None) -> Client:
    """The registered client ``client_id`` (the default client for None); 400 ``client_unknown``."""
    client = request.app[CLIENTS].get(client_id)
    if client is None:
        raise ClientUnknown()
    return client


def wire_client_id(request: web.Request, client: Client) -> str | None:
    """What the bus carries for ``client``: None for the default client (as before clients existed)."""
    return None if client.client_id == request.app[CLIENTS].default.client_id else client.client_id


def check_browser_call(request: web.Request, limit: str, client: Client | None = None) -> str:
    """A browser API call: an Origin, when sent, must be allowed; then the per-IP ``limit``.

    With ``client``, the Origin must be one of that client's web origins (or the issuer's own, the
    hosted login page); without, any registered client's. Browsers send Origin on every cross-site
    POST, so this stops other sites from spending a visitor's (and, through many visitors, the
    global) issue budget, or from starting logins in another site's name. Returns the client IP.
    """
    if "Origin" in request.headers:
        origins = request.headers.getall("Origin")
        rules = request.app[ORIGINS]
        if client is None:
            allowed = len(origins) == 1 and origin_allowed(origins[0], rules.all())
        else:
            allowed = len(origins) == 1 and rules.allows_for(client, origins[0])
        if not allowed:
            if client is None or client.client_id == request.app[CLIENTS].default.client_id:
                raise OriginNotAllowed()
            raise OriginNotAllowed(f"this origin is not among the web_origins of client {client.client_id}")
    ip = client_ip(request)
    request.app[LIMITS].check(limit, ip)
    return ip


def header_ticket(request: web.Request) -> str:
    """The ticket from ``X-Login-Ticket`` (401 when missing, 400 when malformed)."""
    ticket = request.headers.get("X-Login-Ticket", "")
    if not ticket:
        raise TicketRequired()
    if not (16 <= len(ticket) <= 128) or not re.match(TICKET_PATTERN, ticket):
        raise BadRequest("the login ticket is malformed")
    return ticket


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tokens_json(pair: TokenPair) -> dict[str, Any]:
    """The token response body (the only place tokens are unsealed for the wire)."""
    return {
        "access_token": pair.access_token.get_secret_value(),
        "token_type": pair.token_type,
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token.get_secret_value(),
        "user": pair.user.model_dump(exclude_none=True),
    }


# --- browser --------------------------------------------------------------------------------------


async def issue_qrcode(request: web.Request) -> web.Response:
    """``POST /api/login/qrcode [{client_id, login_code, url_link}]`` → 201 ``{scene, ticket, image,
    expires_at, expires_in, login_code?, url_link?}``.

    Also how a page gets a new code when its code expired or was cancelled: one more call. The code
    belongs to the client named (the default client when the body is absent or names none): the phone
    shows that client's site name, and only that client may collect the login. A browser on a phone,
    which cannot scan its own screen, asks for a login code to type (only this answer, to the holder
    of the ticket, ever carries it) and, when the operator turned URL Links on, a link to open WeChat.
    """
    body = await read_body(request, IssueBody) if request.body_exists else IssueBody()
    client = registered_client(request, body.client_id)
    ip = check_browser_call(request, "issue", client)
    ticket = secrets.token_urlsafe(32)
    common: dict[str, Any] = {
        "ticket_hash": ticket_hash(ticket),
        "ip": ip,
        "user_agent": request.headers.get("User-Agent", "")[:512],
        "client_id": wire_client_id(request, client),
        "with_login_code": body.login_code,
        "with_url_link": body.url_link,
    }
    # Read before the call: a scene is vouched for only if the bus did not break while it was issued.
    session = request.app[BUS].session
    if body.link_token is not None:  # a link code, bound to this ticket: the token is spent on it
        issued = await request.app[BUS].call(IssueLinkScene(link_token=SecretStr(body.link_token), **common))
    else:
        issued = await request.app[BUS].call(IssueScene(**common))
    # The browser's subscribe, when it comes here, is answered from what this gateway knows.
    request.app[ISSUED].add(issued.scene, common["ticket_hash"], issued.expires_at.timestamp(), session)
    expires_in = max(0, int((issued.expires_at - datetime.now(UTC)).total_seconds()))
    answer: dict[str, Any] = {
        "scene": issued.scene,
        "ticket": ticket,
        "image": issued.image,
        "expires_at": _iso(issued.expires_at),
        "expires_in": expires_in,
    }
    if issued.login_code is not None:
        answer["login_code"] = issued.login_code.get_secret_value()
    if issued.url_link is not None:
        answer["url_link"] = issued.url_link
    return web.json_response(answer, status=201)


async def complete_login(request: web.Request) -> web.Response:
    """``POST /api/login/complete {scene, ticket, client_id?}`` → tokens, once (for the client the
    code was issued for: another client's is 403 ``client_mismatch``)."""
    body = await read_body(request, CompleteBody)
    client = registered_client(request, body.client_id)
    check_browser_call(request, "poll", client)
    pair = await request.app[BUS].call(
        CompleteLogin(
            scene=body.scene,
            ticket_hash=ticket_hash(body.ticket),
            client_id=wire_client_id(request, client),
        )
    )
    return web.json_response(tokens_json(pair))


async def login_status(request: web.Request) -> web.Response:
    """``GET /api/login/status?scene=…&wait=25[&since=pending]`` with ``X-Login-Ticket``: long-poll."""
    check_browser_call(request, "poll")
    if "ticket" in request.query:
        raise TicketInUrl()
    query = parse_query(request, StatusQuery)
    ticket = header_ticket(request)
    try:
        state, reason = await request.app[POLLER].poll_status(
            query.scene, ticket_hash(ticket), wait=query.wait, since=query.since
        )
    except RemoteError as exc:
        if exc.error_code != "scene_not_found":
            raise
        body = {"scene": query.scene, "state": "unknown", "error": exc.to_wire()}
        return web.json_response(body, status=404)
    status, body = status_body(query.scene, state, reason)
    return web.json_response(body, status=status)


async def me(request: web.Request) -> web.Response:
    """``GET /api/me`` (Bearer): the user, from the verified token alone."""
    claims = await request.app[KEYS].verify(bearer_token(request.headers.get("Authorization")))
    user = {"id": claims["sub"], "openid": claims.get("openid")}
    user.update({k: claims[k] for k in ("unionid", "phone", "external_id") if claims.get(k)})
    return web.json_response(user)


async def jwks(request: web.Request) -> web.Response:
    """``GET /.well-known/jwks.json``."""
    keys = request.app[KEYS]
    if not keys.loaded:
        await keys.refresh(force=True)
    return web.json_response(keys.document(), headers={"Cache-Control": "public, max-age=300"})


# --- mini-program ---------------------------------------------------------------------------------


async def mp_scan(request: web.Request) -> web.Response:
    """``POST /api/mp/scan {scene, code?}`` → what the phone is about to approve, and its scan token.

    The scan token binds the scene to this phone: confirm and cancel must present it, so nobody
    else who saw the code can approve it (with their own account) or cancel it. Like the browser's
    ticket, only its hash crosses the bus. It is minted here unless the phone sent one of its own:
    then a retry of a scan whose answer was lost (same token) is answered as the first, where a
    token minted per request could only be refused ``already_scanned``.
    """
    ip = client_ip(request)
    request.app[LIMITS].check("mp", ip)
    body = await read_body(request, ScanBody)
    if body.code is not None:  # a jscode2session call: the same limit as /api/mp/login
        request.app[LIMITS].check("login", ip)
    scan_token = body.scan_token or secrets.token_urlsafe(32)
    scan_hash = ticket_hash(scan_token)
    info = await request.app[BUS].call(
        ScanScene(scene=body.scene, scan_hash=scan_hash, ip=ip, launch_scene=body.launch_scene)
    )
    identified, identify_error = False, None
    if body.code is not None:
        # Only now, with the scan won by this phone, may its code reach WeChat. A failure here does
        # not undo the scan: the confirm then carries a fresh code.
        try:
            reply = await request.app[BUS].call(
                IdentifyScanner(scene=body.scene, scan_hash=scan_hash, code=SecretStr(body.code))
            )
            identified = reply.identified
        except RemoteError as exc:
            identify_error = exc.error_code
            log.info("scan_not_identified", reason=exc.error_code)
    answer = scan_answer(scan_token, info, identified=identified, identify_error=identify_error)
    return web.json_response(answer)


async def mp_enter_code(request: web.Request) -> web.Response:
    """``POST /api/mp/enter_code {login_code, code}`` → ``{scene, …}`` and the rest as ``/api/mp/scan``.

    For a browser on the phone itself, which cannot be scanned: the user types the login code it
    shows into the mini-program, and that works as a scan of its scene, bound to this phone by a scan
    token. The wx.login ``code`` is required: entries are counted per WeChat user (and per IP here).
    """
    ip = client_ip(request)
    limits = request.app[LIMITS]
    limits.check("mp", ip)
    body = await read_body(request, EnterCodeBody)
    login_code = normalize_login_code(body.login_code)
    if login_code is None:
        raise BadRequest(f"a login code is {LOGIN_CODE_LENGTH} characters of {LOGIN_CODE_ALPHABET}")
    limits.check("code_entry", ip)
    limits.check("login", ip)  # a jscode2session call: the same limit as /api/mp/login
    scan_token = body.scan_token or secrets.token_urlsafe(32)
    entered = await request.app[BUS].call(
        EnterLoginCode(
            login_code=SecretStr(login_code),
            code=SecretStr(body.code),
            scan_hash=ticket_hash(scan_token),
            ip=ip,
        )
    )
    # The wx.login code was exchanged before the entry was looked at: the confirm needs none.
    answer = scan_answer(scan_token, entered.scan, identified=True)
    return web.json_response({"scene": entered.scene, **answer})


def scan_answer(
    scan_token: str, info: ScanInfo, *, identified: bool, identify_error: str | None = None
) -> dict[str, Any]:
    """What the phone is told after a scan (or a typed code): its scan token and what it approves."""
    return {
        "scan_token": scan_token,
        "identified": identified,
        **({"identify_error": identify_error} if identify_error else {}),
        "site": info.site,
        # Browser and OS as the browser reported them (its User-Agent); where it is, not its
        # address: anyone who sees the code may be the one scanning it (security review L2).
        "requester": {
            "browser": info.requester.browser,
            "os": info.requester.os,
            "location": _place(info.requester.location),
            "requested_at": _iso(info.requester.requested_at),
        },
        "phone": {"location": _place(info.scanner)},
        "location_mismatch": info.location_mismatch,
        "launch": info.launch,
        "expires_at": _iso(info.expires_at),
        # ``link``: the confirm links this WeChat to the site's account ``account_hint`` (no login).
        "purpose": info.purpose,
        **({"account_hint": info.account_hint} if info.purpose == "link" and info.account_hint else {}),
    }


def _place(place: Place | None) -> dict[str, str]:
    """A coarse location for the phone (a qrcode service that predates them sends none: unknown)."""
    return (place or UNKNOWN_PLACE).model_dump()


async def mp_confirm(request: web.Request) -> web.Response:
    """``POST /api/mp/confirm {scene, scan_token, code?}`` → ``{state: "confirmed"}``."""
    ip = client_ip(request)
    request.app[LIMITS].check("mp", ip)
    body = await read_body(request, ConfirmBody)
    if body.code is not None:  # a jscode2session call: the same limit as /api/mp/login
        request.app[LIMITS].check("login", ip)
    code = SecretStr(body.code) if body.code is not None else None
    result = await request.app[BUS].call(
        ConfirmLogin(scene=body.scene, scan_hash=ticket_hash(body.scan_token), code=code)
    )
    return web.json_response({"state": result.state})


async def mp_cancel(request: web.Request) -> web.Response:
    """``POST /api/mp/cancel {scene, scan_token, reason?}`` → ``{state: "cancelled"}``."""
    request.app[LIMITS].check("mp", client_ip(request))
    body = await read_body(request, CancelBody)
    status = await request.app[BUS].call(
        CancelScene(scene=body.scene, scan_hash=ticket_hash(body.scan_token), reason=body.reason)
    )
    return web.json_response({"state": status.state})


# --- pages ----------------------------------------------------------------------------------------


async def demo_page(request: web.Request) -> web.FileResponse:
    """``/``: the demo page (only with ``WXLOGIN_DEMO``)."""
    if not request.app[SETTINGS].demo:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / "index.html")


# The demo's OpenID Connect client (deploy/clients.demo.yaml): a public client, PKCE in the browser.
DEMO_CLIENT_ID = "wxlogin-demo"


async def demo_config(request: web.Request) -> web.Response:
    """``/demo/config.json``: where the simulated phone finds the WeChat simulator, and the demo's
    OpenID Connect client when it is registered."""
    settings = request.app[SETTINGS]
    if not settings.demo:
        raise web.HTTPNotFound()
    config = {"sim_url": settings.wechat_api_base, "site_name": settings.site_name}
    if request.app[CLIENTS].get(DEMO_CLIENT_ID) is not None:
        config["oidc_client_id"] = DEMO_CLIENT_ID
    return web.json_response(config)


# The SDK is public code that any site may load, also as a module script (which browsers fetch in
# CORS mode): no credentials are involved, so any origin may read it.
SDK_HEADERS = {"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"}
# The ES module is the script-tag build plus exports of what it defines: one source, no build step.
SDK_MODULE_TAIL = "\nexport default globalThis.WxLogin;\nexport const mount = globalThis.WxLogin.mount;\n"


async def sdk(request: web.Request) -> web.FileResponse:
    """``/sdk/wxlogin.js``: the browser SDK (a script that defines ``window.WxLogin``)."""
    return web.FileResponse(STATIC / "wxlogin.js", headers=SDK_HEADERS)


async def sdk_module(request: web.Request) -> web.Response:
    """``/sdk/wxlogin.mjs``: the same SDK as an ES module (``import WxLogin from …``)."""
    source = (STATIC / "wxlogin.js").read_text(encoding="utf-8")
    return web.Response(
        text=source + SDK_MODULE_TAIL, content_type="text/javascript", charset="utf-8", headers=SDK_HEADERS
    )


_STATIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


async def static_file(request: web.Request) -> web.FileResponse:
    """``/static/{filename}``: the demo page's files (flat; a name that is not a plain file is a 404).

    Not ``add_static``: a name too long for the file system made it a 500 (found by the fuzzer).
    """
    name = request.match_info["filename"]
    path = STATIC / name
    if not _STATIC_NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """``GET /api/login/ws``: see :mod:`services.gateway.ws`."""
    return await request.app[SOCKETS].handle(request)


def setup_routes(app: web.Application) -> None:
    """Every HTTP route of the gateway, in one place."""
    from services.gateway.identity import setup_identity_routes  # it builds on this module
    from services.gateway.linking import setup_linking_routes  # it builds on this module too
    from services.gateway.oidc import setup_oidc_routes  # it builds on this module too
    from services.gateway.openapi import openapi_json  # it describes this module's routes

    r = app.router
    r.add_post("/api/login/qrcode", issue_qrcode)
    r.add_get("/api/login/ws", websocket)
    r.add_get("/api/login/status", login_status)
    r.add_post("/api/login/complete", complete_login)
    r.add_get("/api/me", me)
    r.add_get("/.well-known/jwks.json", jwks)
    r.add_post("/api/mp/scan", mp_scan)
    r.add_post("/api/mp/enter_code", mp_enter_code)
    r.add_post("/api/mp/confirm", mp_confirm)
    r.add_post("/api/mp/cancel", mp_cancel)
    r.add_get("/", demo_page)
    r.add_get("/demo/config.json", demo_config)
    r.add_get("/sdk/wxlogin.js", sdk)
    r.add_get("/sdk/wxlogin.mjs", sdk_module)
    r.add_get("/static/{filename}", static_file)
    r.add_get("/openapi.json", openapi_json)
    setup_identity_routes(app)
    setup_oidc_routes(app)
    setup_linking_routes(app)
