"""Another web site embeds the login box as the README says, from its own origin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from playwright.async_api import Browser, expect

from tests.e2e.conftest import Demo, expect_state, scene_on_screen

# The README's three lines, plus where this test page shows the result.
SCRIPT_PAGE = """<!doctype html><meta charset="utf-8"><title>shop</title>
<div id="wx-login"></div>
<script src="{gateway}/sdk/wxlogin.js"></script>
<script>WxLogin.mount('#wx-login', {{endpoint: '{gateway}', onSuccess: (r) => {{
  document.getElementById('me').textContent = r.user.openid; }}}})</script>
<p id="me"></p>
"""
MODULE_PAGE = """<!doctype html><meta charset="utf-8"><title>shop</title>
<div id="wx-login"></div><p id="me"></p>
<script type="module">
  import WxLogin from '{gateway}/sdk/wxlogin.mjs';
  WxLogin.mount('#wx-login', {{endpoint: '{gateway}', lang: 'en',
    onSuccess: (r) => {{ document.getElementById('me').textContent = r.user.openid; }}}});
</script>
"""


@asynccontextmanager
async def site(port: int, html: str) -> AsyncIterator[str]:
    """A web site on another origin serving one page."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def log_in_on(browser: Browser, demo: Demo, html: str) -> None:
    errors: list[str] = []
    page = await browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    async with site(demo.site_port, html.format(gateway=demo.url)) as url:
        await page.goto(url)
        await expect_state(page, "pending")
        scene = await scene_on_screen(page)
        phone = demo.phone()
        openid = await phone.register()
        await phone.scan(scene)
        await expect_state(page, "scanned")
        await phone.confirm(scene)
        await expect(page.locator("#me")).to_have_text(openid)
        await expect_state(page, "done")
    assert errors == []


async def test_the_three_line_script_embed_logs_in_from_another_origin(browser: Browser, demo: Demo) -> None:
    await log_in_on(browser, demo, SCRIPT_PAGE)


async def test_the_es_module_embed_logs_in_from_another_origin(browser: Browser, demo: Demo) -> None:
    await log_in_on(browser, demo, MODULE_PAGE)


async def test_a_page_whose_origin_is_not_allowed_is_told_which_setting_to_change(
    browser: Browser, demo: Demo
) -> None:
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    html = SCRIPT_PAGE.format(gateway=demo.url).replace(
        "onSuccess:", "onError: (e) => { document.getElementById('me').textContent = e.code; }, onSuccess:"
    )
    async with site(demo.site_port, html):
        # The same site under another name is another origin, and not in the allowed list.
        await page.goto(f"http://localhost:{demo.site_port}/")
        await expect_state(page, "error")
        await expect(page.locator("#me")).to_have_text("origin_not_allowed")
    hints = [line for line in console if "WXLOGIN_ALLOWED_ORIGINS" in line]
    assert hints and f"http://localhost:{demo.site_port}" in hints[0]
