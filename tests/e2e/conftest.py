"""Browser fixtures: Debian's Chromium driven by Playwright, and a real gateway serving the demo page."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from shared.bus import MemoryBroker
from shared.config import Settings
from shared.mongo import EmbeddedMongo, free_port
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

    @property
    def url(self) -> str:
        return self.system.gateway


@pytest.fixture
async def demo(mongo_server: EmbeddedMongo, unique: str) -> AsyncIterator[Demo]:
    """All four services with the demo page, the simulator beside them."""
    port = free_port()
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"e2e_{unique}",
        demo=True,
        allowed_origins=f"http://127.0.0.1:{port}",
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    broker = MemoryBroker()
    system = await System(settings).start(broker=broker, ports={"gateway": port})
    running = Demo(system, sim, settings, aiohttp.ClientSession(), broker)
    try:
        yield running
    finally:
        await running.http.close()
        await system.stop()
        await sim.stop()
        await drop_database(settings)


async def screenshot(page: Page, name: str) -> Path:
    """Save a screenshot as a test artifact (``tests/artifacts/`` unless configured)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path
