"""The gateway's own OpenID Connect logic at the HTTP level (services/gateway/oidc.py): the discovery
document, how the authorization endpoint checks a request (error page or error redirect), the hosted
page and its headers, client authentication at the token and revocation endpoints, bearer handling at
userinfo, the OP session cookie, logout's redirect checks, and client binding on the browser API.

The whole flows, driven by real relying parties, and the negative matrix are in test_oidc_rp.py; here
the requests are hand-made on purpose, to reach each check of the gateway on its own.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
import pytest_asyncio

from services.gateway.origins import origin_of
from shared.bus import MemoryBroker
from shared.clients import hash_secret
from shared.config import Settings
from shared.mongo import EmbeddedMongo, free_port
from sim.phone import Phone
from tests.support import Sim, System, drop_database, make_settings, start_sim

SECRET = "s3cr3t-" + "x" * 40
RP = "https://rp.example.com"
SPA = "https://spa.example.com"
CLIENTS_YAML = f"""
clients:
  - client_id: site-a
    client_secret_hash: "{hash_secret(SECRET)}"
    site_name: 站点甲
    redirect_uris: ["{RP}/cb", "{RP}/cb?tenant=7"]
    post_logout_redirect_uris: ["{RP}/bye"]
    scopes: [openid, profile]
  - client_id: spa-b
    site_name: SPA B
    redirect_uris: ["{SPA}/cb"]
    web_origins: ["{SPA}"]
  - client_id: site-ed
    client_secret_hash: "{hash_secret(SECRET)}"
    site_name: Ed
    redirect_uris: ["{RP}/ed"]
    id_token_signed_response_alg: EdDSA
"""
CHALLENGE = base64.urlsafe_b64encode(b"\x01" * 32).decode().rstrip("=")  # the shape of an S256 challenge


@dataclass
class Op:
    """The running stack, its issuer and an HTTP client that follows no redirects (and keeps no
    cookies: a test sends the OP session cookie itself)."""

    system: System
    sim: Sim
    settings: Settings
    http: aiohttp.ClientSession
    base: str  # where the gateway listens (the issuer, unless the issuer is a public https URL)

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        resp = await self.http.get(f"{self.base}{path}", allow_redirects=False, **kwargs)
        await resp.read()
        return resp

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        resp = await self.http.post(f"{self.base}{path}", allow_redirects=False, **kwargs)
        await resp.read()
        return resp


# One stack serves the module's tests (each uses its own phone and user), so the per-IP limits are
# off there; test_the_oauth_endpoints_answer_a_rate_limit_in_their_own_format has its own.
NO_LIMITS: dict[str, Any] = {
    **{f"limit_{kind}_per_ip_per_minute": 0 for kind in ("issue", "mp", "ws", "poll", "login", "session")},
    "limit_user_per_minute": 0,
    "limit_issue_prefix_share_percent": 100,
}


async def running_op(
    mongo: EmbeddedMongo, tmp_path: Path, *, issuer: str | None = None, **overrides: Any
) -> Op:
    clients = tmp_path / "clients.yaml"
    clients.write_text(CLIENTS_YAML, encoding="utf-8")
    port = free_port()
    base = make_settings(
        mongo_url=mongo.url,
        mongo_db=f"t_{uuid.uuid4().hex[:10]}",
        clients_file=str(clients),
        issuer_url=issuer or f"http://127.0.0.1:{port}",
        code_pool_size=2,
        **overrides,
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    system = await System(settings).start(broker=MemoryBroker(), ports={"gateway": port})
    jar = aiohttp.DummyCookieJar()
    return Op(system, sim, settings, aiohttp.ClientSession(cookie_jar=jar), f"http://127.0.0.1:{port}")


async def stop_op(op: Op) -> None:
    await op.http.close()
    await op.system.stop()
    await op.sim.stop()
    await drop_database(op.settings)


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def op(mongo_server: EmbeddedMongo, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Op]:
    running = await running_op(mongo_server, tmp_path_factory.mktemp("op"), **NO_LIMITS)
    try:
        yield running
    finally:
        await stop_op(running)


@pytest_asyncio.fixture(loop_scope="module")
async def https_op(mongo_server: EmbeddedMongo, tmp_path: Path) -> AsyncIterator[Op]:
    """An OP whose issuer is a public https URL (as behind a TLS-terminating load balancer)."""
    running = await running_op(mongo_server, tmp_path, issuer="https://login.example.test")
    try:
        yield running
    finally:
        await stop_op(running)


@pytest_asyncio.fixture(loop_scope="module")
async def limited_op(mongo_server: EmbeddedMongo, tmp_path: Path) -> AsyncIterator[Op]:
    """An OP with small per-IP limits."""
    limits: dict[str, Any] = {f"limit_{kind}_per_ip_burst": 2 for kind in ("login", "session")}
    running = await running_op(mongo_server, tmp_path, **limits)
    try:
        yield running
    finally:
        await stop_op(running)


def authorize_query(**overrides: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": "site-a",
        "redirect_uri": f"{RP}/cb",
        "scope": "openid profile",
        "state": "st-123",
        "nonce": "n-456",
    }
    params.update(overrides)
    return urlencode({k: v for k, v in params.items() if v is not None})


def redirect_params(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, str]]:
    """Where a 302 goes (without its query) and its query parameters."""
    assert resp.status == 302, resp.status
    location = resp.headers["Location"]
    parts = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return f"{parts.scheme}://{parts.netloc}{parts.path}", query


class PageParser(HTMLParser):
    """Scripts, inline handlers and data attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_handlers: list[str] = []
        self.attrs: dict[str, str] = {}
        self.script_bodies: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True
        for name, value in attrs:
            if name.startswith("on"):
                self.inline_handlers.append(name)
            if name.startswith("data-") and value is not None:
                self.attrs[name] = value

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_bodies.append(data)


