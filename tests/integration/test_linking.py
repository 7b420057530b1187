"""Account linking end to end (docs/linking.md), through the public HTTP API of a running stack: a
site's backend opens a link request (HTTP Basic as its client), the signed-in user's browser shows the
link code (with the request's single-use link token) and watches it, the simulated phone scans it (and
is told it links to the site's account), confirms, and the browser collects the outcome; the backend
asks where the request stands and receives ``identity.linked`` by webhook, verified with the
``standardwebhooks`` package; every later login of that WeChat user at that site carries
``external_id`` (browser API, OpenID Connect tokens and userinfo), never at another site. Each rule:
single use, short life, bound to the browser; a WeChat user linked to another account and an account
linked to another WeChat refused with 409 on the phone and told to the browser; several WeChat users
per account when the client allows it; relinking idempotent; unlinking by the backend.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from services.webhook.app import create_app as create_webhook_app
from shared.bus import MemoryBroker
from shared.clients import new_secret
from shared.config import Settings
from shared.httpserver import AppRunner
from shared.mongo import EmbeddedMongo, free_port
from shared.runtime import AccessLogger
from sim.phone import Phone, PhoneError
from tests.integration.webhook_support import Receiver, whsec
from tests.scenes import FakeClock
from tests.support import Sim, System, drop_database, eventually, make_settings, start_sim

SHOP = "https://shop.example.com"
FAMILY = "https://family.example.com"
BLOG = "https://blog.example.com"
SECRETS = {name: new_secret() for name in ("shop", "family", "blog")}
NO_LIMITS = {
    **{f"limit_{kind}_per_ip_per_minute": 0 for kind in ("issue", "mp", "ws", "poll", "login", "session")},
    "limit_user_per_minute": 0,
    "limit_issue_prefix_share_percent": 100,
}

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Stack:
    """The four services and the webhook service on one in-memory bus, the simulator, a receiver."""

    system: System
    sim: Sim
    settings: Settings
    http: aiohttp.ClientSession
    base: str
    receiver: Receiver
    clock: FakeClock
    webhook: AppRunner | None = None

    async def phone(self, *, code_with_scan: bool = True) -> Phone:
        phone = Phone(self.http, self.base, self.sim.url, code_with_scan=code_with_scan)
        await phone.register()
        return phone

    async def call(
        self, method: str, path: str, *, client: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}))
        if client is not None:
            headers["Authorization"] = basic(client, SECRETS[client][0])
        async with self.http.request(
            method, self.base + path, headers=headers, allow_redirects=False, **kwargs
        ) as resp:
            body = await resp.json(content_type=None) if resp.content_type == "application/json" else None
            return resp.status, body, resp


def basic(client: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client}:{secret}".encode()).decode()


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def clients_yaml(receiver: Receiver) -> str:
    entry = {"redirect_uris": [], "web_origins": []}
    clients = [
        {
            **entry,
            "client_id": "shop",
            "client_secret_hash": SECRETS["shop"][1],
            "site_name": "示例商城",
            "redirect_uris": [f"{SHOP}/cb"],
            "web_origins": [SHOP],
            "webhooks": [
                {
                    "id": "main",
                    "url": receiver.url,
                    "secret_envs": ["SHOP_HOOK"],
                    "events": ["identity.linked", "identity.unlinked", "login.succeeded"],
                }
            ],
        },
        {
            **entry,
            "client_id": "family",
            "client_secret_hash": SECRETS["family"][1],
            "site_name": "家庭相册",
            "web_origins": [FAMILY],
            "allow_multiple_links": True,
        },
        {
            **entry,
            "client_id": "blog",
            "client_secret_hash": SECRETS["blog"][1],
            "site_name": "Blog",
            "redirect_uris": [f"{BLOG}/cb"],
            "web_origins": [BLOG],
            "subject_type": "pairwise",
        },
        {**entry, "client_id": "spa", "site_name": "SPA", "web_origins": ["https://spa.example.com"]},
    ]
    return yaml.safe_dump({"clients": clients}, allow_unicode=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    mongo_server: EmbeddedMongo, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    receiver = await Receiver([whsec()]).start()
    path = tmp_path_factory.mktemp("linking") / "clients.yaml"
    path.write_text(clients_yaml(receiver), encoding="utf-8")
    port = free_port()
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"t_{uuid.uuid4().hex[:10]}",
        clients_file=str(path),
        issuer_url=f"http://127.0.0.1:{port}",
        code_pool_size=2,
        webhook_http_hosts="127.0.0.1",
        webhook_allowed_networks="127.0.0.1",
        webhook_poll_seconds=0.1,
        **NO_LIMITS,
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    broker, clock = MemoryBroker(), FakeClock(follow_real_time=True)
    system = await System(settings).start(broker=broker, clock=clock, ports={"gateway": port})
    webhook = AppRunner(
        create_webhook_app(settings, broker=broker, environ={"SHOP_HOOK": receiver.secrets[0]}),
        access_log_class=AccessLogger,
        shutdown_timeout=1,
    )
    await webhook.setup()
    await web.TCPSite(webhook, "127.0.0.1", free_port()).start()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    running = Stack(system, sim, settings, http, f"http://127.0.0.1:{port}", receiver, clock, webhook)
    try:
        yield running
    finally:
        await http.close()
        await webhook.cleanup()
        await system.stop()
        await sim.stop()
        await receiver.stop()
        await drop_database(settings)


# --- what each party does ---------------------------------------------------------------------------


async def open_request(stack: Stack, external_id: str, *, client: str = "shop", hint: str = "张*三") -> Any:
    status, body, _ = await stack.call(
        "POST", "/api/link/requests", client=client, json={"external_id": external_id, "hint": hint}
    )
    assert status == 201, body
    return body


@dataclass
class LinkBrowser:
    """The signed-in user's page with the SDK's link mode: a code for the link token, its socket."""

    stack: Stack
    client: str
    origin: str
    scene: str = ""
    ticket: str = ""
    ws: aiohttp.ClientWebSocketResponse | None = None

    async def show(self, link_token: str) -> tuple[int, Any]:
        status, body, _ = await self.stack.call(
            "POST",
            "/api/login/qrcode",
            json={"client_id": self.client, "link_token": link_token},
            headers={"Origin": self.origin},
        )
        if status == 201:
            self.scene, self.ticket = body["scene"], body["ticket"]
        return status, body

    async def watch(self) -> dict[str, Any]:
        self.ws = await self.stack.http.ws_connect(
            f"{self.stack.base}/api/login/ws", headers={"Origin": self.origin}
        )
        await self.ws.send_json({"type": "subscribe", "scene": self.scene, "ticket": self.ticket})
        return await self.pushed()

    async def pushed(self) -> dict[str, Any]:
        assert self.ws is not None
        message: dict[str, Any] = await self.ws.receive_json(timeout=5)
        return message

    async def complete(self, path: str = "/api/link/complete") -> tuple[int, Any]:
        status, body, _ = await self.stack.call(
            "POST",
            path,
            json={"scene": self.scene, "ticket": self.ticket, "client_id": self.client},
            headers={"Origin": self.origin},
        )
        return status, body

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


ORIGINS = {"shop": SHOP, "family": FAMILY, "blog": BLOG}


async def link(stack: Stack, phone: Phone, external_id: str, *, client: str = "shop") -> tuple[Any, Any]:
    """The whole link flow for ``phone``; (the request as opened, the phone's confirm error or None)."""
    opened = await open_request(stack, external_id, client=client)
    browser = LinkBrowser(stack, client, ORIGINS[client])
    assert (await browser.show(opened["link_token"]))[0] == 201
    assert (await browser.watch())["state"] == "pending"
    await phone.scan(browser.scene)
    try:
        await phone.confirm(browser.scene)
    except PhoneError as refused:
        return opened, refused
    finally:
        await browser.close()
    return opened, None


async def login(stack: Stack, phone: Phone, client: str | None = "shop") -> dict[str, Any]:
    """A scan login at ``client`` (None: the default client) through the browser API: its tokens."""
    body = {"client_id": client} if client else None
    headers = {"Origin": ORIGINS[client]} if client else {}
    status, issued, _ = await stack.call("POST", "/api/login/qrcode", json=body, headers=headers)
    assert status == 201, issued
    await phone.scan(issued["scene"])
    await phone.confirm(issued["scene"])
    status, tokens, _ = await stack.call(
        "POST",
        "/api/login/complete",
        json={"scene": issued["scene"], "ticket": issued["ticket"], **(body or {})},
        headers=headers,
    )
    assert status == 200, tokens
    result: dict[str, Any] = tokens
    return result


async def state_of(stack: Stack, link_request: str, client: str = "shop") -> dict[str, Any]:
    status, body, _ = await stack.call("GET", f"/api/link/requests/{link_request}", client=client)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def delivered(stack: Stack, type_: str) -> list[dict[str, Any]]:
    return [r.json() for r in stack.receiver.delivered() if r.json()["type"] == type_]


# --- the flow -----------------------------------------------------------------------------------------


async def test_a_site_links_its_account_by_scan_and_learns_it_by_webhook_and_by_asking(stack: Stack) -> None:
    phone = await stack.phone()
    earlier = await login(stack, phone)  # a session of this user from before the link
    assert "external_id" not in earlier["user"] and "external_id" not in claims(earlier["access_token"])

    opened = await open_request(stack, "acct-1001", hint="张*三")
    assert opened["link_request"].startswith("lr_") and len(opened["link_token"]) >= 43
    assert 0 < opened["expires_in"] <= stack.settings.scene_ttl_seconds
    assert (await state_of(stack, opened["link_request"]))["state"] == "pending"

    browser = LinkBrowser(stack, "shop", SHOP)
    status, issued = await browser.show(opened["link_token"])
    assert status == 201 and issued["image"].startswith("data:image/")
    assert (await browser.watch())["state"] == "pending"

    # The phone is told plainly what it approves: linking this WeChat to the site's account.
    scanned = await phone.scan(browser.scene)
    assert (
        scanned["purpose"] == "link" and scanned["account_hint"] == "张*三" and scanned["site"] == "示例商城"
    )
    assert (await browser.pushed())["state"] == "scanned"
    assert (await state_of(stack, opened["link_request"]))["state"] == "scanned"

    assert (await phone.confirm(browser.scene))["state"] == "confirmed"
    assert (await browser.pushed())["state"] == "confirmed"
    # A link code never yields tokens for the WeChat user who linked: only its outcome.
    status, refused = await browser.complete("/api/login/complete")
    assert status == 403 and refused["error"]["code"] == "scene_purpose_mismatch"
    status, done = await browser.complete()
    assert status == 200, done
    assert done == {"state": "linked", "scene": browser.scene, "link_request": opened["link_request"]}
    await browser.close()

    user_id = earlier["user"]["id"]
    known = await state_of(stack, opened["link_request"])
    assert known["state"] == "linked" and known["external_id"] == "acct-1001" and known["sub"] == user_id
    assert "linked_at" in known

    # The webhook: identity.linked with the site's external_id, signed (verified by the library).
    await eventually(lambda: delivered(stack, "identity.linked"), timeout=5)
    (event,) = [e for e in delivered(stack, "identity.linked") if e["data"]["external_id"] == "acct-1001"]
    assert event["data"] == {
        "client_id": "shop",
        "sub": user_id,
        "external_id": "acct-1001",
        "link_request": opened["link_request"],
    }
    assert all(all(r.verified.values()) for r in stack.receiver.requests)

    # Every login of this WeChat user at this site now carries the site's account.
    tokens = await login(stack, phone)
    assert tokens["user"]["external_id"] == "acct-1001"
    assert claims(tokens["access_token"])["external_id"] == "acct-1001"
    status, me, _ = await stack.call(
        "GET", "/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert status == 200 and me["external_id"] == "acct-1001"
    await eventually(
        lambda: [
            e for e in delivered(stack, "login.succeeded") if e["data"].get("external_id") == "acct-1001"
        ]
    )
    # So does a session from before the link, once refreshed.
    status, refreshed, _ = await stack.call(
        "POST", "/api/token/refresh", json={"refresh_token": earlier["refresh_token"]}
    )
    assert status == 200 and claims(refreshed["access_token"])["external_id"] == "acct-1001"
    # Not at another site (the default client here).
    elsewhere = await login(stack, phone, client=None)
    assert "external_id" not in elsewhere["user"] and "external_id" not in claims(elsewhere["access_token"])


async def hosted_login(stack: Stack, phone: Phone, client: str, redirect: str) -> dict[str, Any]:
    """An OpenID Connect login of ``phone`` at ``client``, as the hosted page does it; the tokens."""
    params = {
        "response_type": "code",
        "client_id": client,
        "redirect_uri": redirect,
        "scope": "openid profile",
        "state": "st",
        "nonce": "n-1",
    }
    own = {"Origin": stack.base}
    status, issued, _ = await stack.call("POST", "/api/login/qrcode", json={"client_id": client}, headers=own)
    assert status == 201, issued
    await phone.scan(issued["scene"])
    await phone.confirm(issued["scene"])
    status, done, _ = await stack.call(
        "POST",
        "/oidc/authorize/complete",
        json={"scene": issued["scene"], "ticket": issued["ticket"], "params": params},
        headers=own,
    )
    assert status == 200, done
    code = parse_qs(urlsplit(done["redirect_to"]).query)["code"][0]
    status, tokens, _ = await stack.call(
        "POST",
        "/oidc/token",
        client=client,
        data=urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": redirect}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, tokens
    result: dict[str, Any] = tokens
    return result


async def test_the_external_id_is_in_the_linking_clients_oidc_tokens_and_userinfo_only(stack: Stack) -> None:
    phone = await stack.phone()
    _, refused = await link(stack, phone, "acct-oidc")
    assert refused is None
    shop = await hosted_login(stack, phone, "shop", f"{SHOP}/cb")
    assert claims(shop["id_token"])["external_id"] == "acct-oidc"
    assert claims(shop["access_token"])["external_id"] == "acct-oidc"
    bearer = {"Authorization": f"Bearer {shop['access_token']}"}
    status, info, _ = await stack.call("GET", "/oidc/userinfo", headers=bearer)
    assert status == 200 and info["external_id"] == "acct-oidc"
    # The same WeChat user at another site: no trace of the shop's account.
    blog = await hosted_login(stack, phone, "blog", f"{BLOG}/cb")
    for token in (blog["id_token"], blog["access_token"]):
        assert "external_id" not in claims(token)
    status, info, _ = await stack.call(
        "GET", "/oidc/userinfo", headers={"Authorization": f"Bearer {blog['access_token']}"}
    )
    assert status == 200 and "external_id" not in info and "acct-oidc" not in json.dumps(info)


# --- the rules ----------------------------------------------------------------------------------------


async def test_a_link_token_shows_one_code_in_one_browser_and_only_that_browser_collects_it(
    stack: Stack,
) -> None:
    opened = await open_request(stack, "acct-once")
    mine, other = LinkBrowser(stack, "shop", SHOP), LinkBrowser(stack, "shop", SHOP)
    assert (await mine.show(opened["link_token"]))[0] == 201
    status, body = await other.show(opened["link_token"])  # single use
    assert status == 409 and body["error"]["code"] == "link_request_used"
    status, body = await LinkBrowser(stack, "family", FAMILY).show("x" * 43)
    assert status == 404 and body["error"]["code"] == "link_request_not_found"
    # Another browser cannot watch or collect this code (the same ticket rule as a login).
    async with stack.http.ws_connect(f"{stack.base}/api/login/ws", headers={"Origin": SHOP}) as ws:
        await ws.send_json({"type": "subscribe", "scene": mine.scene, "ticket": "t" * 43})
        assert (await ws.receive_json(timeout=5))["code"] == "ticket_invalid"
    phone = await stack.phone()
    await phone.scan(mine.scene)
    await phone.confirm(mine.scene)
    other.scene, other.ticket = mine.scene, "t" * 43
    status, body = await other.complete()
    assert status == 403 and body["error"]["code"] == "ticket_invalid"
    assert (await mine.complete())[0] == 200
    assert (await mine.complete())[0] == 200  # its own retry (an answer lost) hears the same
    # Another site's browser cannot show the shop's request.
    again = await open_request(stack, "acct-twice")
    status, body = await LinkBrowser(stack, "family", FAMILY).show(again["link_token"])
    assert status == 403 and body["error"]["code"] == "client_mismatch"
    assert (await LinkBrowser(stack, "shop", SHOP).show(again["link_token"]))[0] == 201  # still unspent


async def test_a_link_request_lives_as_long_as_a_code(stack: Stack) -> None:
    unused = await open_request(stack, "acct-late")
    shown = await open_request(stack, "acct-unscanned")
    browser = LinkBrowser(stack, "shop", SHOP)
    assert (await browser.show(shown["link_token"]))[0] == 201
    step = stack.settings.scene_ttl_seconds + 1
    stack.clock.advance(step)
    try:
        status, body = await LinkBrowser(stack, "shop", SHOP).show(unused["link_token"])
        assert status == 410 and body["error"]["code"] == "link_request_expired"
        assert (await state_of(stack, unused["link_request"]))["state"] == "expired"

        async def expired() -> bool:
            return (await state_of(stack, shown["link_request"]))["state"] == "expired"

        await eventually(expired, timeout=5)
    finally:
        stack.clock.advance(-step)
    assert (await state_of(stack, shown["link_request"]))["state"] == "expired"  # recorded


async def test_a_wechat_user_linked_to_another_account_is_refused_and_both_sides_learn_it(
    stack: Stack,
) -> None:
    phone = await stack.phone()
    assert (await link(stack, phone, "acct-first"))[1] is None
    opened = await open_request(stack, "acct-second")
    browser = LinkBrowser(stack, "shop", SHOP)
    await browser.show(opened["link_token"])
    await browser.watch()
    await phone.scan(browser.scene)
    assert (await browser.pushed())["state"] == "scanned"
    with pytest.raises(PhoneError) as refused:
        await phone.confirm(browser.scene)
    assert refused.value.status == 409 and refused.value.code == "already_linked"
    assert await browser.pushed() == {
        "type": "state",
        "scene": browser.scene,
        "state": "cancelled",
        "reason": "already_linked",
    }
    await browser.close()
    known = await state_of(stack, opened["link_request"])
    assert known["state"] == "refused" and known["reason"] == "already_linked" and "sub" not in known
    # Never moved: the user's logins still carry the first account.
    assert (await login(stack, phone))["user"]["external_id"] == "acct-first"
    # The same pair again is no conflict: linked, and still one link.
    assert (await link(stack, phone, "acct-first"))[1] is None
    status, body, _ = await stack.call("DELETE", "/api/links/acct-first", client="shop")
    assert status == 200 and body == {"external_id": "acct-first", "unlinked": 1}


async def test_an_account_has_one_wechat_unless_its_site_allows_several(stack: Stack) -> None:
    first, second = await stack.phone(), await stack.phone(code_with_scan=False)  # a code at confirm
    assert (await link(stack, first, "acct-solo"))[1] is None
    opened, refused = await link(stack, second, "acct-solo")
    assert refused is not None and refused.status == 409 and refused.code == "account_already_linked"
    assert (await state_of(stack, opened["link_request"]))["reason"] == "account_already_linked"
    assert "external_id" not in (await login(stack, second))["user"]
    # A site that allows several WeChat users per account (a family's shared account).
    assert (await link(stack, first, "fam-1", client="family"))[1] is None
    assert (await link(stack, second, "fam-1", client="family"))[1] is None
    assert (await login(stack, second, client="family"))["user"]["external_id"] == "fam-1"
    assert (await login(stack, first, client="family"))["user"]["external_id"] == "fam-1"
    # Unlinking one of them by its sub leaves the other.
    sub = (await login(stack, second, client="family"))["user"]["id"]
    status, body, _ = await stack.call("DELETE", f"/api/links/fam-1?sub={sub}", client="family")
    assert status == 200 and body["unlinked"] == 1
    assert "external_id" not in (await login(stack, second, client="family"))["user"]
    assert (await login(stack, first, client="family"))["user"]["external_id"] == "fam-1"


async def test_the_backend_unlinks_and_the_site_is_told(stack: Stack) -> None:
    phone = await stack.phone()
    await link(stack, phone, "acct/unlink-me")
    assert (await login(stack, phone))["user"]["external_id"] == "acct/unlink-me"
    path = "/api/links/" + quote("acct/unlink-me", safe="")
    status, body, _ = await stack.call("DELETE", path, client="shop")
    assert status == 200 and body == {"external_id": "acct/unlink-me", "unlinked": 1}

    def unlinked() -> list[dict[str, Any]]:
        return [
            e for e in delivered(stack, "identity.unlinked") if e["data"]["external_id"] == "acct/unlink-me"
        ]

    (event,) = await eventually(unlinked, timeout=5)
    assert (
        event["data"]["external_id"] == "acct/unlink-me" and event["data"]["reason"] == "unlinked_by_client"
    )
    assert "external_id" not in (await login(stack, phone))["user"]
    status, body, _ = await stack.call("DELETE", path, client="shop")
    assert status == 404 and body["error"]["code"] == "link_not_found"
    # Unlinked, the WeChat user may link another account.
    assert (await link(stack, phone, "acct-next"))[1] is None


async def test_the_backend_routes_want_the_clients_secret_and_valid_input(stack: Stack) -> None:
    body = {"external_id": "acct-x", "hint": "x***"}
    for headers in ({}, {"Authorization": basic("shop", "wrong")}, {"Authorization": basic("spa", "")}):
        status, answer, resp = await stack.call("POST", "/api/link/requests", json=body, headers=headers)
        assert status == 401 and answer["error"]["code"] == "client_auth_required"
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    for bad in ({"external_id": "has space", "hint": "x"}, {"external_id": "a", "hint": ""}, {"hint": "x"}):
        status, answer, _ = await stack.call("POST", "/api/link/requests", client="shop", json=bad)
        assert status == 400 and answer["error"]["code"] == "invalid_request", bad
    status, answer, _ = await stack.call("POST", "/api/link/requests", client="shop", data="x")
    assert status == 415
    status, answer, _ = await stack.call("GET", "/api/link/requests/nope", client="shop")
    assert status == 400 and answer["error"]["code"] == "invalid_request"
    status, answer, _ = await stack.call("GET", "/api/link/requests/lr_" + "A" * 22, client="shop")
    assert status == 404 and answer["error"]["code"] == "link_request_not_found"
    # Another site's request is unknown to this one.
    opened = await open_request(stack, "acct-private", client="family")
    status, answer, _ = await stack.call("GET", f"/api/link/requests/{opened['link_request']}", client="shop")
    assert status == 404 and answer["error"]["code"] == "link_request_not_found"
    status, answer, _ = await stack.call("DELETE", "/api/links/acct-none", client="shop")
    assert status == 404 and answer["error"]["code"] == "link_not_found"
    # The browser side: a malformed link token.
    status, answer, _ = await stack.call(
        "POST", "/api/login/qrcode", json={"client_id": "shop", "link_token": "no"}, headers={"Origin": SHOP}
    )
    assert status == 400 and answer["error"]["code"] == "invalid_request"
