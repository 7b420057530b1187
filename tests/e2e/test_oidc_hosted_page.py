"""The OpenID Connect provider's hosted login page in Debian's Chromium: a relying party sends the
browser to /oidc/authorize, the page shows the client's site name and the code in Chinese or English,
the simulated phone scans the code off the screen and confirms, and the browser lands on the
redirect_uri with code, state and iss. The OP session cookie then gives a silent login (prompt=none).
It also measures the time from the phone's confirm to the browser's request for the redirect_uri.

The demo page's "Log in with OIDC" runs the same login in a window of its own, scanned by the demo's
simulated phone, and its callback page shows the verified ID token's claims.
"""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from shared.bus import MemoryBroker
from shared.clients import hash_secret
from shared.config import Settings
from shared.mongo import EmbeddedMongo, free_port
from sim.phone import Phone
from tests.e2e.conftest import STEP, open_demo, scene_on_screen, screenshot
from tests.support import Sim, System, drop_database, make_settings, start_sim

SECRET = "e2e-secret-" + "z" * 40
SITE_NAME = "示例商城 Shop"
# Measured here: from the phone's confirm (the request leaving) to the browser asking for redirect_uri.
LATENCIES_MS: list[float] = []
RP_PAGE = '<!doctype html><title>RP</title><link rel="icon" href="data:,"><p>back at the site</p>'


@dataclass
class RelyingParty:
    """A relying party's callback, as a tiny web server: it notes when each request came."""

    url: str
    hits: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class OpStack:
    system: System
    sim: Sim
    settings: Settings
    http: aiohttp.ClientSession
    rp: RelyingParty

    @property
    def issuer(self) -> str:
        return self.settings.issuer


@pytest.fixture
async def op(mongo_server: EmbeddedMongo, unique: str, tmp_path: Path) -> AsyncIterator[OpStack]:
    async def callback(request: web.Request) -> web.Response:
        rp.hits.append((time.monotonic(), str(request.url)))
        return web.Response(text=RP_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/cb", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    rp_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", rp_port).start()
    rp = RelyingParty(f"http://127.0.0.1:{rp_port}")
    clients = tmp_path / "clients.yaml"
    clients.write_text(
        "clients:\n"
        "  - client_id: e2e-site\n"
        f'    client_secret_hash: "{hash_secret(SECRET)}"\n'
        f'    site_name: "{SITE_NAME}"\n'
        f'    redirect_uris: ["{rp.url}/cb"]\n',
        encoding="utf-8",
    )
    port = free_port()
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"e2e_{unique}",
        clients_file=str(clients),
        issuer_url=f"http://127.0.0.1:{port}",
        code_pool_size=2,
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    system = await System(settings).start(broker=MemoryBroker(), ports={"gateway": port})
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP / 1000))
    try:
        yield OpStack(system, sim, settings, http, rp)
    finally:
        await http.close()
        await system.stop()
        await sim.stop()
        await drop_database(settings)
        await runner.cleanup()


def authorize_url(op: OpStack, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": "e2e-site",
        "redirect_uri": f"{op.rp.url}/cb",
        "scope": "openid profile",
        "state": "st-e2e",
        "nonce": "n-e2e",
        **extra,
    }
    return f"{op.issuer}/oidc/authorize?{urlencode(params)}"


async def landed(page: Page, op: OpStack) -> dict[str, str]:
    """Wait until the browser is at the redirect_uri; its query parameters."""
    await page.wait_for_url(f"{op.rp.url}/cb?**", timeout=STEP)
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


async def exchange(op: OpStack, code: str) -> dict[str, object]:
    """The relying party's back channel: the code for tokens (client_secret_basic)."""
    auth = base64.b64encode(f"e2e-site:{SECRET}".encode()).decode()
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": f"{op.rp.url}/cb"}
    async with op.http.post(
        f"{op.issuer}/oidc/token", data=form, headers={"Authorization": f"Basic {auth}"}
    ) as resp:
        body: dict[str, object] = await resp.json()
        assert resp.status == 200, body
        return body


LANGUAGES = {
    "zh-CN": {"lang": "zh-CN", "lead": "请使用微信扫码登录", "box": "请使用微信扫一扫登录"},
    "en": {"lang": "en", "lead": "Scan with WeChat to log in", "box": "Scan with WeChat to log in"},
}