def csp(resp: aiohttp.ClientResponse) -> dict[str, str]:
    policy = resp.headers["Content-Security-Policy"]
    return {d.split()[0]: " ".join(d.split()[1:]) for d in (p.strip() for p in policy.split(";")) if d}


# --- discovery ------------------------------------------------------------------------------------


async def test_discovery_names_every_endpoint_under_the_issuer_and_only_what_is_true(op: Op) -> None:
    resp = await op.get("/.well-known/openid-configuration")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["issuer"] == op.issuer
    for key, path in {
        "authorization_endpoint": "/oidc/authorize",
        "token_endpoint": "/oidc/token",
        "userinfo_endpoint": "/oidc/userinfo",
        "jwks_uri": "/.well-known/jwks.json",
        "end_session_endpoint": "/oidc/logout",
        "revocation_endpoint": "/oidc/revoke",
    }.items():
        assert doc[key] == op.issuer + path
        # Each endpoint answers at that address (a GET to a POST-only one is a 405, not a 404).
        status = (await op.get(path)).status
        assert status in (200, 400, 401, 405), (key, status)
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "none",
    }
    assert doc["scopes_supported"] == ["openid", "profile", "phone"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["request_parameter_supported"] is False and doc["request_uri_parameter_supported"] is False
    assert doc["backchannel_logout_supported"] is True and doc["frontchannel_logout_supported"] is False
    assert not [c for c in doc["claims_supported"] if "email" in c or c == "picture"]
    # A browser-based relying party may read it from its own origin.
    cors = await op.get("/.well-known/openid-configuration", headers={"Origin": SPA})
    assert cors.headers["Access-Control-Allow-Origin"] == SPA


# --- the authorization endpoint -------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "nobody"},
        {"client_id": None},
        {"redirect_uri": None},
        {"redirect_uri": f"{RP}/cb/"},  # not byte for byte
        {"redirect_uri": f"{RP}/cb?x=1"},
        {"redirect_uri": "https://evil.example.com/cb"},
        {"redirect_uri": f"{SPA}/cb"},  # another client's
    ],
    ids=[
        "unknown client",
        "no client",
        "no redirect_uri",
        "trailing slash",
        "extra query",
        "evil",
        "other client",
    ],
)
async def test_an_unknown_client_or_unregistered_redirect_uri_is_an_error_page_never_a_redirect(
    op: Op, overrides: dict[str, str | None]
) -> None:
    resp = await op.get(f"/oidc/authorize?{authorize_query(**overrides)}")
    assert resp.status == 400
    assert "Location" not in resp.headers
    assert resp.content_type == "text/html"
    text = await resp.text()
    assert "无法登录" in text  # zh-CN by default
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    english = await op.get(f"/oidc/authorize?{authorize_query(ui_locales='en-US', **overrides)}")
    assert english.status == 400 and "Cannot log in" in await english.text()


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"scope": "openid phone"}, "invalid_scope"),  # site-a may not ask for phone
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
        ({"request_uri": "https://rp.example.com/req.jwt"}, "request_uri_not_supported"),
        ({"code_challenge": CHALLENGE, "code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": CHALLENGE}, "invalid_request"),  # no method: plain by default
        ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
        ({"response_mode": "fragment"}, "invalid_request"),
        ({"max_age": "soon"}, "invalid_request"),
        ({"prompt": "none login"}, "invalid_request"),
        ({"prompt": "none"}, "login_required"),  # no OP session in this client
    ],
)
async def test_errors_after_the_redirect_uri_is_known_go_back_there_with_state_and_iss(
    op: Op, overrides: dict[str, str], error: str
) -> None:
    resp = await op.get(f"/oidc/authorize?{authorize_query(**overrides)}")
    where, query = redirect_params(resp)
    assert where == f"{RP}/cb"
    assert query["error"] == error
    assert query["error_description"]
    assert query["state"] == "st-123"
    assert query["iss"] == op.issuer
    assert "code" not in query
    assert resp.headers["Cache-Control"] == "no-store"


