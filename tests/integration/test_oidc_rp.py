"""wxlogin as an OpenID Connect provider, driven by real relying parties (docs/oidc.md §6).

The whole code flow with PKCE runs against the running stack (gateway, services and the WeChat
simulator over real RabbitMQ): **Authlib**'s client (Python) and **openid-client** (Node, from npm,
``tests/rp``) build the authorization request, exchange the code and validate the id_token against
the JWKS with their own code. The browser is an HTTP client that does what the hosted login page's
script does (it issues a code with the page's client id, subscribes, and posts the confirmed scene to
``/oidc/authorize/complete``); the phone is ``sim/phone.py`` decoding the code image, scanning and
confirming. Then the OP session (``prompt=none``, ``prompt=login``, ``max_age``), logout with a
back-channel receiver, the negative matrix (each a clear OAuth error, never a 500) and a strict
check of the discovery document.

One stack serves the whole module (one event loop), so the module stays well under a minute; every
test uses its own phone (WeChat user) and its own browser (cookie jar).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidClaimError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from shared.clients import hash_secret
from shared.mongo import EmbeddedMongo, free_port
from sim.phone import Phone, decode_scene
from tests.logcheck import ErrorLog
from tests.scenes import RELAXED_LIMITS, FakeClock
from tests.support import System, drop_database, make_settings, start_sim

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # joserfc flags EdDSA as deprecated by RFC 9864 (Ed25519 is its new name); we still sign EdDSA
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning"),
]

RP_DIR = Path(__file__).parents[1] / "rp"
NODE = shutil.which("node")
STEP = 10.0  # seconds: every wait on the stack is bounded by this
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# OpenID Connect Discovery 1.0 §3: REQUIRED provider metadata (token_endpoint: unless only implicit).
DISCOVERY_REQUIRED = (
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "response_types_supported",
    "subject_types_supported",
    "id_token_signing_alg_values_supported",
)
# Milliseconds from the phone's confirm to the page's push, and to the browser holding the redirect
# with the code (the push, then /oidc/authorize/complete).
CONFIRM_TO_PUSH: list[float] = []
CONFIRM_TO_REDIRECT: list[float] = []


# --- the relying parties' registrations ---------------------------------------------------------


@dataclass(frozen=True)
class RP:
    """One registered client, as a relying party knows itself."""

    client_id: str
    secret: str | None
    redirect_uri: str
    post_logout_redirect_uri: str


def _rp(client_id: str, base: str, *, public: bool = False) -> RP:
    return RP(
        client_id,
        None if public else secrets.token_urlsafe(32),
        f"{base}/cb/{client_id}",
        f"{base}/logged-out/{client_id}",
    )


def clients_file(path: Path, rps: dict[str, RP], backchannel: str) -> Path:
    entries = []
    for name, rp in rps.items():
        entry: dict[str, Any] = {
            "client_id": rp.client_id,
            "site_name": {"other": "Site B 乙站"}.get(name, f"Site {name}"),
            "redirect_uris": [rp.redirect_uri],
            "post_logout_redirect_uris": [rp.post_logout_redirect_uri],
            "scopes": ["openid", "profile", "phone"],
        }
        if rp.secret is not None:
            entry["client_secret_hash"] = hash_secret(rp.secret)
        if name == "authlib":
            entry["backchannel_logout_uri"] = backchannel
        if name == "pairwise":
            entry |= {"subject_type": "pairwise", "id_token_signed_response_alg": "EdDSA"}
        entries.append(entry)
    path.write_text(yaml.safe_dump({"clients": entries}, allow_unicode=True), encoding="utf-8")
    return path


# --- a relying party's own endpoints: callbacks (never followed) and the back-channel receiver ---


class Receiver:
    """A tiny web server of the relying parties on 127.0.0.1: it keeps every logout token POSTed."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.logout_tokens: asyncio.Queue[str] = asyncio.Queue()
        self._runner: web.AppRunner | None = None

    async def _backchannel(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.logout_tokens.put_nowait(str(form.get("logout_token", "")))
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/backchannel", self._backchannel)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def drain(self) -> None:
        while not self.logout_tokens.empty():
            self.logout_tokens.get_nowait()


# --- the stack ------------------------------------------------------------------------------------


@dataclass
class OP:
    """The running OP and what the tests need around it."""

    issuer: str
    system: System
    http: aiohttp.ClientSession
    sim_url: str
    clock: FakeClock
    rps: dict[str, RP]
    receiver: Receiver
    discovery: dict[str, Any] = field(default_factory=dict)

    def phone(self) -> Phone:
        return Phone(self.http, self.issuer, self.sim_url)

    def browser(self) -> HostedBrowser:
        return HostedBrowser(self)

    async def jwks(self) -> KeySet:
        async with self.http.get(self.discovery["jwks_uri"]) as resp:
            assert resp.status == 200
            return KeySet.import_key_set(await resp.json())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def op(
    mongo_server: EmbeddedMongo, amqp_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OP]:
    """Gateway, session, qrcode and token over real RabbitMQ, the simulator, five registered
    relying parties and their back-channel receiver; the services (not the gateway) on a clock that
    follows real time until a test moves it (an expired code without waiting a minute)."""
    receiver = await Receiver().start()
    rps = {
        "authlib": _rp("rp-authlib", receiver.base),
        "node": _rp("rp-node", receiver.base),
        "public": _rp("rp-public", receiver.base, public=True),
        "other": _rp("rp-other", receiver.base),
        "pairwise": _rp("rp-pairwise", receiver.base),
    }
    path = clients_file(tmp_path_factory.mktemp("oidc") / "clients.yaml", rps, f"{receiver.base}/backchannel")
    port = free_port()
    unique = uuid.uuid4().hex[:10]
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"t_{unique}",
        gateway_port=port,
        clients_file=str(path),
        **RELAXED_LIMITS,
    )
    sim = await start_sim(base)
    settings = base.model_copy(
        update={"wechat_api_base": sim.url, "amqp_url": amqp_base_url, "bus_prefix": f"t{unique}."}
    )
    clock = FakeClock(follow_real_time=True)
    system = System(settings)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP))
    try:
        await system.start(clock=clock, ports={"gateway": port})
        running = OP(settings.issuer, system, http, sim.url, clock, rps, receiver)
        async with http.get(f"{running.issuer}/.well-known/openid-configuration") as resp:
            assert resp.status == 200, await resp.text()
            running.discovery = await resp.json()
        yield running
    finally:
        await http.close()
        await system.stop()
        await sim.stop()
        await receiver.stop()
        await drop_database(settings)
        for what, values in (("push", CONFIRM_TO_PUSH), ("redirect", CONFIRM_TO_REDIRECT)):
            if values:  # visible with -s
                ordered = sorted(values)
                p50 = statistics.median(ordered)
                print(
                    f"\nconfirm → {what} over {len(ordered)} scan logins: p50 {p50:.1f} ms,"
                    f" min {ordered[0]:.1f} ms, max {ordered[-1]:.1f} ms"
                )


