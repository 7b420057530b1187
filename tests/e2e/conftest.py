"""Browser fixtures: Debian's Chromium driven by Playwright, and a real gateway serving the demo page.

Screenshots are test artifacts (``tests/artifacts/`` or ``WXLOGIN_TEST_ARTIFACTS``); with
``WXLOGIN_SCREENSHOTS_DIR=docs/screenshots`` the run also refreshes the README's screenshots.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from shared.bus import MemoryBroker
from shared.config import Settings
from shared.mongo import EmbeddedMongo, free_port
from sim.phone import Phone, decode_scene
from tests.scenes import FakeClock
from tests.support import Sim, System, drop_database, make_settings, start_sim

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("WXLOGIN_TEST_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
SCREENSHOTS = os.environ.get("WXLOGIN_SCREENSHOTS_DIR", "")
# Every wait in these tests is bounded; a state the page must reach comes well within this.
STEP = 15_000  # ms
expect.set_options(timeout=STEP)

# Installed before the page's own scripts: counts what could still make network traffic (pending
# timeouts, intervals, open sockets), so a test can check that a finished login box went quiet.
ACTIVITY_PROBE = """
(() => {
  const timeouts = new Set(), intervals = new Set(), sockets = [];
  const st = window.setTimeout, ct = window.clearTimeout, si = window.setInterval, ci = window.clearInterval;
  window.setTimeout = function (fn, ms, ...args) {
    const run = function () { timeouts.delete(id); if (typeof fn === 'function') fn(...args); };
    const id = st.call(window, run, ms);
    timeouts.add(id);
    return id;
  };
  window.clearTimeout = function (id) { timeouts.delete(id); return ct.call(window, id); };
  window.setInterval = function (...args) {
    const id = si.apply(window, args);
    intervals.add(id);
    return id;
  };
  window.clearInterval = function (id) { intervals.delete(id); return ci.call(window, id); };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); sockets.push(this); }
  };
  window.__wxlActivity = () => ({
    timeouts: timeouts.size,
    intervals: intervals.size,
    sockets: sockets.filter((s) => s.readyState < 2).length,
    socketsEver: sockets.length,
  });
})();
"""

pytestmark = pytest.mark.e2e


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium from Debian (Playwright never downloads a browser here)."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Demo:
    """The system serving the demo page, as a person would open it."""

    system: System
    sim: Sim
    settings: Settings
    http: aiohttp.ClientSession
    broker: MemoryBroker
    clock: FakeClock
    port: int
    site_port: int  # a port for another web site that embeds the login box (an allowed origin)

    @property
    def url(self) -> str:
        return self.system.gateway

    def phone(self, gateway: str | None = None) -> Phone:
        """The simulated phone, talking to the page's gateway unless told another one."""
        return Phone(self.http, gateway or self.url, self.sim.url)

    async def stop_gateway(self) -> None:
        """Stop the gateway the page talks to (sockets get 1001, the port is closed)."""
        await self.system.stop_one("gateway")

    async def start_gateway(self, *, same_port: bool = True) -> str:
        """Start a gateway on the page's port (a restart), or on a new one; returns its key."""
        before = set(self.system.urls)
        ports = {"gateway": self.port} if same_port else None
        await self.system.start(["gateway"], broker=self.broker, ports=ports)
        (key,) = set(self.system.urls) - before
        return key


@pytest.fixture
async def demo(mongo_server: EmbeddedMongo, unique: str) -> AsyncIterator[Demo]:
    """All four services with the demo page, the simulator beside them.

    The services behind the gateway run on a clock that follows real time until a test moves it
    forward (``demo.clock.advance``), so a code can expire without waiting two minutes.
    """
    port, site_port = free_port(), free_port()
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"e2e_{unique}",
        demo=True,
        allowed_origins=f"http://127.0.0.1:{port},http://127.0.0.1:{site_port}",
        code_pool_size=4,
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    broker = MemoryBroker()
    clock = FakeClock(follow_real_time=True)
    system = await System(settings).start(broker=broker, ports={"gateway": port}, clock=clock)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP / 1000))
    running = Demo(system, sim, settings, http, broker, clock, port, site_port)
    try:
        yield running
    finally:
        await running.http.close()
        await system.stop()
        await sim.stop()
        await drop_database(settings)


async def screenshot(page: Page, name: str) -> Path:
    """Save a screenshot as a test artifact (and into ``WXLOGIN_SCREENSHOTS_DIR`` when set)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    png = await page.screenshot(path=str(path), timeout=STEP)
    if SCREENSHOTS:
        target = Path(SCREENSHOTS)
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{name}.png").write_bytes(png)
    return path


async def open_demo(
    browser: Browser,
    demo: Demo,
    *,
    locale: str = "zh-CN",
    query: str = "",
    errors: list[str] | None = None,
    navigate: bool = True,
) -> Page:
    """A new page on the demo, with the activity probe installed; page errors go to ``errors``.

    With ``navigate=False`` the page is still blank: the test sets up routes or listeners, then goes
    to ``demo_url(demo, query)`` itself.
    """
    context = await browser.new_context(locale=locale, viewport={"width": 860, "height": 620})
    context.set_default_timeout(STEP)
    page = await context.new_page()
    await page.add_init_script(ACTIVITY_PROBE)
    if errors is not None:  # uncaught exceptions, and console errors such as CSP violations
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    if navigate:
        await page.goto(demo_url(demo, query))
    return page


def demo_url(demo: Demo, query: str = "") -> str:
    """The demo page's address."""
    return f"{demo.url}/{query}"


async def expect_state(page: Page, state: str, timeout: float = STEP) -> None:
    """The login box shows ``state`` (loading, pending, scanned, confirmed, done, cancelled, …)."""
    await expect(page.locator(".wxl")).to_have_attribute("data-state", state, timeout=timeout)


async def activity(page: Page) -> dict[str, int]:
    """What could still make traffic in the page (see ``ACTIVITY_PROBE``)."""
    result: dict[str, int] = await page.evaluate("() => window.__wxlActivity()")
    return result


async def scene_on_screen(page: Page) -> str:
    """What a phone's camera reads off the screen: the code element's pixels, decoded.

    Waits (bounded) until the image is loaded, and checks that the bytes in the DOM say the same.
    """
    code = page.locator(".wxl-code")
    await code.wait_for(state="visible")
    deadline = time.monotonic() + STEP / 1000
    loaded = "() => { const i = document.querySelector('.wxl-code'); return i.complete && i.naturalWidth }"
    while not await page.evaluate(loaded):
        if time.monotonic() > deadline:
            raise AssertionError("the code image never loaded")
        await page.wait_for_timeout(50)
    scene = decode_scene(await code.screenshot())
    src = await code.get_attribute("src")
    assert src is not None
    assert decode_scene(base64.b64decode(src.split(",", 1)[1])) == scene
    return scene