async def test_a_public_client_without_pkce_is_refused_and_a_repeated_parameter_too(op: Op) -> None:
    spa = authorize_query(client_id="spa-b", redirect_uri=f"{SPA}/cb")
    where, query = redirect_params(await op.get(f"/oidc/authorize?{spa}"))
    assert (
        where == f"{SPA}/cb" and query["error"] == "invalid_request" and "PKCE" in query["error_description"]
    )
    repeated = f"/oidc/authorize?{authorize_query()}&scope=openid"
    _, query = redirect_params(await op.get(repeated))
    assert query["error"] == "invalid_request" and query["state"] == "st-123"


async def test_a_registered_redirect_uri_with_a_query_keeps_it(op: Op) -> None:
    resp = await op.get(f"/oidc/authorize?{authorize_query(redirect_uri=f'{RP}/cb?tenant=7', prompt='none')}")
    assert resp.headers["Location"].startswith(f"{RP}/cb?tenant=7&error=login_required&")


async def test_the_hosted_page_shows_the_client_in_either_language_and_runs_no_inline_script(op: Op) -> None:
    query = authorize_query(scope="openid profile email offline_access", foo="bar", login_hint="x")
    resp = await op.get(f"/oidc/authorize?{query}")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert "站点甲" in html and "请使用微信扫码登录" in html and "rp.example.com" in html
    parsed = PageParser()
    parsed.feed(html)
    assert [s.get("src") for s in parsed.scripts] == ["/sdk/wxlogin.js", "/static/oidc-login.js"]
    assert parsed.script_bodies == [] and parsed.inline_handlers == []
    assert parsed.attrs["data-client-id"] == "site-a"
    # The user may decline: a link back to the client with access_denied, state and iss.
    found = re.search(r'<p class="cancel"><a href="([^"]+)">取消登录</a>', html)
    assert found is not None
    declined = urlsplit(unescape(found.group(1)))
    assert f"{declined.scheme}://{declined.netloc}{declined.path}" == f"{RP}/cb"
    assert parse_qs(declined.query) | {"error_description": []} == {
        "error": ["access_denied"],
        "error_description": [],
        "state": ["st-123"],
        "iss": [op.issuer],
    }
    params = json.loads(parsed.attrs["data-params"])
    assert params["state"] == "st-123" and params["nonce"] == "n-456"
    policy = csp(resp)
    assert (
        policy["script-src"] == "'self'" and "'unsafe-inline'" not in resp.headers["Content-Security-Policy"]
    )
    assert "data:" in policy["img-src"]
    assert policy["frame-ancestors"] == "'none'"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"
    # The scripts it names are served.
    for src in ("/sdk/wxlogin.js", "/static/oidc-login.js", "/static/oidc.css"):
        assert (await op.get(src)).status == 200, src
    english = await op.get(f"/oidc/authorize?{authorize_query(ui_locales='en zh-CN')}")
    text = await english.text()
    assert english.status == 200 and '<html lang="en">' in text and "Scan with WeChat to log in" in text
    # POST (form) is the same endpoint.
    posted = await op.post("/oidc/authorize", data={k: v[0] for k, v in parse_qs(authorize_query()).items()})
    assert posted.status == 200 and "站点甲" in await posted.text()


