"""Logging in on the phone itself, in a real browser that presents itself as a phone: inside WeChat the
code is shown big with "长按识别小程序码" and the page resumes when it is back in front; in another
phone browser the page offers to save the picture and a login code to type, and the simulated phone
types it. Each path ends logged in.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from shared.bus import MemoryBroker
from shared.logincode import ALPHABET
from shared.mongo import EmbeddedMongo, free_port
from sim.phone import Phone
from tests.e2e.conftest import STEP, Demo, demo_url, expect_state, scene_on_screen, screenshot
from tests.scenes import FakeClock
from tests.support import System, drop_database, make_settings, start_sim

WECHAT_UA = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1160065 MMWEBSDK/20231202 "
    "MMWEBID/2247 MicroMessenger/8.0.47.2560(0x28002F30) WeChat/arm64 Weixin NetType/WIFI "
    "Language/zh_CN ABI/arm64"
)
SAFARI_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)
LOGIN_CODE_SHOWN = re.compile(f"^[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}$")

# Installed before the page's scripts: lets a test play "the app went to the background" (what
# document.visibilityState says) and "the socket died there without a word" (no more events reach
# the page from the sockets it has).
BACKGROUND = """
(() => {
  let visibility = 'visible';
  Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => visibility});
  Object.defineProperty(document, 'hidden', {configurable: true, get: () => visibility === 'hidden'});
  const sockets = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); sockets.push(this); }
  };
  window.__toBackground = () => {
    visibility = 'hidden';
    document.dispatchEvent(new Event('visibilitychange'));
    for (const s of sockets) {
      // Frozen: whatever the server sends or however the socket ends, the page hears nothing.
      s.onmessage = null;
      s.onclose = null;
      s.onerror = null;
      Object.defineProperty(s, 'onmessage', {configurable: true, set() {}, get() { return null; }});
      Object.defineProperty(s, 'onclose', {configurable: true, set() {}, get() { return null; }});
    }
  };
  window.__toForeground = () => {
    visibility = 'visible';
    document.dispatchEvent(new Event('visibilitychange'));
  };
})();
"""


async def open_on_phone(browser: Browser, demo: Demo, user_agent: str, errors: list[str]) -> Page:
    """The demo page in a phone-sized browser that says it is ``user_agent``."""
    context = await browser.new_context(
        locale="zh-CN",
        user_agent=user_agent,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )
    context.set_default_timeout(STEP)
    page = await context.new_page()
    await page.add_init_script(BACKGROUND)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(demo_url(demo))
    return page


async def test_in_wechat_the_code_is_long_pressed_and_the_page_resumes_when_back(
    browser: Browser, demo: Demo
) -> None:
    errors: list[str] = []
    page = await open_on_phone(browser, demo, WECHAT_UA, errors)
    await expect_state(page, "pending")
    box, code = page.locator(".wxl"), page.locator(".wxl-code")
    await expect(box).to_have_attribute("data-device", "wechat")
    await expect(page.locator(".wxl-status")).to_have_text("长按识别小程序码")
    # A plain <img> (WeChat's long-press menu recognises codes in images), at least 280 px.
    assert await code.evaluate("(img) => img.tagName") == "IMG"
    assert (await code.get_attribute("src") or "").startswith("data:image/")
    size = await code.bounding_box()
    assert size is not None and size["width"] >= 280 and size["height"] >= 280
    await expect(page.locator(".wxl-phone")).to_be_hidden()  # nothing to save or type in WeChat
    await screenshot(page, "phone-wechat-long-press")

    # Long-press → 识别小程序码: WeChat opens the mini-program (launch scene 1048) over the page.
    scene = await scene_on_screen(page)
    await page.evaluate("() => window.__toBackground()")
    phone = Phone(demo.http, demo.url, demo.sim.url, launch_scene=1048)
    scan = await phone.scan(scene)
    assert scan["launch"] == "image"
    await phone.confirm(scene)
    # The page heard none of it while in the background.
    await page.wait_for_timeout(300)
    await expect_state(page, "pending")

    # Back in WeChat's browser: the page asks again and logs in.
    await page.evaluate("() => window.__toForeground()")
    await expect_state(page, "done")
    await expect(page.locator("#profile")).to_contain_text(phone.openid or "?")
    assert errors == []


async def test_in_another_phone_browser_the_page_offers_the_picture_and_a_code_to_type(
    browser: Browser, demo: Demo
) -> None:
    errors: list[str] = []
    page = await open_on_phone(browser, demo, SAFARI_UA, errors)
    await expect_state(page, "pending")
    await expect(page.locator(".wxl")).to_have_attribute("data-device", "phone")
    await expect(page.locator(".wxl-status")).to_have_text("在这部手机上登录，请用下面的方法")  # noqa: RUF001
    extras = page.locator(".wxl-phone")
    await expect(extras).to_be_visible()

    # 保存二维码: a download of the code image itself, with the steps to scan it from the album.
    save = page.locator(".wxl-save")
    await expect(save).to_have_text("保存二维码")
    image = await page.locator(".wxl-code").get_attribute("src")
    assert image and await save.get_attribute("href") == image
    assert await save.get_attribute("download") == "wechat-login-code.png"
    assert base64.b64decode(image.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    await expect(page.locator(".wxl-steps")).to_contain_text("从相册选择这张图片")
    await expect(page.locator(".wxl-open")).to_be_hidden()  # URL Links are off in the demo

    # The login code, shown in two groups of four, and the hint where to type it.
    await expect(page.locator(".wxl-type")).to_contain_text("输入网页上的登录码")
    shown = await page.locator(".wxl-login-code").inner_text()
    assert LOGIN_CODE_SHOWN.match(shown), shown
    await screenshot(page, "phone-browser-save-or-type")

    # The user types it into the mini-program's home page; it works as a scan of this page's scene.
    phone = Phone(demo.http, demo.url, demo.sim.url)
    entered = await phone.enter_code(shown)
    assert entered["scene"] == await page.locator(".wxl").get_attribute("data-scene")
    await expect_state(page, "scanned")
    await expect(page.locator(".wxl-status")).to_have_text("已识别，请在小程序里确认登录")  # noqa: RUF001
    await expect(extras).to_be_hidden()
    await phone.confirm(entered["scene"])
    await expect_state(page, "done")
    await expect(page.locator("#profile")).to_contain_text(phone.openid or "?")
    assert errors == []


@pytest.fixture
async def linked_demo(mongo_server: EmbeddedMongo, unique: str) -> AsyncIterator[Demo]:
    """The demo with URL Links on (a non-personal mini-program)."""
    port = free_port()
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"e2e_{unique}",
        demo=True,
        allowed_origins=f"http://127.0.0.1:{port}",
        code_pool_size=2,
        url_link=True,
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    broker, clock = MemoryBroker(), FakeClock(follow_real_time=True)
    system = await System(settings).start(broker=broker, ports={"gateway": port}, clock=clock)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP / 1000))
    try:
        yield Demo(system, sim, settings, http, broker, clock, port, free_port())
    finally:
        await http.close()
        await system.stop()
        await sim.stop()
        await drop_database(settings)


async def test_a_non_personal_mini_program_also_offers_open_wechat(
    browser: Browser, linked_demo: Demo
) -> None:
    errors: list[str] = []
    page = await open_on_phone(browser, linked_demo, SAFARI_UA, errors)
    await expect_state(page, "pending")
    button = page.locator(".wxl-open")
    await expect(button).to_be_visible()
    await expect(button).to_have_text("打开微信")
    link = await button.get_attribute("href")
    assert link and re.match(r"^https://wxaurl\.cn/\w{11}$", link)
    # What WeChat does with it: the scan page of this page's scene.
    async with linked_demo.http.get(f"{linked_demo.sim.url}/sim/url-link", params={"url": link}) as resp:
        opened = await resp.json()
    scene = await page.locator(".wxl").get_attribute("data-scene")
    assert opened["query"] == f"scene={scene}" and opened["launch_scene"] == 1194
    assert errors == []