# --- the browser: what the hosted login page and its script do ------------------------------------


class _DataAttributes(HTMLParser):
    """Every ``data-*`` attribute of the page (the hosted page passes its parameters that way)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] = {}
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("data-") and value is not None:
                self.data.setdefault(name[5:], value)
            if tag == "script" and name == "src" and value:
                self.scripts.append(value)


@dataclass
class Outcome:
    """What ``GET /oidc/authorize`` did: a redirect (silent login or an error), a page, or neither."""

    status: int
    location: str | None
    html: str
    url: str

    @property
    def query(self) -> dict[str, str]:
        assert self.location is not None, f"no redirect: {self.status} {self.html[:300]}"
        return {k: v[0] for k, v in parse_qs(urlsplit(self.location).query).items()}

    @property
    def is_page(self) -> bool:
        return self.status == 200 and self.location is None


@dataclass
class Login:
    """A scan login through the hosted page."""

    redirect: str
    scene: str
    confirm_to_redirect_ms: float


class HostedBrowser:
    """A browser with its own cookie jar, running the hosted page's script by hand."""

    def __init__(self, op: OP) -> None:
        self.op = op
        self.origin = op.issuer
        # unsafe: keep cookies of an IP-address host (127.0.0.1), as a browser does.
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=STEP)
        )

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self) -> HostedBrowser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def cookies(self) -> dict[str, str]:
        return {c.key: c.value for c in self.http.cookie_jar}

    async def open(self, url: str) -> Outcome:
        async with self.http.get(url, allow_redirects=False) as resp:
            html = await resp.text()
            assert resp.status < 500, (resp.status, html[:500])
            return Outcome(resp.status, resp.headers.get("Location"), html, url)

    async def login(self, url: str, phone: Phone) -> Login:
        """Open the authorization URL, which must show the hosted page, and log in with ``phone``."""
        page = await self.open(url)
        assert page.is_page, (page.status, page.location, page.html[:300])
        return await self.scan_login(page, phone)

    async def scan_login(self, page: Outcome, phone: Phone) -> Login:
        """What the hosted page's script does, with the phone in the middle: issue a code for the
        page's client, subscribe, let the phone scan and confirm, then complete at the OP."""
        found = _DataAttributes()
        found.feed(page.html)
        client_id = found.data["client-id"]  # the SDK's clientId
        params = json.loads(found.data["params"])  # the authorization request, sent back on complete
        assert found.scripts == ["/sdk/wxlogin.js", "/static/oidc-login.js"]  # no inline script
        async with self.http.post(
            f"{self.op.issuer}/api/login/qrcode",
            json={"client_id": client_id},
            headers={"Origin": self.origin},
        ) as resp:
            issued = await resp.json()
            assert resp.status == 201, issued
        scene, ticket = issued["scene"], issued["ticket"]
        ws = await self.http.ws_connect(f"{self.op.issuer}/api/login/ws", headers={"Origin": self.origin})
        confirming: asyncio.Future[Any] | None = None
        try:
            await ws.send_json({"type": "subscribe", "scene": scene, "ticket": ticket})
            assert (await ws.receive_json(timeout=STEP))["state"] == "pending"
            await phone.scan(decode_scene(issued["image"]))  # the camera reads the code off the screen
            assert (await ws.receive_json(timeout=STEP))["state"] == "scanned"
            # The phone taps 确认登录 while the page waits on its socket, as in life: the page acts on
            # the push, whatever the phone's own answer is doing.
            started = time.perf_counter()
            confirming = asyncio.ensure_future(phone.confirm(scene))
            state = (await ws.receive_json(timeout=STEP))["state"]
            pushed = time.perf_counter()
            assert state == "confirmed", state
            redirect = await self.complete(scene, ticket, params)
            done = time.perf_counter()
            await confirming
        finally:
            if confirming is not None and not confirming.done():
                confirming.cancel()
            await ws.close()
        CONFIRM_TO_PUSH.append((pushed - started) * 1000)
        CONFIRM_TO_REDIRECT.append((done - started) * 1000)
        return Login(redirect, scene, (done - started) * 1000)

    async def complete(self, scene: str, ticket: str, params: dict[str, str]) -> str:
        status, body = await self.post_complete(scene, ticket, params)
        assert status == 200, body
        return str(body["redirect_to"])

    async def post_complete(self, scene: str, ticket: str, params: dict[str, str]) -> tuple[int, Any]:
        async with self.http.post(
            f"{self.op.issuer}/oidc/authorize/complete",
            json={"scene": scene, "ticket": ticket, "params": params},
            headers={"Origin": self.origin},
        ) as resp:
            assert resp.status < 500, await resp.text()
            return resp.status, await resp.json(content_type=None)


