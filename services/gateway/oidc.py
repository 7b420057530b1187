"""The OpenID Connect provider's HTTP face: discovery, authorization (and the hosted login page), token,
userinfo, RP-initiated logout and revocation. The session service holds the state (codes, OP sessions,
tokens: the ``session.*`` OpenID Connect RPCs); this module checks what a browser or a relying party
sends, authenticates clients, and speaks OAuth.

- The OAuth endpoints (token, userinfo, revoke) answer RFC 6749 §5.2 / RFC 6750 §3 error bodies
  (``{"error", "error_description"}``), not the ``{"error": {"code"…}}`` of the rest of the API, and
  never a 500: a dependency down is 503 ``temporarily_unavailable`` with ``Retry-After``.
- The authorization endpoint checks ``client_id`` and ``redirect_uri`` first: an unknown client or an
  unregistered URI is a 400 HTML page, never a redirect. Every later error goes back to the
  ``redirect_uri`` with ``error``, ``error_description``, ``state`` and ``iss`` (RFC 9207).
- The hosted login page runs no inline script (its CSP allows scripts from 'self' and the code image
  as ``data:``): ``/static/oidc-login.js`` mounts the SDK with the client's id, and on ``confirmed``
  posts ``/oidc/authorize/complete``, which re-checks the authorization request exactly as
  ``/oidc/authorize`` did and answers where to go.
- The OP session cookie (``__Host-wxlogin_op``; ``wxlogin_op`` for a plain-http issuer in
  development) holds a 256-bit id the session service minted and stores only hashed.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from services.gateway.auth import bearer_token
from services.gateway.errors import BadRequest, OriginNotAllowed, Unauthorized, status_for
from services.gateway.origins import origin_of
from services.gateway.routes import KEYS, LIMITS, STATIC, Ticket, client_ip, read_body
from services.gateway.ws import ticket_hash
from shared.clients import SCOPES, Client, ClientRegistry, MalformedCredentials, basic_credentials
from shared.config import Settings
from shared.errors import RemoteError, ServiceError
from shared.logging import get_logger
from shared.messages import (
    AuthorizationRequest,
    Authorize,
    EndOpSession,
    ExchangeGrant,
    GetUserInfo,
    RevokeToken,
    SceneId,
)
from shared.runtime import BUS, CLIENTS, SETTINGS

log = get_logger(__name__)

# --- limits of what we accept ---------------------------------------------------------------------

MAX_PARAM = 2048  # any one parameter (a redirect URI, a state)
MAX_FIELDS = 40  # parameters in one request
MAX_NONCE = 512
MAX_SECRET = 512
MAX_TOKEN = 4096
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")  # base64url of a SHA-256 (43) and room to spare
_OP_SESSION = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_MAX_AGE = re.compile(r"^[0-9]{1,10}$")
_SID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Codes of a dependency that is down or busy: the caller should try again (RFC 6749's
# temporarily_unavailable), never a 500.
_RETRY_STATUSES = frozenset({429, 503})
# What the token endpoint passes on as it is; other refusals of the session service are the grant's.
_TOKEN_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    }
)
# How the hosted page and the error pages say things (ui_locales: zh-CN by default, or en).
TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "lang": "zh-CN",
        "title": "{site} · 微信扫码登录",
        "lead": "请使用微信扫码登录",
        "back": "登录后将返回 {host}",
        "cancel": "取消登录",
        "noscript": "请启用 JavaScript 以显示登录二维码。",
        "error_title": "无法登录",
        "unknown_client": "该网站没有注册（未知的 client_id），无法登录。",  # noqa: RUF001
        "no_client": "请求缺少 client_id。",
        "bad_redirect": "回调地址 redirect_uri 没有为该网站注册，或缺失。为安全起见，不会跳转。",  # noqa: RUF001
        "bad_request": "请求参数有误：{detail}",  # noqa: RUF001
        "logout_title": "退出登录",
        "logout_question": "确定要退出微信扫码登录吗？",  # noqa: RUF001
        "logout_site": "退出后将返回 {site}。",
        "logout_button": "退出登录",
        "signed_out": "已退出登录。",
        "signed_out_title": "已退出",
        "logout_error": "无法完成退出：{detail}",  # noqa: RUF001
    },
    "en": {
        "lang": "en",
        "title": "Log in to {site} with WeChat",
        "lead": "Scan with WeChat to log in",
        "back": "After logging in you return to {host}",
        "cancel": "Cancel",
        "noscript": "Please enable JavaScript to show the login code.",
        "error_title": "Cannot log in",
        "unknown_client": "This site is not registered (unknown client_id).",
        "no_client": "The request has no client_id.",
        "bad_redirect": "The redirect_uri is missing or not registered for this site. For your safety, you "
        "are not sent back.",
        "bad_request": "The request is not valid: {detail}",
        "logout_title": "Log out",
        "logout_question": "Log out of WeChat scan login?",
        "logout_site": "You will return to {site}.",
        "logout_button": "Log out",
        "signed_out": "You have been logged out.",
        "signed_out_title": "Logged out",
        "logout_error": "The logout could not be done: {detail}",
    },
}
# The pages' own policies: scripts and styles from this origin only, the code image as data:, no
# framing. The hosted page talks to this origin only (its WebSocket too).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PLAIN_PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


# --- small helpers --------------------------------------------------------------------------------


def issuer(request: web.Request) -> str:
    """The issuer: ``WXLOGIN_ISSUER_URL``, or the local gateway in development."""
    return request.app[SETTINGS].issuer


def cookie_name(settings: Settings) -> str:
    """``__Host-wxlogin_op`` with an https issuer; ``wxlogin_op`` for plain http (development), since
    browsers refuse a ``__Host-`` cookie without ``Secure``."""
    return "__Host-wxlogin_op" if settings.issuer.startswith("https://") else "wxlogin_op"


def op_session_cookie(request: web.Request) -> str | None:
    """The browser's OP session id, when it sent a well-formed one."""
    value = request.cookies.get(cookie_name(request.app[SETTINGS]), "")
    return value if _OP_SESSION.match(value) else None