# --- the token and revocation endpoints: client authentication ------------------------------------


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


CODE_GRANT = {"grant_type": "authorization_code", "code": "c" * 43, "redirect_uri": f"{RP}/cb"}


async def oauth_error(resp: aiohttp.ClientResponse) -> str:
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error", "error_description"}, body
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    return str(body["error"])


@pytest.mark.parametrize(
    ("headers", "form", "status", "error", "challenge"),
    [
        ({}, CODE_GRANT, 401, "invalid_client", False),
        (basic("nobody", SECRET), CODE_GRANT, 401, "invalid_client", True),
        (basic("site-a", "wrong-" + "y" * 40), CODE_GRANT, 401, "invalid_client", True),
        ({"Authorization": "Basic !!!"}, CODE_GRANT, 401, "invalid_client", True),
        ({"Authorization": "Bearer abc"}, CODE_GRANT, 401, "invalid_client", False),
        ({}, {**CODE_GRANT, "client_id": "site-a"}, 401, "invalid_client", False),  # no secret
        ({}, {**CODE_GRANT, "client_id": "site-a", "client_secret": "wrong"}, 401, "invalid_client", False),
        ({}, {**CODE_GRANT, "client_id": "spa-b", "client_secret": "anything"}, 401, "invalid_client", False),
        (basic("site-a", SECRET), {**CODE_GRANT, "client_secret": SECRET}, 400, "invalid_request", False),
        (basic("site-a", SECRET), {**CODE_GRANT, "client_id": "spa-b"}, 400, "invalid_request", False),
        (basic("site-a", SECRET), {"code": "c" * 43}, 400, "invalid_request", False),
        (basic("site-a", SECRET), {"grant_type": "password"}, 400, "unsupported_grant_type", False),
        (basic("site-a", SECRET), {"grant_type": "authorization_code"}, 400, "invalid_request", False),
        (basic("site-a", SECRET), {"grant_type": "refresh_token"}, 400, "invalid_request", False),
    ],
    ids=[
        "no authentication",
        "unknown client (basic)",
        "wrong secret (basic)",
        "malformed basic",
        "another scheme",
        "confidential client without a secret",
        "wrong secret (post)",
        "public client with a secret",
        "basic and post at once",
        "client_id differs from basic",
        "no grant_type",
        "password grant",
        "code grant without a code",
        "refresh grant without a token",
    ],
)
async def test_the_token_endpoint_authenticates_the_client_first_and_answers_oauth_errors(
    op: Op, headers: dict[str, str], form: dict[str, str], status: int, error: str, challenge: bool
) -> None:
    resp = await op.post("/oidc/token", data=form, headers=headers)
    assert resp.status == status
    assert await oauth_error(resp) == error
    assert ("WWW-Authenticate" in resp.headers) is challenge
    if challenge:
        assert resp.headers["WWW-Authenticate"].startswith("Basic")