# --- Authlib: the Python relying party ------------------------------------------------------------


class AuthlibRP:
    """Authlib's OAuth 2.0 client plus Authlib's OpenID Connect claims, as an RP would use them."""

    def __init__(self, op: OP, rp: RP, *, auth_method: str = "client_secret_post") -> None:
        self.op = op
        self.rp = rp
        self.client = AsyncOAuth2Client(
            client_id=rp.client_id,
            client_secret=rp.secret,
            scope="openid profile phone",
            redirect_uri=rp.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method=auth_method if rp.secret else "none",
            timeout=STEP,
        )
        self.meta = op.discovery
        self.verifier = ""
        self.nonce = ""
        self.state = ""

    async def close(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> AuthlibRP:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def authorization_url(self, **extra: str) -> str:
        self.verifier = generate_token(48)
        self.nonce = generate_token(20)
        url, self.state = self.client.create_authorization_url(
            self.meta["authorization_endpoint"], code_verifier=self.verifier, nonce=self.nonce, **extra
        )
        return str(url)

    async def fetch_token(self, redirect: str, **kwargs: Any) -> dict[str, Any]:
        query = {k: v[0] for k, v in parse_qs(urlsplit(redirect).query).items()}
        assert query.get("iss") == self.op.issuer, query  # RFC 9207: the answer names its issuer
        token = await self.client.fetch_token(
            self.meta["token_endpoint"],
            authorization_response=redirect,
            code_verifier=self.verifier,
            state=self.state,
            **kwargs,
        )
        return dict(token)

    async def id_token_claims(self, token: dict[str, Any], *, nonce: str | None = None) -> CodeIDToken:
        """Authlib's id_token validation, as its OpenID mixin does it: the JWS against the JWKS
        (only the algorithms the OP advertises), then ``CodeIDToken`` (iss, aud, exp, iat, nonce,
        azp, at_hash)."""
        keys = await self.op.jwks()
        decoded = jwt.decode(
            token["id_token"],
            keys,
            registry=JWSRegistry(algorithms=self.meta["id_token_signing_alg_values_supported"]),
        )
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {"iss": {"essential": True, "values": [self.meta["issuer"]]}},
            {
                "nonce": nonce or self.nonce,
                "client_id": self.rp.client_id,
                "access_token": token["access_token"],
            },
        )
        claims.validate(leeway=5)
        return claims

    async def userinfo(self, access_token: str, *, post: bool = False) -> tuple[int, Any, str]:
        url = self.meta["userinfo_endpoint"]
        if post:
            resp = await self.client.request(
                "POST", url, data={"access_token": access_token}, withhold_token=True
            )
        else:
            resp = await self.client.request(
                "GET", url, headers={"Authorization": f"Bearer {access_token}"}, withhold_token=True
            )
        assert resp.status_code < 500, resp.text
        body = resp.json() if resp.content else None
        return resp.status_code, body, resp.headers.get("WWW-Authenticate", "")

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        return dict(await self.client.refresh_token(self.meta["token_endpoint"], refresh_token=refresh_token))