def set_op_session_cookie(response: web.StreamResponse, settings: Settings, value: str) -> None:
    """The OP session cookie: HttpOnly, SameSite=Lax, Path=/, Secure with an https issuer, no Domain."""
    response.set_cookie(
        cookie_name(settings),
        value,
        max_age=settings.session_max_seconds,
        path="/",
        secure=settings.issuer.startswith("https://"),
        httponly=True,
        samesite="Lax",
    )


def clear_op_session_cookie(response: web.StreamResponse, settings: Settings) -> None:
    """Expire the OP session cookie (with the attributes it was set with, or ``__Host-`` ignores it)."""
    response.set_cookie(
        cookie_name(settings),
        "",
        max_age=0,
        expires="Thu, 01 Jan 1970 00:00:00 GMT",
        path="/",
        secure=settings.issuer.startswith("https://"),
        httponly=True,
        samesite="Lax",
    )


def with_params(uri: str, params: dict[str, str | None]) -> str:
    """``uri`` with ``params`` added to its query (a registered URI may carry a query of its own)."""
    parts = urlsplit(uri)
    added = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{added}" if parts.query else added
    return urlunsplit(parts._replace(query=query))


def redirect(location: str) -> web.Response:
    """A 302 to ``location`` that no cache keeps (it may carry a code)."""
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


def pick_lang(ui_locales: str | None) -> str:
    """``en`` when the first language of ``ui_locales`` we have is English, else ``zh``."""
    for tag in (ui_locales or "").split():
        tag = tag.lower()
        if tag.startswith("en"):
            return "en"
        if tag.startswith("zh"):
            return "zh"
    return "zh"


def page(
    lang: str,
    title: str,
    body: str,
    *,
    status: int = 200,
    csp: str = PLAIN_PAGE_CSP,
    scripts: tuple[str, ...] = (),
) -> web.Response:
    """An HTML page of the OP (escaped by the caller; no inline script or style)."""
    tags = "".join(f'\n  <script src="{html.escape(src)}"></script>' for src in scripts)
    document = (
        f'<!doctype html>\n<html lang="{TEXT[lang]["lang"]}">\n<head>\n  <meta charset="utf-8">\n'
        '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '  <meta name="referrer" content="no-referrer">\n'
        f"  <title>{html.escape(title)}</title>\n"
        '  <link rel="icon" href="data:,">\n  <link rel="stylesheet" href="/static/oidc.css">\n'
        f"</head>\n<body>\n{body}{tags}\n</body>\n</html>\n"
    )
    return web.Response(
        text=document,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": csp, **NO_STORE},
    )


def error_page(lang: str, message: str, *, status: int = 400) -> web.Response:
    """The page shown instead of a redirect when there is nowhere safe to send the browser."""
    t = TEXT[lang]
    body = (
        f'<main class="card error">\n  <h1>{html.escape(t["error_title"])}</h1>\n'
        f'  <p class="message">{html.escape(message)}</p>\n</main>'
    )
    return page(lang, t["error_title"], body, status=status)


# --- reading OAuth parameters ---------------------------------------------------------------------


class ParamError(ValueError):
    """The parameters cannot be read (repeated, too long, not a form)."""


@dataclass
class Params:
    """Request parameters by name (RFC 6749 §3.1: none may be repeated; an empty one is absent)."""

    values: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        found = [v for v in self.values.get(name, []) if v != ""]
        if len(found) > 1:
            raise ParamError(f"{name} is repeated")
        if found and len(found[0]) > MAX_PARAM:
            raise ParamError(f"{name} is too long")
        return found[0] if found else None

    def has(self, name: str) -> bool:
        return any(v != "" for v in self.values.get(name, []))

    def single(self) -> dict[str, str]:
        """The parameters as plain values (the first of each; for the hosted page to send back)."""
        return {k: v[0] for k, v in self.values.items() if v and v[0] != ""}