async def test_the_token_endpoint_wants_a_form(op: Op) -> None:
    resp = await op.post("/oidc/token", json=CODE_GRANT, headers=basic("site-a", SECRET))
    assert resp.status == 400 and await oauth_error(resp) == "invalid_request"
    repeated = "grant_type=authorization_code&grant_type=refresh_token"
    resp = await op.post(
        "/oidc/token",
        data=repeated,
        headers={**basic("site-a", SECRET), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 400 and await oauth_error(resp) == "invalid_request"


async def test_the_revocation_endpoint_authenticates_the_client_and_needs_a_token(op: Op) -> None:
    resp = await op.post("/oidc/revoke", data={"token": "abc"})
    assert resp.status == 401 and await oauth_error(resp) == "invalid_client"
    resp = await op.post("/oidc/revoke", data={}, headers=basic("site-a", SECRET))
    assert resp.status == 400 and await oauth_error(resp) == "invalid_request"


# --- userinfo: bearer handling --------------------------------------------------------------------


async def test_userinfo_wants_a_valid_bearer_token_from_the_header_or_the_form_never_the_url(op: Op) -> None:
    resp = await op.get("/oidc/userinfo")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="wxlogin"'  # no error: none was sent
    for headers in ({"Authorization": "Bearer not.a.token"}, {"Authorization": "Bearer " + "a" * 5000}):
        resp = await op.get("/oidc/userinfo", headers=headers)
        assert resp.status == 401 and await oauth_error(resp) == "invalid_token"
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    resp = await op.post("/oidc/userinfo", data={"access_token": "not.a.token"})
    assert resp.status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    resp = await op.get("/oidc/userinfo?access_token=abc")
    assert resp.status == 400 and await oauth_error(resp) == "invalid_request"
    resp = await op.post(
        "/oidc/userinfo", data={"access_token": "a.b.c"}, headers={"Authorization": "Bearer a.b.c"}
    )
    assert resp.status == 400 and await oauth_error(resp) == "invalid_request"


async def test_userinfo_refuses_an_access_token_of_the_browser_api(op: Op) -> None:
    """A token of /api/mp/login (issuer WXLOGIN_JWT_ISSUER) is not an OpenID Connect access token."""
    phone = Phone(op.http, op.issuer, op.sim.url)
    await phone.register()
    resp = await op.post("/api/mp/login", json={"code": await phone.wx_login()})
    tokens = await resp.json()
    assert (
        await op.get("/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    ).status == 200
    resp = await op.get("/oidc/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status == 401 and await oauth_error(resp) == "invalid_token"


# --- logout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"post_logout_redirect_uri": f"{RP}/bye"},  # no client to check it against
        {"client_id": "site-a", "post_logout_redirect_uri": f"{RP}/elsewhere"},
        {"client_id": "site-a", "post_logout_redirect_uri": "https://evil.example.com/bye"},
        {"client_id": "nobody", "post_logout_redirect_uri": f"{RP}/bye"},
        {"id_token_hint": "not.a.token", "post_logout_redirect_uri": f"{RP}/bye"},
        {"id_token_hint": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.", "client_id": "site-a"},  # alg none
    ],
    ids=["no client", "unregistered", "evil", "unknown client", "garbage hint", "alg none hint"],
)
async def test_logout_never_redirects_where_the_client_did_not_register(
    op: Op, params: dict[str, str]
) -> None:
    resp = await op.get(f"/oidc/logout?{urlencode(params)}")
    assert resp.status == 400 and "Location" not in resp.headers
    assert resp.content_type == "text/html"


async def test_logout_goes_to_a_registered_uri_with_state_and_clears_the_cookie(op: Op) -> None:
    query = urlencode({"client_id": "site-a", "post_logout_redirect_uri": f"{RP}/bye", "state": "s1"})
    where, params = redirect_params(await op.get(f"/oidc/logout?{query}"))
    assert where == f"{RP}/bye" and params == {"state": "s1"}
    resp = await op.get("/oidc/logout")
    assert resp.status == 200 and "已退出" in await resp.text()
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("wxlogin_op=") and "Max-Age=0" in cookie and "HttpOnly" in cookie


async def test_logout_without_a_hint_asks_the_user_before_ending_a_browser_session(op: Op) -> None:
    query = urlencode({"client_id": "site-a", "post_logout_redirect_uri": f"{RP}/bye", "state": "s1"})
    cookie = {"Cookie": "wxlogin_op=" + "A" * 43}
    resp = await op.get(f"/oidc/logout?{query}", headers=cookie)
    assert resp.status == 200
    html = await resp.text()
    assert '<form method="post" action="/oidc/logout">' in html and 'name="confirm" value="yes"' in html
    assert f'value="{RP}/bye"' in html
    assert "Set-Cookie" not in resp.headers  # nothing ended yet
    # The form's answer redirects to the client: the page's form-action allows exactly that origin.
    assert csp(resp)["form-action"] == f"'self' {RP}"
    form = {"client_id": "site-a", "post_logout_redirect_uri": f"{RP}/bye", "state": "s1", "confirm": "yes"}
    where, params = redirect_params(await op.post("/oidc/logout", data=form, headers=cookie))
    assert where == f"{RP}/bye" and params == {"state": "s1"}


# --- the hosted page's completion and the browser API's client binding ----------------------------


async def test_only_the_hosted_page_completes_an_authorization(op: Op) -> None:
    params = {k: v[0] for k, v in parse_qs(authorize_query()).items()}
    body: dict[str, Any] = {"scene": "s" * 32, "ticket": "t" * 43, "params": params}
    for origin in (None, RP, SPA):
        headers = {"Origin": origin} if origin else {}
        resp = await op.post("/oidc/authorize/complete", json=body, headers=headers)
        assert resp.status == 403, origin
        assert (await resp.json())["error"]["code"] == "origin_not_allowed"
    own = {"Origin": op.issuer}
    unknown = {**body, "params": {**body["params"], "client_id": "nobody"}}
    resp = await op.post("/oidc/authorize/complete", json=unknown, headers=own)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_request"
    # An error the client should hear goes back as where to go.
    bad_scope = {**body, "params": {**body["params"], "scope": "profile"}}
    resp = await op.post("/oidc/authorize/complete", json=bad_scope, headers=own)
    assert resp.status == 200
    where = urlsplit((await resp.json())["redirect_to"])
    assert f"{where.scheme}://{where.netloc}{where.path}" == f"{RP}/cb"
    assert parse_qs(where.query)["error"] == ["invalid_scope"]


async def test_a_code_is_issued_for_a_registered_client_from_its_origins_or_the_hosted_page(op: Op) -> None:
    async def issue(body: dict[str, Any] | None, origin: str | None) -> tuple[int, dict[str, Any]]:
        headers = {"Origin": origin} if origin else {}
        resp = (
            await op.post("/api/login/qrcode", json=body, headers=headers)
            if body is not None
            else (await op.post("/api/login/qrcode", headers=headers))
        )
        return resp.status, await resp.json()

    assert (await issue({"client_id": "spa-b"}, SPA))[0] == 201
    assert (await issue({"client_id": "spa-b"}, op.issuer))[0] == 201  # the hosted page
    assert (await issue({"client_id": "site-a"}, op.issuer))[0] == 201
    status, answer = await issue({"client_id": "site-a"}, SPA)  # spa-b's origin, site-a's login
    assert status == 403 and answer["error"]["code"] == "origin_not_allowed"
    assert "site-a" in answer["error"]["message"]
    status, answer = await issue({"client_id": "nobody"}, SPA)
    assert status == 400 and answer["error"]["code"] == "client_unknown"
    status, answer = await issue(None, SPA)  # the default client: not SPA's origin
    assert status == 403 and answer["error"]["code"] == "origin_not_allowed"
    status, _ = await issue(None, "http://127.0.0.1:8080")  # WXLOGIN_ALLOWED_ORIGINS: the default client's
    assert status == 201
    # CORS and the WebSocket allow every registered client's origin.
    preflight = await op.http.options(
        f"{op.issuer}/api/login/qrcode",
        headers={
            "Origin": SPA,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == SPA
    async with op.http.ws_connect(f"{op.issuer}/api/login/ws", headers={"Origin": SPA}) as ws:
        await ws.send_json({"type": "subscribe", "scene": "s" * 32, "ticket": "t" * 43})
        message = await ws.receive_json(timeout=5)
        assert message["type"] == "error"  # past the Origin check: the scene is unknown
    refused = await op.http.get(
        f"{op.issuer}/api/login/ws", headers={"Origin": RP, "Upgrade": "websocket", "Connection": "Upgrade"}
    )
    assert refused.status == 403
    # The token endpoint is open to a registered single-page app (and answers OAuth errors).
    token_preflight = await op.http.options(
        f"{op.issuer}/oidc/token", headers={"Origin": SPA, "Access-Control-Request-Method": "POST"}
    )
    assert token_preflight.headers["Access-Control-Allow-Origin"] == SPA
    foreign = await op.post("/oidc/token", data=CODE_GRANT, headers={"Origin": "https://evil.example.com"})
    assert foreign.status == 401 and "Access-Control-Allow-Origin" not in foreign.headers


# --- with a scan login: the cookie, userinfo, logout and revocation with real tokens ---------------


async def hosted_login(op: Op, **overrides: str | None) -> aiohttp.ClientResponse:
    """What the hosted page does, by hand: a code for the client from the issuer's own origin, the
    phone scans and confirms, then ``/oidc/authorize/complete`` with the authorization request."""
    params = {k: v[0] for k, v in parse_qs(authorize_query(**overrides)).items()}
    own = {"Origin": origin_of(op.issuer)}
    issued = await op.post("/api/login/qrcode", json={"client_id": params["client_id"]}, headers=own)
    assert issued.status == 201, await issued.text()
    scene = (await issued.json())["scene"]
    phone = Phone(op.http, op.base, op.sim.url)
    await phone.register()
    assert (await phone.scan(scene))["site"] in ("站点甲", "Ed")
    await phone.confirm(scene)
    ticket = (await issued.json())["ticket"]
    return await op.post(
        "/oidc/authorize/complete", json={"scene": scene, "ticket": ticket, "params": params}, headers=own
    )


def op_cookie(resp: aiohttp.ClientResponse) -> tuple[str, str, dict[str, str]]:
    """The OP session cookie a response sets: name, value, attributes (lower-case names)."""
    (header,) = resp.headers.getall("Set-Cookie")
    pair, *attributes = [part.strip() for part in header.split(";")]
    name, _, value = pair.partition("=")
    attrs = {}
    for attribute in attributes:
        key, _, val = attribute.partition("=")
        attrs[key.lower()] = val
    return name, value, attrs


async def tokens_for(
    op: Op, code: str, *, client_id: str = "site-a", redirect: str = f"{RP}/cb"
) -> dict[str, Any]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect}
    resp = await op.post("/oidc/token", data=form, headers=basic(client_id, SECRET))
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    return body


async def test_a_completed_scan_sets_the_op_session_cookie_and_sends_the_browser_back(op: Op) -> None:
    resp = await hosted_login(op)
    assert resp.status == 200
    where = urlsplit((await resp.json())["redirect_to"])
    query = parse_qs(where.query)
    assert f"{where.scheme}://{where.netloc}{where.path}" == f"{RP}/cb"
    assert query["state"] == ["st-123"] and query["iss"] == [op.issuer] and len(query["code"][0]) >= 32
    name, value, attrs = op_cookie(resp)
    assert name == "wxlogin_op"  # a plain-http issuer: no __Host- (browsers refuse it without Secure)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", value)
    assert "httponly" in attrs and attrs["samesite"] == "Lax" and attrs["path"] == "/"
    assert "secure" not in attrs and "domain" not in attrs
    assert attrs["max-age"] == str(op.settings.session_max_seconds)
    # The cookie gives the next authorization without a scan; prompt=login insists on one.
    cookie = {"Cookie": f"{name}={value}"}
    where_to, silent = redirect_params(
        await op.get(f"/oidc/authorize?{authorize_query(prompt='none')}", headers=cookie)
    )
    assert where_to == f"{RP}/cb" and silent["state"] == "st-123" and "code" in silent
    fresh = await op.get(f"/oidc/authorize?{authorize_query(prompt='login')}", headers=cookie)
    assert fresh.status == 200 and fresh.content_type == "text/html"


async def test_with_an_https_issuer_the_cookie_is_host_prefixed_and_secure(https_op: Op) -> None:
    resp = await hosted_login(https_op)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["redirect_to"].endswith("&iss=https%3A%2F%2Flogin.example.test")
    name, _, attrs = op_cookie(resp)
    assert name == "__Host-wxlogin_op"
    assert "secure" in attrs and "httponly" in attrs and attrs["samesite"] == "Lax" and attrs["path"] == "/"
    assert "domain" not in attrs
    discovery = await (await https_op.get("/.well-known/openid-configuration")).json()
    assert discovery["issuer"] == "https://login.example.test"
    assert discovery["token_endpoint"] == "https://login.example.test/oidc/token"


async def test_userinfo_answers_for_an_oidc_access_token_and_never_for_an_id_token(op: Op) -> None:
    resp = await hosted_login(op)
    code = parse_qs(urlsplit((await resp.json())["redirect_to"]).query)["code"][0]
    tokens = await tokens_for(op, code)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    got = await op.get("/oidc/userinfo", headers=bearer)
    assert got.status == 200 and got.headers["Cache-Control"] == "no-store"
    claims = await got.json()
    assert next(iter(claims)) == "sub" and "preferred_username" in claims
    posted = await op.post("/oidc/userinfo", data={"access_token": tokens["access_token"]})
    assert posted.status == 200 and await posted.json() == claims
    # An ID token is no access token: not at userinfo, not at the browser API.
    for id_token in (tokens["id_token"], (await ed_tokens(op))["id_token"]):
        refused = await op.get("/oidc/userinfo", headers={"Authorization": f"Bearer {id_token}"})
        assert refused.status == 401 and await oauth_error(refused) == "invalid_token"
        assert (await op.get("/api/me", headers={"Authorization": f"Bearer {id_token}"})).status == 401


async def ed_tokens(op: Op) -> dict[str, Any]:
    """Tokens of the client whose ID tokens are EdDSA (signed by the keys that sign access tokens)."""
    resp = await hosted_login(op, client_id="site-ed", redirect_uri=f"{RP}/ed")
    code = parse_qs(urlsplit((await resp.json())["redirect_to"]).query)["code"][0]
    tokens = await tokens_for(op, code, client_id="site-ed", redirect=f"{RP}/ed")
    header = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[0] + "=="))
    assert header["alg"] == "EdDSA"
    return tokens


async def test_logout_with_a_hint_ends_the_op_session_and_revocation_ends_a_refresh_token(op: Op) -> None:
    resp = await hosted_login(op)
    name, value, _ = op_cookie(resp)
    cookie = {"Cookie": f"{name}={value}"}
    code = parse_qs(urlsplit((await resp.json())["redirect_to"]).query)["code"][0]
    tokens = await tokens_for(op, code)
    revoked = await op.post(
        "/oidc/revoke", data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        headers=basic("site-a", SECRET),
    )  # fmt: skip
    assert revoked.status == 200
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    again = await op.post("/oidc/token", data=refresh, headers=basic("site-a", SECRET))
    assert again.status == 400 and await oauth_error(again) == "invalid_grant"
    # RP-initiated logout with the ID token as hint: back to the registered URI, cookie cleared...
    query = urlencode(
        {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": f"{RP}/bye", "state": "s9"}
    )
    out = await op.get(f"/oidc/logout?{query}", headers=cookie)
    where, params = redirect_params(out)
    assert where == f"{RP}/bye" and params == {"state": "s9"}
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    # ...and the OP session is over: the old cookie no longer logs in silently.
    _, silent = redirect_params(
        await op.get(f"/oidc/authorize?{authorize_query(prompt='none')}", headers=cookie)
    )
    assert silent["error"] == "login_required"
    # A hint for one client does not open another's redirect URI.
    elsewhere = urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": f"{SPA}/cb"})
    assert (await op.get(f"/oidc/logout?{elsewhere}")).status == 400


async def test_the_oauth_endpoints_answer_a_rate_limit_in_their_own_format(limited_op: Op) -> None:
    """Past the per-IP limit (``session`` here, burst 2): 429 ``temporarily_unavailable`` with
    Retry-After, in the OAuth format; the authorization endpoint counts in ``login``."""
    answers = [await limited_op.post("/oidc/token", data=CODE_GRANT) for _ in range(3)]
    assert [a.status for a in answers] == [401, 401, 429]
    assert await oauth_error(answers[-1]) == "temporarily_unavailable"
    assert int(answers[-1].headers["Retry-After"]) >= 1
    userinfo = await limited_op.get("/oidc/userinfo", headers={"Authorization": "Bearer a.b.c"})
    assert userinfo.status == 429 and await oauth_error(userinfo) == "temporarily_unavailable"
    pages = [await limited_op.get(f"/oidc/authorize?{authorize_query()}") for _ in range(3)]
    assert [p.status for p in pages] == [200, 200, 429]


async def test_a_login_of_the_browser_api_belongs_to_its_client_and_its_token_verifies_here(op: Op) -> None:
    """The SDK with clientId: the code and the complete name the client; the access token's audience
    is that client, which every gateway route accepts (KeySet: any registered client's audience)."""
    site = {"Origin": SPA}
    issued = await (await op.post("/api/login/qrcode", json={"client_id": "spa-b"}, headers=site)).json()
    phone = Phone(op.http, op.base, op.sim.url)
    await phone.register()
    assert (await phone.scan(issued["scene"]))["site"] == "SPA B"
    await phone.confirm(issued["scene"])
    body = {"scene": issued["scene"], "ticket": issued["ticket"]}
    refused = await op.post("/api/login/complete", json=body, headers={"Origin": "http://127.0.0.1:8080"})
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "client_mismatch"
    done = await op.post("/api/login/complete", json={**body, "client_id": "spa-b"}, headers=site)
    tokens = await done.json()
    assert done.status == 200, tokens
    assert jwt.decode(tokens["access_token"], options={"verify_signature": False})["aud"] == "spa-b"
    me = await op.get("/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}", **site})
    assert me.status == 200 and me.headers["Access-Control-Allow-Origin"] == SPA
