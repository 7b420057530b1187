"""The SDK's link mode in Chromium (docs/linking.md, docs/embed.md): a site's page, on its own origin,
gets a link token from its own backend (which opens the link request with the client's secret) and
mounts the box with ``link``; the simulated phone reads the code off the screen and confirms; the box
says it linked and calls ``onLinked``. The same WeChat user on another account of the site is refused,
and the box says why."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from shared.bus import MemoryBroker
from shared.clients import new_secret
from shared.mongo import EmbeddedMongo, free_port
from sim.phone import Phone, PhoneError
from tests.e2e.conftest import STEP, expect_state, scene_on_screen
from tests.support import Sim, System, drop_database, make_settings, start_sim

SECRET, SECRET_HASH = new_secret()
# The site's page: its backend hands out a link token for the signed-in account (?account=…).
PAGE = """<!doctype html><meta charset="utf-8"><title>shop</title>
<div id="wx-link"></div><p id="linked"></p>
<script src="{gateway}/sdk/wxlogin.js"></script>
<script>
  const account = new URLSearchParams(location.search).get('account');
  WxLogin.mount('#wx-link', {{endpoint: '{gateway}', clientId: 'shop',
    lang: new URLSearchParams(location.search).get('lang') || 'zh',
    link: () => fetch('/link-token?account=' + account).then((r) => r.json()).then((j) => j.link_token),
    onLinked: (r) => {{ document.getElementById('linked').textContent = r.state + ' ' + r.link_request; }}}});
</script>
"""


@dataclass
class Shop:
    system: System
    sim: Sim
    http: aiohttp.ClientSession
    gateway: str
    site: str


@pytest.fixture
async def shop(mongo_server: EmbeddedMongo, tmp_path: Path) -> AsyncIterator[Shop]:
    port, site_port = free_port(), free_port()
    site = f"http://127.0.0.1:{site_port}"
    clients = tmp_path / "clients.yaml"
    clients.write_text(
        "clients:\n  - client_id: shop\n"
        f"    client_secret_hash: {SECRET_HASH}\n    site_name: 示例商城\n    web_origins: ['{site}']\n",
        encoding="utf-8",
    )
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"e2e_{uuid.uuid4().hex[:10]}",
        clients_file=str(clients),
        code_pool_size=2,
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    system = await System(settings).start(broker=MemoryBroker(), ports={"gateway": port})
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP / 1000))
    gateway = f"http://127.0.0.1:{port}"

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE.format(gateway=gateway), content_type="text/html")

    async def link_token(request: web.Request) -> web.Response:
        # The site's backend: its client secret never reaches the browser.
        basic = base64.b64encode(f"shop:{SECRET}".encode()).decode()
        body = {"external_id": request.query["account"], "hint": "张*三"}
        async with http.post(
            f"{gateway}/api/link/requests", json=body, headers={"Authorization": f"Basic {basic}"}
        ) as resp:
            opened = await resp.json()
            assert resp.status == 201, opened
        return web.json_response({"link_token": opened["link_token"]})

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/link-token", link_token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", site_port).start()
    try:
        yield Shop(system, sim, http, gateway, site)
    finally:
        await runner.cleanup()
        await http.close()
        await system.stop()
        await sim.stop()
        await drop_database(settings)


async def test_the_link_mode_links_the_signed_in_account_and_says_why_when_refused(
    browser: Browser, shop: Shop
) -> None:
    errors: list[str] = []
    page = await browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{shop.site}/?account=acct-7")
    box, status = page.locator(".wxl"), page.locator(".wxl-status")
    await expect_state(page, "pending")
    await expect(box).to_have_attribute("data-mode", "link")
    await expect(status).to_have_text("请使用微信扫一扫，把微信绑定到当前账号")  # noqa: RUF001
    scene = await scene_on_screen(page)
    phone = Phone(shop.http, shop.gateway, shop.sim.url)
    await phone.register()
    scanned = await phone.scan(scene)
    assert scanned["purpose"] == "link" and scanned["account_hint"] == "张*三"
    await expect(status).to_have_text("扫码成功，请在手机上确认绑定")  # noqa: RUF001
    await phone.confirm(scene)
    await expect(page.locator("#linked")).to_contain_text("linked lr_")
    await expect_state(page, "done")
    await expect(status).to_have_text("绑定成功")

    # The same WeChat user, another account of the site (a page in English): refused on the phone,
    # and the box says why.
    await page.goto(f"{shop.site}/?account=acct-8&lang=en")
    await expect_state(page, "pending")
    scene = await scene_on_screen(page)
    await phone.scan(scene)
    with pytest.raises(PhoneError, match="already_linked"):
        await phone.confirm(scene)
    await expect_state(page, "cancelled")
    await expect(box).to_have_attribute("data-reason", "already_linked")
    await expect(status).to_have_text(
        "This WeChat is already linked to another account of this site: unlink it there first"
    )
    assert errors == []