def parse_form(raw: bytes) -> Params:
    """``application/x-www-form-urlencoded`` (or a query string) into :class:`Params`."""
    try:
        text = raw.decode("utf-8")
        values = parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise ParamError("the parameters cannot be read") from None
    return Params(values)


async def request_params(request: web.Request) -> Params:
    """The query of a GET, the form of a POST (RFC 6749 §3.1: both for the authorization endpoint)."""
    if request.method == "GET" or request.method == "HEAD":
        return parse_form(request.query_string.encode())
    if request.body_exists and request.content_type != FORM:
        raise ParamError(f"send the parameters as {FORM}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ParamError("the body is too large") from None
    except ConnectionResetError:
        raise ParamError("the body was cut off") from None
    return parse_form(raw)


# --- the authorization request --------------------------------------------------------------------


@dataclass(frozen=True)
class PageRefusal:
    """No redirect is safe (unknown client, unregistered redirect_uri): an error page."""

    lang: str
    message: str


@dataclass(frozen=True)
class RedirectRefusal:
    """An OAuth error sent back to the client's registered redirect_uri."""

    redirect_uri: str
    error: str
    description: str
    state: str | None


@dataclass(frozen=True)
class ValidRequest:
    """An authorization request that may go on: to a silent login or to the hosted page."""

    client: Client
    request: AuthorizationRequest
    state: str | None
    prompt: frozenset[str]
    max_age: int | None
    lang: str
    params: dict[str, str]


def validate_authorization(
    params: Params, clients: ClientRegistry
) -> PageRefusal | RedirectRefusal | ValidRequest:
    """The authorization request checked in the order OAuth requires: client and redirect URI first
    (an error page), then everything else (an error redirect)."""
    try:
        lang = pick_lang(params.get("ui_locales"))
    except ParamError:
        lang = "zh"
    t = TEXT[lang]
    try:
        client_id = params.get("client_id")
    except ParamError as exc:
        return PageRefusal(lang, t["bad_request"].format(detail=exc))
    if client_id is None:
        return PageRefusal(lang, t["no_client"])
    client = clients.get(client_id)
    if client is None:
        return PageRefusal(lang, t["unknown_client"])
    try:
        redirect_uri = params.get("redirect_uri")
    except ParamError:
        redirect_uri = None
    if redirect_uri is None or not client.allows_redirect(redirect_uri):
        return PageRefusal(lang, t["bad_redirect"])

    def refuse(error: str, description: str, state: str | None) -> RedirectRefusal:
        return RedirectRefusal(redirect_uri, error, description, state)

    try:
        state = params.get("state")
    except ParamError as exc:
        return refuse("invalid_request", str(exc), None)
    if params.has("request"):
        return refuse("request_not_supported", "request objects are not supported", state)
    if params.has("request_uri"):
        return refuse("request_uri_not_supported", "request_uri is not supported", state)
    try:
        response_type = params.get("response_type")
        response_mode = params.get("response_mode")
        scope = params.get("scope")
        nonce = params.get("nonce")
        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method")
        prompt_value = params.get("prompt")
        max_age_value = params.get("max_age")
    except ParamError as exc:
        return refuse("invalid_request", str(exc), state)
    if response_type is None:
        return refuse("invalid_request", "response_type is required", state)
    if response_type != "code":
        return refuse("unsupported_response_type", "only response_type=code is supported", state)
    if response_mode not in (None, "query"):
        return refuse("invalid_request", "only response_mode=query is supported", state)
    requested = (scope or "").split()
    if "openid" not in requested:
        return refuse("invalid_scope", "the scope must include openid", state)
    # Scope values we do not know (email, offline_access…) are ignored (OpenID Connect Core §3.1.2.1);
    # one we know but this client may not have is refused.
    known = [s for s in dict.fromkeys(requested) if s in SCOPES]
    refused = [s for s in known if s not in client.scopes]
    if refused:
        return refuse("invalid_scope", f"this client may not ask for {' '.join(refused)}", state)
    if method is not None and method != "S256":
        return refuse("invalid_request", "code_challenge_method must be S256 (plain is not supported)", state)
    if challenge is not None and method is None:
        return refuse(
            "invalid_request", "code_challenge_method=S256 is required with a code_challenge", state
        )
    if method is not None and challenge is None:
        return refuse("invalid_request", "code_challenge is missing", state)
    if challenge is not None and not _CHALLENGE.match(challenge):
        return refuse("invalid_request", "code_challenge is not a base64url SHA-256", state)
    if client.public and challenge is None:
        return refuse("invalid_request", "a public client must use PKCE (code_challenge, S256)", state)
    if nonce is not None and len(nonce) > MAX_NONCE:
        return refuse("invalid_request", f"nonce is longer than {MAX_NONCE} characters", state)
    prompt = frozenset((prompt_value or "").split())
    if "none" in prompt and len(prompt) > 1:
        return refuse("invalid_request", "prompt=none cannot be combined with other values", state)
    max_age: int | None = None
    if max_age_value is not None:
        if not _MAX_AGE.match(max_age_value):
            return refuse("invalid_request", "max_age must be a number of seconds", state)
        max_age = int(max_age_value)
    request = AuthorizationRequest(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        scope=" ".join(known),
        nonce=nonce,
        code_challenge=challenge,
        code_challenge_method="S256" if challenge is not None else None,
    )
    return ValidRequest(client, request, state, prompt, max_age, lang, params.single())


def refusal_redirect(request: web.Request, refusal: RedirectRefusal) -> str:
    """Where an error goes: the redirect URI with error, error_description, state and iss."""
    return with_params(
        refusal.redirect_uri,
        {
            "error": refusal.error,
            "error_description": refusal.description,
            "state": refusal.state,
            "iss": issuer(request),
        },
    )


def code_redirect(request: web.Request, valid: ValidRequest, code: str) -> str:
    """The success redirect: ``redirect_uri?code=…&state=…&iss=…`` (RFC 9207)."""
    return with_params(
        valid.request.redirect_uri, {"code": code, "state": valid.state, "iss": issuer(request)}
    )


def hosted_page(request: web.Request, valid: ValidRequest) -> web.Response:
    """The login page: the site's name, the SDK's code box, and where the browser returns after."""
    t = TEXT[valid.lang]
    site = valid.client.site_name
    host = urlsplit(valid.request.redirect_uri).netloc
    params = json.dumps(valid.params, ensure_ascii=False, separators=(",", ":"))
    # The user may decline: back to the client with access_denied (RFC 6749 §4.1.2.1).
    declined = RedirectRefusal(valid.request.redirect_uri, "access_denied", "the user cancelled", valid.state)
    cancel = refusal_redirect(request, declined)
    body = (
        f'<main class="card" id="oidc-login" data-client-id="{html.escape(valid.client.client_id)}"\n'
        f'      data-lang="{valid.lang}" data-params="{html.escape(params)}">\n'
        f'  <h1 class="site">{html.escape(site)}</h1>\n'
        f'  <p class="lead">{html.escape(t["lead"])}</p>\n'
        '  <div id="wxl-box"></div>\n'
        f'  <p class="back">{html.escape(t["back"].format(host=host))}</p>\n'
        f'  <p class="cancel"><a href="{html.escape(cancel)}">{html.escape(t["cancel"])}</a></p>\n'
        f"  <noscript><p>{html.escape(t['noscript'])}</p></noscript>\n</main>"
    )
    return page(
        valid.lang,
        t["title"].format(site=site),
        body,
        csp=PAGE_CSP,
        scripts=("/sdk/wxlogin.js", "/static/oidc-login.js"),
    )


# --- OAuth error answers --------------------------------------------------------------------------


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer (``WWW-Authenticate`` for 401s that asked for it)."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        www_authenticate: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.www_authenticate = www_authenticate
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = dict(NO_STORE)
        if self.www_authenticate:
            headers["WWW-Authenticate"] = self.www_authenticate
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return web.json_response(
            {"error": self.error, "error_description": self.description}, status=self.status, headers=headers
        )


def unavailable(exc: ServiceError) -> OAuthError:
    """A dependency down or busy: 503 (or 429) ``temporarily_unavailable`` with ``Retry-After``."""
    status = status_for(exc.error_code)
    return OAuthError(
        "temporarily_unavailable",
        "the login service is busy or a dependency is down; try again shortly",
        status=status if status in _RETRY_STATUSES else 503,
        retry_after=exc.retry_after if exc.retry_after is not None else 2.0,
    )


def oauth_endpoint(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Answer errors of ``handler`` as OAuth error bodies: a rate limit or an outage too, never a 500."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OAuthError as exc:
            return exc.response()
        except ServiceError as exc:
            if status_for(exc.error_code) in _RETRY_STATUSES:
                return unavailable(exc).response()
            log.warning("oauth_unexpected_error", path=request.path, error_code=exc.error_code)
            return OAuthError("server_error", "the request could not be served", status=502).response()

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# --- client authentication (token and revocation endpoints) ----------------------------------------


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """``Authorization: Basic`` → (client_id, secret); None for another scheme."""
    try:
        return basic_credentials(header)
    except MalformedCredentials:
        raise OAuthError(
            "invalid_client", "malformed Basic credentials", status=401, www_authenticate=_BASIC
        ) from None


_BASIC = 'Basic realm="wxlogin"'


def authenticate_client(request: web.Request, params: Params) -> Client:
    """The client of a token or revocation request: client_secret_basic, client_secret_post, or a
    public client naming itself (``client_id`` only; it proves itself with PKCE)."""
    header = request.headers.get("Authorization", "")
    basic = _basic_credentials(header) if header else None
    if header and basic is None:
        raise OAuthError("invalid_client", "use HTTP Basic or the form to authenticate", status=401)
    try:
        form_id, form_secret = params.get("client_id"), params.get("client_secret")
    except ParamError as exc:
        raise OAuthError("invalid_request", str(exc)) from None
    if basic is not None:
        if form_secret is not None:
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        client_id, secret = basic
        if form_id is not None and form_id != client_id:
            raise OAuthError("invalid_request", "client_id differs from the authenticated client")
        challenge: str | None = _BASIC
    else:
        if form_id is None:
            raise OAuthError("invalid_client", "client authentication is required", status=401)
        client_id, secret, challenge = form_id, form_secret or "", None
    client = request.app[CLIENTS].get(client_id) if len(client_id) <= 64 else None
    if client is None:
        raise OAuthError("invalid_client", "unknown client", status=401, www_authenticate=challenge)
    if len(secret) > MAX_SECRET:
        raise OAuthError(
            "invalid_client", "client authentication failed", status=401, www_authenticate=challenge
        )
    if client.public:
        if secret:
            raise OAuthError(
                "invalid_client", "a public client has no secret", status=401, www_authenticate=challenge
            )
        return client
    if not secret or not client.check_secret(secret):
        raise OAuthError(
            "invalid_client", "client authentication failed", status=401, www_authenticate=challenge
        )
    return client


async def oauth_form(request: web.Request) -> Params:
    """The form of a token or revocation request (RFC 6749 §4.1.3: x-www-form-urlencoded)."""
    if request.content_type != FORM:
        raise OAuthError("invalid_request", f"send the parameters as {FORM}")
    try:
        return await request_params(request)
    except ParamError as exc:
        raise OAuthError("invalid_request", str(exc)) from None


# --- handlers -------------------------------------------------------------------------------------


async def discovery(request: web.Request) -> web.Response:
    """``GET /.well-known/openid-configuration``: what this OP does, and only that."""
    base = issuer(request)
    document = {
        "issuer": base,
        "authorization_endpoint": f"{base}/oidc/authorize",
        "token_endpoint": f"{base}/oidc/token",
        "userinfo_endpoint": f"{base}/oidc/userinfo",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "end_session_endpoint": f"{base}/oidc/logout",
        "revocation_endpoint": f"{base}/oidc/revoke",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public", "pairwise"],
        "id_token_signing_alg_values_supported": ["RS256", "EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": list(SCOPES),
        "claims_supported": CLAIMS_SUPPORTED,
        "claim_types_supported": ["normal"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "require_request_uri_registration": False,
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
        "ui_locales_supported": ["zh-CN", "en"],
    }
    return web.json_response(document, headers={"Cache-Control": "public, max-age=300"})


# The claims of the ID token and userinfo (docs/oidc.md §1.3); never email, picture or locale.
CLAIMS_SUPPORTED = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "sid",
    "amr",
    "azp",
    "preferred_username",
    "name",
    "given_name",
    "family_name",
    "phone_number",
    "phone_number_verified",
    "external_id",  # the client's own account of a linked user (docs/linking.md), for that client only
]


async def authorize(request: web.Request) -> web.Response:
    """``GET|POST /oidc/authorize``: an error page, an error redirect, a silent login from the OP
    session, or the hosted login page."""
    request.app[LIMITS].check("login", client_ip(request))
    try:
        params = await request_params(request)
    except ParamError as exc:
        return error_page("zh", TEXT["zh"]["bad_request"].format(detail=exc))
    valid = validate_authorization(params, request.app[CLIENTS])
    if isinstance(valid, PageRefusal):
        return error_page(valid.lang, valid.message)
    if isinstance(valid, RedirectRefusal):
        return redirect(refusal_redirect(request, valid))
    silent = "none" in valid.prompt
    cookie = op_session_cookie(request)
    if cookie is not None and "login" not in valid.prompt:
        try:
            authorized = await request.app[BUS].call(
                Authorize(request=valid.request, op_session=SecretStr(cookie), max_age=valid.max_age)
            )
        except RemoteError as exc:
            if status_for(exc.error_code) in _RETRY_STATUSES and silent:
                refusal = RedirectRefusal(
                    valid.request.redirect_uri, "temporarily_unavailable", "try again shortly", valid.state
                )
                return redirect(refusal_redirect(request, refusal))
            if exc.error_code not in ("login_required", "session_ended") and status_for(exc.error_code) < 500:
                log.info("silent_login_refused", error_code=exc.error_code)
        else:
            response = redirect(code_redirect(request, valid, authorized.code.get_secret_value()))
            if authorized.op_session is not None:
                set_op_session_cookie(
                    response, request.app[SETTINGS], authorized.op_session.get_secret_value()
                )
            return response
    if silent:
        refusal = RedirectRefusal(
            valid.request.redirect_uri, "login_required", "the user must scan to log in", valid.state
        )
        return redirect(refusal_redirect(request, refusal))
    return hosted_page(request, valid)


class AuthorizeCompleteBody(BaseModel):
    """``POST /oidc/authorize/complete``: the hosted page's confirmed scene, its ticket, and the
    authorization request it was shown for (checked again here, as ``/oidc/authorize`` did)."""

    model_config = ConfigDict(extra="ignore")
    scene: SceneId
    ticket: str = Ticket
    params: dict[str, str] = Field(max_length=MAX_FIELDS)


async def authorize_complete(request: web.Request) -> web.Response:
    """``POST /oidc/authorize/complete {scene, ticket, params}`` → ``{redirect_to}`` and the OP session
    cookie. Only the hosted page (the issuer's own origin) calls it."""
    origins = request.headers.getall("Origin", [])
    if len(origins) != 1 or origins[0] != origin_of(issuer(request)):
        raise OriginNotAllowed("only the hosted login page may complete an authorization")
    request.app[LIMITS].check("poll", client_ip(request))
    body = await read_body(request, AuthorizeCompleteBody)
    if any(len(k) > 64 or len(v) > MAX_PARAM for k, v in body.params.items()):
        raise BadRequest("a parameter is too long")
    params = Params({k: [v] for k, v in body.params.items()})
    valid = validate_authorization(params, request.app[CLIENTS])
    if isinstance(valid, PageRefusal):
        raise BadRequest(valid.message)
    if isinstance(valid, RedirectRefusal):
        return web.json_response({"redirect_to": refusal_redirect(request, valid)}, headers=NO_STORE)
    authorized = await request.app[BUS].call(
        Authorize(request=valid.request, scene=body.scene, ticket_hash=ticket_hash(body.ticket))
    )
    location = code_redirect(request, valid, authorized.code.get_secret_value())
    response = web.json_response({"redirect_to": location}, headers=NO_STORE)
    if authorized.op_session is not None:
        set_op_session_cookie(response, request.app[SETTINGS], authorized.op_session.get_secret_value())
    return response


@oauth_endpoint
async def token(request: web.Request) -> web.Response:
    """``POST /oidc/token``: authorization_code and refresh_token grants for an authenticated client."""
    request.app[LIMITS].check("session", client_ip(request))
    params = await oauth_form(request)
    client = authenticate_client(request, params)
    try:
        grant_type = params.get("grant_type")
        code = params.get("code")
        redirect_uri = params.get("redirect_uri")
        verifier = params.get("code_verifier")
        refresh_token = params.get("refresh_token")
        scope = params.get("scope")
    except ParamError as exc:
        raise OAuthError("invalid_request", str(exc)) from None
    if grant_type is None:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type == "authorization_code":
        if code is None or redirect_uri is None:
            raise OAuthError("invalid_request", "code and redirect_uri are required")
        if len(code) > MAX_SECRET:
            raise OAuthError("invalid_grant", "unknown or expired code")
        if verifier is not None and len(verifier) > 128:
            raise OAuthError("invalid_grant", "the code_verifier does not match")
        message = ExchangeGrant(
            client_id=client.client_id,
            grant_type="authorization_code",
            code=SecretStr(code),
            redirect_uri=redirect_uri,
            code_verifier=SecretStr(verifier) if verifier is not None else None,
        )
    elif grant_type == "refresh_token":
        if refresh_token is None:
            raise OAuthError("invalid_request", "refresh_token is required")
        if len(refresh_token) > MAX_SECRET:
            raise OAuthError("invalid_grant", "unknown or expired refresh token")
        if scope is not None and len(scope) > 512:
            raise OAuthError("invalid_scope", "the scope is too long")
        message = ExchangeGrant(
            client_id=client.client_id,
            grant_type="refresh_token",
            refresh_token=SecretStr(refresh_token),
            scope=scope,
        )
    else:
        raise OAuthError("unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
    try:
        tokens = await request.app[BUS].call(message)
    except RemoteError as exc:
        raise token_error(exc) from None
    answer: dict[str, Any] = {
        "access_token": tokens.access_token.get_secret_value(),
        "token_type": tokens.token_type,
        "expires_in": tokens.expires_in,
        "scope": tokens.scope,
    }
    if tokens.refresh_token is not None:
        answer["refresh_token"] = tokens.refresh_token.get_secret_value()
    if tokens.id_token is not None:
        answer["id_token"] = tokens.id_token.get_secret_value()
    return web.json_response(answer, headers=NO_STORE)


def token_error(exc: RemoteError) -> OAuthError:
    """A refusal of ``session.token`` as the token endpoint's error."""
    code = exc.error_code
    if code in _TOKEN_ERRORS:
        return OAuthError(code, exc.message, status=401 if code == "invalid_client" else 400)
    status = status_for(code)
    if status in _RETRY_STATUSES:
        return unavailable(exc)
    if status < 500:  # the code or refresh token is not good (expired, spent, session ended…)
        return OAuthError("invalid_grant", exc.message)
    log.warning("token_exchange_failed", error_code=code)
    return OAuthError("server_error", "the request could not be served", status=502)


def _invalid_token(description: str) -> OAuthError:
    return OAuthError(
        "invalid_token",
        description,
        status=401,
        www_authenticate=f'Bearer realm="wxlogin", error="invalid_token", error_description="{description}"',
    )


@oauth_endpoint
async def userinfo(request: web.Request) -> web.Response:
    """``GET|POST /oidc/userinfo`` with the access token (Bearer, or the form field ``access_token``
    of a POST, RFC 6750 §2.2; never in the URL) → the claims its scope allows."""
    request.app[LIMITS].check("session", client_ip(request))
    if "access_token" in request.query:
        raise OAuthError(
            "invalid_request", "send the access token in the Authorization header, never the URL"
        )
    header = request.headers.get("Authorization")
    form_token: str | None = None
    if request.method == "POST" and request.body_exists and request.content_type == FORM:
        try:
            form_token = (await request_params(request)).get("access_token")
        except ParamError as exc:
            raise OAuthError("invalid_request", str(exc)) from None
    if header and form_token:
        raise OAuthError("invalid_request", "send the access token once, not in the header and the body")
    if not header and not form_token:
        raise OAuthError(
            "invalid_token",
            "an access token is required",
            status=401,
            www_authenticate='Bearer realm="wxlogin"',
        )
    try:
        access_token = form_token or bearer_token(header)
        claims = await request.app[KEYS].verify(access_token)
    except Unauthorized as exc:
        raise _invalid_token(exc.message) from None
    if claims.get("iss") != issuer(request):
        raise _invalid_token("not an access token of this OpenID provider")
    scope = claims.get("scope", "openid")
    if not isinstance(scope, str) or "openid" not in scope.split():
        raise OAuthError(
            "insufficient_scope",
            "the token was not issued for openid",
            status=403,
            www_authenticate='Bearer realm="wxlogin", error="insufficient_scope", scope="openid"',
        )
    audience = claims["aud"]
    client_id = audience if isinstance(audience, str) else str(claims.get("client_id") or audience[0])
    try:
        info = await request.app[BUS].call(
            GetUserInfo(client_id=client_id, sid=claims["sid"], scope=scope[:512])
        )
    except RemoteError as exc:
        if status_for(exc.error_code) in _RETRY_STATUSES:
            raise unavailable(exc) from None
        if status_for(exc.error_code) >= 500:
            log.warning("userinfo_failed", error_code=exc.error_code)
            raise OAuthError("server_error", "the request could not be served", status=502) from None
        raise _invalid_token("the session of this token has ended") from None
    return web.json_response(info.claims, headers=NO_STORE)


@oauth_endpoint
async def revoke(request: web.Request) -> web.Response:
    """``POST /oidc/revoke`` (RFC 7009): 200 for any token once the client is authenticated."""
    request.app[LIMITS].check("session", client_ip(request))
    params = await oauth_form(request)
    client = authenticate_client(request, params)
    try:
        token_value = params.get("token")
        hint = params.get("token_type_hint")
    except ParamError as exc:
        raise OAuthError("invalid_request", str(exc)) from None
    if token_value is None:
        raise OAuthError("invalid_request", "token is required")
    if len(token_value) <= MAX_TOKEN:
        known_hint = hint if hint in ("access_token", "refresh_token") else None
        try:
            await request.app[BUS].call(
                RevokeToken(
                    client_id=client.client_id,
                    token=SecretStr(token_value),
                    token_type_hint=known_hint,  # type: ignore[arg-type]
                )
            )
        except RemoteError as exc:
            if status_for(exc.error_code) in _RETRY_STATUSES:
                raise unavailable(exc) from None
            log.info("revoke_refused", error_code=exc.error_code)  # RFC 7009: still 200
    return web.Response(status=200, headers=NO_STORE)


async def logout(request: web.Request) -> web.Response:
    """``GET|POST /oidc/logout`` (RP-initiated logout 1.0): end the OP session (the cookie's, and the
    session of a verified ``id_token_hint``), clear the cookie, then the registered
    ``post_logout_redirect_uri`` with ``state``, or a "logged out" page."""
    request.app[LIMITS].check("session", client_ip(request))
    settings, clients = request.app[SETTINGS], request.app[CLIENTS]
    try:
        params = await request_params(request)
        lang = pick_lang(params.get("ui_locales"))
    except ParamError as exc:
        return error_page("zh", TEXT["zh"]["logout_error"].format(detail=exc))
    t = TEXT[lang]

    def refuse(detail: str) -> web.Response:
        return error_page(lang, t["logout_error"].format(detail=detail))

    try:
        hint = params.get("id_token_hint")
        client_id = params.get("client_id")
        target = params.get("post_logout_redirect_uri")
        state = params.get("state")
        confirmed = params.get("confirm") == "yes" and request.method == "POST"
    except ParamError as exc:
        return refuse(str(exc))
    sid: str | None = None
    if hint is not None:
        try:
            claims = await request.app[KEYS].id_token_claims(hint)
        except Unauthorized:
            return refuse("id_token_hint")
        audience = claims["aud"]
        hinted = audience if isinstance(audience, str) else str(claims.get("azp") or audience[0])
        if client_id is not None and client_id != hinted:
            return refuse("client_id")
        client_id = hinted
        sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
    client = clients.get(client_id) if client_id is not None else None
    if client_id is not None and client is None:
        return refuse("client_id")
    if target is not None and (client is None or not client.allows_post_logout_redirect(target)):
        return refuse("post_logout_redirect_uri")
    cookie = op_session_cookie(request)
    if hint is None and cookie is not None and not confirmed:
        # No proof that a client asked (RP-Initiated Logout 1.0 §2): the user confirms here. A POST from
        # another site carries no SameSite=Lax cookie, so it cannot end this browser's session.
        return logout_question(lang, client, params, target)
    if sid is not None and not _SID.match(sid):
        sid = None
    if cookie is not None or sid is not None:
        try:
            await request.app[BUS].call(
                EndOpSession(
                    op_session=SecretStr(cookie) if cookie is not None else None,
                    sid=sid,
                    client_id=client.client_id if client is not None else None,
                )
            )
        except RemoteError as exc:
            if status_for(exc.error_code) in _RETRY_STATUSES:
                response = error_page(lang, t["logout_error"].format(detail=exc.error_code), status=503)
                response.headers["Retry-After"] = str(max(1, round(exc.retry_after or 2)))
                return response
            log.info("end_session_refused", error_code=exc.error_code)
    if target is not None:
        response = redirect(with_params(target, {"state": state}))
    else:
        body = (
            f'<main class="card">\n  <h1>{html.escape(t["signed_out_title"])}</h1>\n'
            f'  <p class="message">{html.escape(t["signed_out"])}</p>\n</main>'
        )
        response = page(lang, t["signed_out_title"], body)
    clear_op_session_cookie(response, settings)
    return response


def logout_question(lang: str, client: Client | None, params: Params, target: str | None) -> web.Response:
    """Ask the user before ending the OP session (the form posts back here with ``confirm=yes``)."""
    t = TEXT[lang]
    keep = {
        k: v
        for k, v in params.single().items()
        if k in ("client_id", "post_logout_redirect_uri", "state", "ui_locales")
    }
    hidden = "".join(
        f'\n    <input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in keep.items()
    )
    site = (
        f'\n  <p class="message">{html.escape(t["logout_site"].format(site=client.site_name))}</p>'
        if client
        else ""
    )
    body = (
        f'<main class="card">\n  <h1>{html.escape(t["logout_title"])}</h1>\n'
        f'  <p class="lead">{html.escape(t["logout_question"])}</p>{site}\n'
        f'  <form method="post" action="/oidc/logout">{hidden}\n'
        '    <input type="hidden" name="confirm" value="yes">\n'
        f'    <button type="submit" class="primary">{html.escape(t["logout_button"])}</button>\n'
        "  </form>\n</main>"
    )
    # The form's answer redirects to the client: form-action must allow that origin too.
    form_action = "'self'" + (f" {origin_of(target)}" if target else "")
    csp = PLAIN_PAGE_CSP.replace("form-action 'self'", f"form-action {form_action}")
    return page(lang, t["logout_title"], body, csp=csp)


async def demo_callback(request: web.Request) -> web.FileResponse:
    """``/demo/callback``: the demo's relying party (only with ``WXLOGIN_DEMO``): a page that exchanges
    the code as a public client with PKCE and shows the ID token's claims."""
    if not request.app[SETTINGS].demo:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / "demo-callback.html", headers={"Cache-Control": "no-store"})


def setup_oidc_routes(app: web.Application) -> None:
    """The OpenID Connect routes (the JWKS is in ``routes``)."""
    r = app.router
    r.add_get("/.well-known/openid-configuration", discovery)
    r.add_get("/oidc/authorize", authorize)
    r.add_post("/oidc/authorize", authorize)
    r.add_post("/oidc/authorize/complete", authorize_complete)
    r.add_post("/oidc/token", token)
    r.add_get("/oidc/userinfo", userinfo)
    r.add_post("/oidc/userinfo", userinfo)
    r.add_post("/oidc/revoke", revoke)
    r.add_get("/oidc/logout", logout)
    r.add_post("/oidc/logout", logout)
    r.add_get("/demo/callback", demo_callback)