async def token_request(
    op: OP, form: dict[str, str], *, basic: tuple[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    """A raw token-endpoint call (what a misbehaving or hostile client sends)."""
    headers = {"Authorization": aiohttp.encode_basic_auth(*basic)} if basic else None
    async with op.http.post(op.discovery["token_endpoint"], data=form, headers=headers) as resp:
        body = await resp.json(content_type=None)
        assert resp.status < 500, body
        return resp.status, body, resp.headers


def oauth_error(status: int, body: dict[str, Any], error: str, expected_status: int = 400) -> None:
    """An RFC 6749 §5.2 error: the status and ``{"error": ..., "error_description"?: ...}``."""
    assert (status, body.get("error")) == (expected_status, error), body
    assert isinstance(body.get("error_description", ""), str)


# --- the login every test starts from ------------------------------------------------------------


async def scan_in(
    op: OP, rp: AuthlibRP, browser: HostedBrowser, phone: Phone, **extra: str
) -> dict[str, Any]:
    """A full scan login of ``rp`` in ``browser``: returns the token response."""
    login = await browser.login(rp.authorization_url(**extra), phone)
    return await rp.fetch_token(login.redirect)


async def silent_code(op: OP, rp: AuthlibRP, browser: HostedBrowser, **extra: str) -> str:
    """A code from the OP session alone (no page), for the tests that need many codes."""
    outcome = await browser.open(rp.authorization_url(prompt="none", **extra))
    assert outcome.location is not None and "code" in outcome.query, (outcome.status, outcome.html[:300])
    return outcome.location


async def bind_phone(op: OP, phone: Phone) -> None:
    """The user logs in inside the mini-program and binds the phone number WeChat knows."""
    async with op.http.post(f"{op.issuer}/api/mp/login", json={"code": await phone.wx_login()}) as resp:
        tokens = await resp.json()
        assert resp.status == 200, tokens
    async with op.http.post(
        f"{op.issuer}/api/mp/phone",
        json={"code": await phone.phone_number_code()},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ) as resp:
        assert resp.status == 200, await resp.text()


# ==================================================================================================
# The real relying parties log in
# ==================================================================================================


async def test_authlib_logs_in_with_pkce_and_validates_the_id_token_against_the_jwks(op: OP) -> None:
    phone = op.phone()
    await phone.register(phone="13800138000")
    await bind_phone(op, phone)
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        login = await browser.login(rp.authorization_url(), phone)
        query = {k: v[0] for k, v in parse_qs(urlsplit(login.redirect).query).items()}
        assert login.redirect.startswith(rp.rp.redirect_uri + "?")
        assert query["state"] == rp.state
        token = await rp.fetch_token(login.redirect)
        assert token["token_type"].lower() == "bearer"
        assert set(token["scope"].split()) >= {"openid", "profile"}
        claims = await rp.id_token_claims(token)

        assert claims.header["alg"] == "RS256"  # the default: every RP can verify it
        assert claims["iss"] == op.issuer
        assert claims["aud"] in (rp.rp.client_id, [rp.rp.client_id])
        assert claims["nonce"] == rp.nonce
        assert claims["azp"] == rp.rp.client_id
        assert claims["exp"] > time.time() > claims["iat"] - 5
        assert abs(claims["auth_time"] - time.time()) < 30
        assert claims["sub"].startswith("u_") and claims["sid"]
        assert claims["amr"] == ["wx_scan"]
        # the name policy of docs/oidc.md §1.3: stable, generic, derived from the username
        username = claims["preferred_username"]
        assert re.fullmatch(r"wx_[a-z2-7]{16}", username), claims
        assert claims["family_name"] == "微信用户"
        assert claims["given_name"] == username[3:7].upper()
        assert claims["name"] == f"微信用户 {claims['given_name']}"
        assert claims["phone_number"] == "+8613800138000"  # in the id_token too (Logto reads no userinfo)
        assert not {"email", "email_verified", "picture"} & set(claims)

        status, info, _ = await rp.userinfo(token["access_token"])
        assert status == 200, info
        assert next(iter(info)) == "sub" and info["sub"] == claims["sub"]
        assert info["preferred_username"] == claims["preferred_username"]
        assert info["phone_number"] == "+8613800138000" and info["phone_number_verified"] is True
        status, info_post, _ = await rp.userinfo(token["access_token"], post=True)
        assert (status, info_post) == (200, info)

        refreshed = await rp.refresh(token["refresh_token"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        status, _, _ = await rp.userinfo(refreshed["access_token"])
        assert status == 200


@pytest.mark.skipif(NODE is None, reason="node is not installed")
async def test_openid_client_logs_in_with_pkce_and_validates_the_id_token_against_the_jwks(op: OP) -> None:
    assert NODE is not None
    if not (RP_DIR / "node_modules" / "openid-client").is_dir():
        pytest.fail("openid-client is not installed: run `make rp-deps` (make test does)")
    rp = op.rps["node"]
    env = {
        **os.environ,
        "WXLOGIN_ISSUER": op.issuer,
        "WXLOGIN_CLIENT_ID": rp.client_id,
        "WXLOGIN_CLIENT_SECRET": rp.secret or "",
        "WXLOGIN_REDIRECT_URI": rp.redirect_uri,
        "WXLOGIN_SCOPE": "openid profile",
    }
    proc = await asyncio.create_subprocess_exec(
        NODE,
        "rp.mjs",
        cwd=RP_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), STEP))
        assert "authorization_url" in first, first
        url = first["authorization_url"]
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
        async with op.browser() as browser:
            login = await browser.login(url, op.phone())
        proc.stdin.write(login.redirect.encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        second = json.loads(await asyncio.wait_for(proc.stdout.readline(), STEP))
        await asyncio.wait_for(proc.wait(), STEP)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode()
    assert proc.returncode == 0 and "result" in second, (second, stderr)
    result = second["result"]
    assert result["issuer"] == op.issuer
    assert result["token_type"].lower() == "bearer"
    assert result["id_token_header"]["alg"] == "RS256" and result["id_token_header"]["kid"]
    claims = result["claims"]
    assert claims["nonce"] == first["nonce"]
    assert claims["aud"] in (rp.client_id, [rp.client_id])
    assert result["userinfo"]["sub"] == claims["sub"]
    assert result["userinfo"]["preferred_username"] == claims["preferred_username"]
    assert result["refreshed"] == {"rotated": True, "id_token_sub": result["refreshed"]["id_token_sub"]}


async def test_a_public_client_logs_in_with_pkce_alone(op: OP) -> None:
    async with op.browser() as browser, AuthlibRP(op, op.rps["public"]) as rp:
        token = await scan_in(op, rp, browser, op.phone())
        claims = await rp.id_token_claims(token)
        assert claims["aud"] in (rp.rp.client_id, [rp.rp.client_id])
        # without the verifier the code is worth nothing to whoever intercepts it
        location = await silent_code(op, rp, browser)
        code = parse_qs(urlsplit(location).query)["code"][0]
        status, body, _ = await token_request(
            op,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": rp.rp.redirect_uri,
                "client_id": rp.rp.client_id,
            },
        )
        oauth_error(status, body, "invalid_grant")


async def test_a_confidential_client_without_pkce_or_nonce_logs_in(op: OP) -> None:
    """What Logto, Casdoor (PKCE off) and Keycloak's default send: a secret, no PKCE, no nonce."""
    rp_info = op.rps["authlib"]
    async with op.browser() as browser, AuthlibRP(op, rp_info) as rp:
        await scan_in(op, rp, browser, op.phone())
        plain = AsyncOAuth2Client(
            client_id=rp_info.client_id,
            client_secret=rp_info.secret,
            scope="openid profile",
            redirect_uri=rp_info.redirect_uri,
            token_endpoint_auth_method="client_secret_post",
            timeout=STEP,
        )
        try:
            url, state = plain.create_authorization_url(op.discovery["authorization_endpoint"])
            assert "code_challenge" not in url and "nonce" not in url
            outcome = await browser.open(url)
            assert outcome.location is not None and "code" in outcome.query, outcome
            token = dict(
                await plain.fetch_token(
                    op.discovery["token_endpoint"], authorization_response=outcome.location, state=state
                )
            )
        finally:
            await plain.aclose()
        decoded = jwt.decode(token["id_token"], await op.jwks(), algorithms=["RS256"])
        assert decoded.claims["aud"] == rp_info.client_id and "nonce" not in decoded.claims


async def test_a_pairwise_client_gets_its_own_subject_and_an_eddsa_id_token_silently(op: OP) -> None:
    """The OP session serves a second client without a scan; a pairwise client sees its own ``sub``
    and username; an EdDSA id_token verifies against the same JWKS."""
    async with (
        op.browser() as browser,
        AuthlibRP(op, op.rps["authlib"]) as first,
        AuthlibRP(op, op.rps["pairwise"]) as second,
    ):
        token = await scan_in(op, first, browser, op.phone())
        public = await first.id_token_claims(token)
        token2 = await second.fetch_token(await silent_code(op, second, browser))
        pairwise = await second.id_token_claims(token2)
        assert pairwise.header["alg"] == "EdDSA"
        assert pairwise["sub"] != public["sub"] and pairwise["sub"].startswith("p_")
        assert pairwise["preferred_username"] != public["preferred_username"]
        assert pairwise["auth_time"] == public["auth_time"]  # the same scan


# ==================================================================================================
# The OP session: prompt, max_age, nonce
# ==================================================================================================


async def test_prompt_none_without_an_op_session_answers_login_required(op: OP) -> None:
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        outcome = await browser.open(rp.authorization_url(prompt="none"))
        assert outcome.status in (302, 303), outcome
        assert outcome.location is not None and outcome.location.startswith(rp.rp.redirect_uri + "?")
        assert outcome.query["error"] == "login_required"
        assert outcome.query["state"] == rp.state
        assert outcome.query["iss"] == op.issuer
        assert "code" not in outcome.query


async def test_prompt_none_with_an_op_session_logs_in_silently_with_the_first_auth_time(op: OP) -> None:
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        first = await rp.id_token_claims(await scan_in(op, rp, browser, op.phone()))
        assert browser.cookies(), "no OP session cookie after a scan login"
        name = next(iter(browser.cookies()))
        assert name in ("wxlogin_op", "__Host-wxlogin_op")
        again = await rp.id_token_claims(await rp.fetch_token(await silent_code(op, rp, browser)))
        assert again["sub"] == first["sub"]
        assert again["auth_time"] == first["auth_time"]  # no new scan happened
        assert again["nonce"] == rp.nonce  # the new request's nonce


async def test_prompt_login_always_shows_the_page_and_a_fresh_scan_moves_auth_time(op: OP) -> None:
    phone = op.phone()
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        first = await rp.id_token_claims(await scan_in(op, rp, browser, phone))
        await asyncio.sleep(1.05)  # auth_time has one-second resolution
        page = await browser.open(rp.authorization_url(prompt="login"))
        assert page.is_page, (page.status, page.location)
        login = await browser.scan_login(page, phone)
        fresh = await rp.id_token_claims(await rp.fetch_token(login.redirect))
        assert fresh["sub"] == first["sub"]
        assert fresh["auth_time"] > first["auth_time"]


async def test_max_age_exceeded_asks_for_a_fresh_scan_and_prompt_none_then_fails(op: OP) -> None:
    phone = op.phone()
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        first = await rp.id_token_claims(await scan_in(op, rp, browser, phone))
        within = await rp.id_token_claims(
            await rp.fetch_token(await silent_code(op, rp, browser, max_age="600"))
        )
        assert within["auth_time"] == first["auth_time"]
        await asyncio.sleep(2.1)  # past max_age=1 whatever the rounding of auth_time
        silent = await browser.open(rp.authorization_url(prompt="none", max_age="1"))
        assert silent.query.get("error") == "login_required", silent.query
        page = await browser.open(rp.authorization_url(max_age="1"))
        assert page.is_page, (page.status, page.location)
        login = await browser.scan_login(page, phone)
        fresh = await rp.id_token_claims(await rp.fetch_token(login.redirect))
        assert fresh["auth_time"] > first["auth_time"]  # auth_time is present, as max_age requires


async def test_the_nonce_is_echoed_and_a_wrong_one_fails_validation(op: OP) -> None:
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        token = await scan_in(op, rp, browser, op.phone())
        assert (await rp.id_token_claims(token))["nonce"] == rp.nonce
        with pytest.raises(InvalidClaimError, match="nonce"):
            await rp.id_token_claims(token, nonce="not-the-one-sent")


# ==================================================================================================
# Logout
# ==================================================================================================


async def test_logout_ends_the_session_and_calls_the_back_channel_with_a_valid_logout_token(op: OP) -> None:
    op.receiver.drain()
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        token = await scan_in(op, rp, browser, op.phone())
        claims = await rp.id_token_claims(token)
        state = generate_token(16)
        url = (
            op.discovery["end_session_endpoint"]
            + "?"
            + urlencode(
                {
                    "id_token_hint": token["id_token"],
                    "post_logout_redirect_uri": rp.rp.post_logout_redirect_uri,
                    "state": state,
                }
            )
        )
        outcome = await browser.open(url)
        assert outcome.location is not None, (outcome.status, outcome.html[:300])
        assert outcome.location.startswith(rp.rp.post_logout_redirect_uri)
        assert outcome.query["state"] == state
        assert not browser.cookies(), "the OP session cookie outlived the logout"

        # the OP session is gone: no silent login in this browser any more
        silent = await browser.open(rp.authorization_url(prompt="none"))
        assert silent.query.get("error") == "login_required", silent.query
        # and what it gave the relying party is dead too
        status, body, _ = await token_request(
            op,
            {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
            basic=(rp.rp.client_id, rp.rp.secret or ""),
        )
        oauth_error(status, body, "invalid_grant")
        status, _, challenge = await rp.userinfo(token["access_token"])
        assert status == 401 and 'error="invalid_token"' in challenge

        logout_token = await asyncio.wait_for(op.receiver.logout_tokens.get(), STEP)
        decoded = jwt.decode(logout_token, await op.jwks(), algorithms=["RS256", "EdDSA"])
        assert decoded.header["typ"] == "logout+jwt"
        assert decoded.header["alg"] == claims.header["alg"]
        jwt.JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": op.issuer},
            aud={"essential": True, "value": rp.rp.client_id},
            iat={"essential": True},
            exp={"essential": True},
            jti={"essential": True},
        ).validate(decoded.claims)
        body = decoded.claims
        assert body["sid"] == claims["sid"] and body["sub"] == claims["sub"]
        assert body["events"] == {BACKCHANNEL_EVENT: {}}
        assert "nonce" not in body


async def test_an_alg_none_id_token_hint_is_refused_and_ends_nothing(op: OP, errors: ErrorLog) -> None:
    async with op.browser() as victim, AuthlibRP(op, op.rps["authlib"]) as rp:
        token = await scan_in(op, rp, victim, op.phone())
        claims = await rp.id_token_claims(token)
        forged = forge_unsigned(dict(claims))
        async with op.browser() as attacker:
            outcome = await attacker.open(
                op.discovery["end_session_endpoint"]
                + "?"
                + urlencode(
                    {"id_token_hint": forged, "post_logout_redirect_uri": rp.rp.post_logout_redirect_uri}
                )
            )
        assert outcome.status == 400 and outcome.location is None, (outcome.status, outcome.location)
        # the victim is still logged in at the OP and at the relying party
        await silent_code(op, rp, victim)
        status, _, _ = await rp.userinfo(token["access_token"])
        assert status == 200
    assert errors.records == [], errors.lines()


def forge_unsigned(claims: dict[str, Any]) -> str:
    """A JWT with ``alg: none`` and no signature, carrying ``claims``."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# ==================================================================================================
# The negative matrix: each a clear OAuth error, never a 500
# ==================================================================================================


@pytest.mark.parametrize("what", ["unknown client", "unregistered redirect_uri"])
async def test_an_unknown_client_or_redirect_uri_is_an_error_page_never_a_redirect(
    op: OP, what: str, errors: ErrorLog
) -> None:
    rp = op.rps["authlib"]
    params = {
        "response_type": "code",
        "client_id": rp.client_id,
        "redirect_uri": rp.redirect_uri,
        "scope": "openid",
        "state": "s",
        "nonce": "n",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    if what == "unknown client":
        params["client_id"] = "no-such-client"
    else:
        params["redirect_uri"] = "https://evil.example/cb"
    async with op.browser() as browser:
        outcome = await browser.open(op.discovery["authorization_endpoint"] + "?" + urlencode(params))
    assert outcome.status == 400 and outcome.location is None, (outcome.status, outcome.location)
    assert "evil.example" not in outcome.html
    assert errors.records == [], errors.lines()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
        ({"request_uri": "https://evil.example/r"}, "request_uri_not_supported"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": None, "code_challenge_method": None, "client": "public"}, "invalid_request"),
    ],
)
async def test_other_authorization_errors_go_back_to_the_client_with_state_and_iss(
    op: OP, change: dict[str, str | None], error: str, errors: ErrorLog
) -> None:
    rp = op.rps[str(change.pop("client", None) or "authlib")]
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": rp.client_id,
        "redirect_uri": rp.redirect_uri,
        "scope": "openid profile",
        "state": "st-123",
        "nonce": "n",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "login_hint": "ignored",
        "unknown_parameter": "ignored",
    }
    params |= change
    query = urlencode({k: v for k, v in params.items() if v is not None})
    async with op.browser() as browser:
        outcome = await browser.open(op.discovery["authorization_endpoint"] + "?" + query)
    assert outcome.location is not None and outcome.location.startswith(rp.redirect_uri + "?"), outcome
    assert outcome.query["error"] == error, outcome.query
    assert outcome.query["state"] == "st-123" and outcome.query["iss"] == op.issuer
    assert "code" not in outcome.query
    assert errors.records == [], errors.lines()


async def test_the_token_endpoint_refuses_bad_clients_and_bad_codes(op: OP, errors: ErrorLog) -> None:
    """Unknown client, wrong secret (Basic and post), PKCE verifier wrong or missing, a code of
    another client, a redirect_uri that differs, an unsupported grant type."""
    mine, other = op.rps["authlib"], op.rps["other"]
    async with op.browser() as browser, AuthlibRP(op, mine) as rp:
        await scan_in(op, rp, browser, op.phone())

        async def fresh_code() -> tuple[str, str]:
            location = await silent_code(op, rp, browser)
            return parse_qs(urlsplit(location).query)["code"][0], rp.verifier

        code, verifier = await fresh_code()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": mine.redirect_uri}
        # unknown client, and wrong secrets: 401 invalid_client (Basic says how to authenticate)
        status, body, headers = await token_request(
            op, form | {"code_verifier": verifier}, basic=("nobody", "x" * 43)
        )
        oauth_error(status, body, "invalid_client", 401)
        status, body, headers = await token_request(
            op, form | {"code_verifier": verifier}, basic=(mine.client_id, "wrong")
        )
        oauth_error(status, body, "invalid_client", 401)
        assert headers.get("WWW-Authenticate", "").lower().startswith("basic")
        assert headers.get("Cache-Control") == "no-store"
        status, body, _ = await token_request(
            op, form | {"code_verifier": verifier, "client_id": mine.client_id, "client_secret": "wrong"}
        )
        oauth_error(status, body, "invalid_client", 401)

        creds = (mine.client_id, mine.secret or "")
        # PKCE: the verifier missing, then wrong (each on a fresh code)
        code, verifier = await fresh_code()
        status, body, _ = await token_request(op, form | {"code": code}, basic=creds)
        oauth_error(status, body, "invalid_grant")
        code, verifier = await fresh_code()
        status, body, _ = await token_request(
            op, form | {"code": code, "code_verifier": "w" * 43}, basic=creds
        )
        oauth_error(status, body, "invalid_grant")
        # a redirect_uri that is not the one the code was issued for
        code, verifier = await fresh_code()
        status, body, _ = await token_request(
            op,
            form | {"code": code, "code_verifier": verifier, "redirect_uri": other.redirect_uri},
            basic=creds,
        )
        oauth_error(status, body, "invalid_grant")
        # a code of client A presented by client B with B's own credentials
        code, verifier = await fresh_code()
        status, body, _ = await token_request(
            op,
            {
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "redirect_uri": other.redirect_uri,
            },
            basic=(other.client_id, other.secret or ""),
        )
        oauth_error(status, body, "invalid_grant")
        status, body, _ = await token_request(
            op, {"grant_type": "password", "username": "u", "password": "p"}, basic=creds
        )
        oauth_error(status, body, "unsupported_grant_type")
        status, body, _ = await token_request(op, {"grant_type": "authorization_code"}, basic=creds)
        assert status == 400 and body["error"] in ("invalid_request", "invalid_grant"), body
    assert errors.records == [], errors.lines()


async def test_a_reused_code_is_refused_and_the_tokens_it_gave_are_revoked(op: OP, errors: ErrorLog) -> None:
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        login = await browser.login(rp.authorization_url(), op.phone())
        token = await rp.fetch_token(login.redirect)
        status, _, _ = await rp.userinfo(token["access_token"])
        assert status == 200
        replay = {k: v[0] for k, v in parse_qs(urlsplit(login.redirect).query).items()}
        status, body, _ = await token_request(
            op,
            {
                "grant_type": "authorization_code",
                "code": replay["code"],
                "code_verifier": rp.verifier,
                "redirect_uri": rp.rp.redirect_uri,
            },
            basic=(rp.rp.client_id, rp.rp.secret or ""),
        )
        oauth_error(status, body, "invalid_grant")
        # everything the first exchange gave is dead now
        status, body, _ = await token_request(
            op,
            {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
            basic=(rp.rp.client_id, rp.rp.secret or ""),
        )
        oauth_error(status, body, "invalid_grant")
        status, info, challenge = await rp.userinfo(token["access_token"])
        assert status == 401, info
        assert 'error="invalid_token"' in challenge
    assert errors.records == [], errors.lines()


async def test_an_expired_code_is_refused(op: OP, errors: ErrorLog) -> None:
    async with op.browser() as browser, AuthlibRP(op, op.rps["authlib"]) as rp:
        await scan_in(op, rp, browser, op.phone())
        location = await silent_code(op, rp, browser)
        op.clock.advance(61)  # the services' clock: the code's 60 s are over
        try:
            status, body, _ = await token_request(
                op,
                {
                    "grant_type": "authorization_code",
                    "code": parse_qs(urlsplit(location).query)["code"][0],
                    "code_verifier": rp.verifier,
                    "redirect_uri": rp.rp.redirect_uri,
                },
                basic=(rp.rp.client_id, rp.rp.secret or ""),
            )
        finally:
            op.clock.advance(-61)
        oauth_error(status, body, "invalid_grant")
    assert errors.records == [], errors.lines()


async def test_a_refresh_token_of_another_client_is_refused(op: OP, errors: ErrorLog) -> None:
    mine, other = op.rps["authlib"], op.rps["other"]
    async with op.browser() as browser, AuthlibRP(op, mine) as rp:
        token = await scan_in(op, rp, browser, op.phone())
        status, body, _ = await token_request(
            op,
            {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
            basic=(other.client_id, other.secret or ""),
        )
        oauth_error(status, body, "invalid_grant")
        # revoking it as the other client is a 200 that changes nothing (RFC 7009 §2.2)
        async with op.http.post(
            op.discovery["revocation_endpoint"],
            data={"token": token["refresh_token"], "token_type_hint": "refresh_token"},
            headers={"Authorization": aiohttp.encode_basic_auth(other.client_id, other.secret or "")},
        ) as resp:
            assert resp.status == 200, await resp.text()
        refreshed = await rp.refresh(token["refresh_token"])  # still its owner's
        # its owner revokes it: then it is dead
        async with op.http.post(
            op.discovery["revocation_endpoint"],
            data={"token": refreshed["refresh_token"], "token_type_hint": "refresh_token"},
            headers={"Authorization": aiohttp.encode_basic_auth(mine.client_id, mine.secret or "")},
        ) as resp:
            assert resp.status == 200, await resp.text()
        status, body, _ = await token_request(
            op,
            {"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]},
            basic=(mine.client_id, mine.secret or ""),
        )
        oauth_error(status, body, "invalid_grant")
    assert errors.records == [], errors.lines()


async def test_a_scene_of_site_a_cannot_be_completed_by_site_b(op: OP, errors: ErrorLog) -> None:
    """A login the phone approved for site A (whose name it showed) never turns into a code or
    tokens for site B, through the OP or through the browser API."""
    site_a, site_b = op.rps["authlib"], op.rps["other"]
    async with op.browser() as browser, AuthlibRP(op, site_a) as rp_a, AuthlibRP(op, site_b) as rp_b:
        phone = op.phone()
        for route in ("oidc", "browser api"):
            async with browser.http.post(
                f"{op.issuer}/api/login/qrcode",
                json={"client_id": site_a.client_id},
                headers={"Origin": op.issuer},
            ) as resp:
                issued = await resp.json()
                assert resp.status == 201, issued
            scan = await phone.scan(decode_scene(issued["image"]))
            assert scan["site"] == "Site authlib"  # the phone shows A's registered name
            await phone.confirm(issued["scene"])
            if route == "oidc":
                params = {k: v[0] for k, v in parse_qs(urlsplit(rp_b.authorization_url()).query).items()}
                status, body = await browser.post_complete(issued["scene"], issued["ticket"], params)
            else:
                async with browser.http.post(
                    f"{op.issuer}/api/login/complete",
                    json={
                        "scene": issued["scene"],
                        "ticket": issued["ticket"],
                        "client_id": site_b.client_id,
                    },
                    headers={"Origin": op.issuer},
                ) as resp:
                    status, body = resp.status, await resp.json()
            assert status == 403, body
            assert "redirect_to" not in body and "access_token" not in body
            assert body["error"]["code"] == "client_mismatch", body
        # site A itself still can: the refusal did not spend the scene
        params = {k: v[0] for k, v in parse_qs(urlsplit(rp_a.authorization_url()).query).items()}
        redirect = await browser.complete(issued["scene"], issued["ticket"], params)
        assert (await rp_a.fetch_token(redirect))["id_token"]
    assert errors.records == [], errors.lines()


# ==================================================================================================
# The discovery document, as a strict relying party reads it
# ==================================================================================================


async def test_the_discovery_document_passes_a_strict_relying_partys_checks(op: OP) -> None:
    async with op.http.get(f"{op.issuer}/.well-known/openid-configuration") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        doc = await resp.json()
    problems = [f"missing {name}" for name in DISCOVERY_REQUIRED if not doc.get(name)]
    issuer = doc.get("issuer", "")
    parts = urlsplit(issuer)
    if issuer != op.issuer:
        problems.append(f"issuer {issuer!r} is not the URL it was fetched under ({op.issuer!r})")
    if parts.query or parts.fragment or issuer.endswith("/"):
        problems.append("the issuer has a query, a fragment or a trailing slash")
    if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost"):
        problems.append("the issuer is not https")
    for name, value in doc.items():
        if (
            name.endswith(("_endpoint", "_uri"))
            and isinstance(value, str)
            and not value.startswith(issuer + "/")
        ):
            problems.append(f"{name} {value!r} is not under the issuer")
    expected = {
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "claims_parameter_supported": False,
    }
    problems += [f"{k} is {doc.get(k)!r}, not {v!r}" for k, v in expected.items() if doc.get(k) != v]
    algs = doc.get("id_token_signing_alg_values_supported", [])
    if "RS256" not in algs or "none" in algs:
        problems.append(f"id_token_signing_alg_values_supported {algs}")
    if not set(doc.get("subject_types_supported", [])) <= {"public", "pairwise"}:
        problems.append("unknown subject types")
    if not set(doc.get("grant_types_supported", [])) >= {"authorization_code", "refresh_token"}:
        problems.append("grant types")
    if "openid" not in doc.get("scopes_supported", []):
        problems.append("scopes_supported lacks openid")
    if not set(doc.get("token_endpoint_auth_methods_supported", [])) >= {
        "client_secret_basic",
        "client_secret_post",
    }:
        problems.append("token_endpoint_auth_methods_supported")
    advertised = set(doc.get("scopes_supported", [])) | set(doc.get("claims_supported", []))
    problems += [f"advertises {name}" for name in sorted(advertised) if name.startswith("email")]
    for claim in (
        "sub",
        "iss",
        "aud",
        "exp",
        "iat",
        "auth_time",
        "nonce",
        "preferred_username",
        "given_name",
        "family_name",
        "name",
        "phone_number",
        "phone_number_verified",
    ):
        if claim not in doc.get("claims_supported", []):
            problems.append(f"claims_supported lacks {claim}")
    assert problems == [], problems

    async with op.http.get(doc["jwks_uri"]) as resp:
        assert resp.status == 200
        jwks = await resp.json()
    keys = jwks["keys"]
    assert len({k["kid"] for k in keys}) == len(keys), "kids are not unique"
    for key in keys:
        assert key.get("kid") and key.get("alg") and key.get("use") == "sig", key
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key), f"private material in {key['kid']}"
    assert {(k["kty"], k["alg"]) for k in keys} >= {("RSA", "RS256"), ("OKP", "EdDSA")}
    KeySet.import_key_set(jwks)  # every key parses