@pytest.mark.parametrize("locale", list(LANGUAGES))
async def test_the_hosted_page_logs_in_with_the_phone_and_lands_on_the_redirect_uri(
    browser: Browser, op: OpStack, locale: str
) -> None:
    words = LANGUAGES[locale]
    context = await browser.new_context(locale="zh-CN", viewport={"width": 480, "height": 640})
    context.set_default_timeout(STEP)
    page = await context.new_page()
    problems: list[str] = []  # uncaught errors and console errors (a CSP violation would be one)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    await page.goto(authorize_url(op, ui_locales=locale))

    assert await page.get_attribute("html", "lang") == words["lang"]
    await expect(page.locator("h1")).to_have_text(SITE_NAME)
    await expect(page.locator(".lead")).to_have_text(words["lead"])
    await expect(page.locator(".wxl-status")).to_have_text(words["box"])
    scene = await scene_on_screen(page)  # what the phone's camera reads off the screen
    await screenshot(page, f"oidc-hosted-page-{locale}")

    phone = Phone(op.http, op.issuer, op.sim.url)
    await phone.register()
    scanned = await phone.scan(scene)
    assert scanned["site"] == SITE_NAME  # the phone shows the client's registered name
    sent = time.monotonic()
    await phone.confirm(scene)
    params = await landed(page, op)
    LATENCIES_MS.append((op.rp.hits[-1][0] - sent) * 1000)

    assert params["state"] == "st-e2e"
    assert params["iss"] == op.issuer
    assert len(params["code"]) >= 32
    tokens = await exchange(op, params["code"])
    claims = jwt.decode(str(tokens["id_token"]), options={"verify_signature": False})
    assert claims["aud"] == "e2e-site" and claims["nonce"] == "n-e2e" and claims["iss"] == op.issuer

    # The OP session cookie as the browser keeps it.
    (cookie,) = [c for c in await context.cookies(op.issuer) if c["name"] == "wxlogin_op"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert cookie["secure"] is False  # a plain-http issuer (development); https: __Host- and Secure
    # A second authorization in this browser needs no scan: prompt=none goes straight back.
    await page.goto(authorize_url(op, prompt="none", state="st-silent", ui_locales=locale))
    silent = await landed(page, op)
    assert silent["state"] == "st-silent" and silent["iss"] == op.issuer and "code" in silent
    assert problems == []
    await context.close()
    print(
        f"\nconfirm → redirect_uri requested: {LATENCIES_MS[-1]:.1f} ms "
        f"(median of {len(LATENCIES_MS)} so far: {statistics.median(LATENCIES_MS):.1f} ms)"
    )


@pytest.fixture
async def demo_op(mongo_server: EmbeddedMongo, unique: str) -> AsyncIterator[tuple[System, Sim, Settings]]:
    """The demo in one piece, as make demo builds it: its clients file names this gateway's port."""
    from services.startup import demo_clients_file

    port = free_port()
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"e2e_{unique}",
        demo=True,
        allowed_origins=f"http://127.0.0.1:{port}",
        gateway_port=port,
        clients_file=demo_clients_file(port),
        code_pool_size=2,
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    system = await System(settings).start(broker=MemoryBroker(), ports={"gateway": port})
    try:
        yield system, sim, settings
    finally:
        await system.stop()
        await sim.stop()
        await drop_database(settings)
        Path(settings.clients_file).unlink(missing_ok=True)


async def test_the_demo_logs_in_with_oidc_in_a_window_the_simulated_phone_scans(
    browser: Browser, demo_op: tuple[System, Sim, Settings]
) -> None:
    system, _, settings = demo_op

    class Demo:  # what open_demo needs of the demo fixture
        url = system.gateway

    problems: list[str] = []
    page = await open_demo(browser, Demo, errors=problems)  # type: ignore[arg-type]
    await expect(page.locator("#oidc-login")).to_be_visible()
    async with page.expect_popup() as opened:
        await page.click("#oidc-login")
    popup = await opened.value
    await expect(popup.locator("h1")).to_have_text("wxlogin OIDC 演示")
    await expect(popup.locator(".wxl")).to_have_attribute("data-state", "pending")
    popup_scene = await popup.locator(".wxl").get_attribute("data-scene")
    # The demo's phone scans the code in the login window (the box on the left has another one).
    assert popup_scene != await page.locator(".wxl").get_attribute("data-scene")
    await expect(page.locator("#phone-scan")).to_be_enabled()
    await page.wait_for_timeout(300)  # the phone looks at the window every 200 ms
    await page.click("#phone-scan")
    await expect(page.locator("#phone-site")).to_contain_text("wxlogin OIDC 演示")
    await page.click("#phone-confirm")
    await popup.wait_for_url(f"{settings.issuer}/demo/callback*", timeout=STEP)
    await expect(popup.locator("#status")).to_have_class("ok")
    await expect(popup.locator("#checks .bad")).to_have_count(0)
    await expect(popup.locator("#checks")).to_contain_text("签名有效 · the signature verifies")
    await expect(popup.locator("#claims")).to_contain_text("nonce")
    await expect(popup.locator("#userinfo")).to_contain_text("preferred_username")
    assert "code=" not in popup.url  # the callback took the code out of the address bar
    await screenshot(popup, "oidc-demo-callback")
    assert problems == []
