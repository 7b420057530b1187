"""WeChat DevTools against ``make demo``: its real wx.login codes, unknown to the simulator, log in.

The stack is built with the demo's settings (``embedded_settings``: the simulator in sticky any-code
mode); the "phone" is what the mini-program page does in DevTools, with made-up 32-character codes.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from services.__main__ import embedded_settings
from shared.bus import MemoryBroker
from shared.config import Settings
from shared.mongo import EmbeddedMongo
from tests.support import Browser, Sim, System, drop_database, make_settings, start_sim


@dataclass
class Demo:
    settings: Settings
    sim: Sim
    system: System
    http: aiohttp.ClientSession


async def start_demo(mongo: EmbeddedMongo, unique: str) -> Demo:
    """The services and the simulator with the settings ``make demo`` would use in this environment."""
    settings = embedded_settings(make_settings(mongo_url=mongo.url, mongo_db=f"t_{unique}"))
    sim = await start_sim(settings)
    settings = settings.model_copy(update={"wechat_api_base": sim.url, "amqp_url": "memory://"})
    system = await System(settings).start(broker=MemoryBroker())
    return Demo(settings, sim, system, aiohttp.ClientSession())


async def stop_demo(demo: Demo) -> None:
    await demo.http.close()
    await demo.system.stop()
    await demo.sim.stop()
    await drop_database(demo.settings)


@pytest.fixture
async def demo(
    mongo_server: EmbeddedMongo, unique: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Demo]:
    """``make demo`` as a newcomer runs it: nothing set, so the simulator is in sticky mode."""
    monkeypatch.delenv("WXLOGIN_DEMO", raising=False)
    monkeypatch.delenv("WXLOGIN_SIM_ANY_CODE", raising=False)
    running = await start_demo(mongo_server, unique)
    assert running.settings.demo and running.settings.sim_any_code == "sticky"
    try:
        yield running
    finally:
        await stop_demo(running)


@pytest.fixture
async def strict_demo(
    mongo_server: EmbeddedMongo, unique: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Demo]:
    """``make demo`` with ``WXLOGIN_SIM_ANY_CODE=off``: the simulator refuses DevTools' codes."""
    monkeypatch.delenv("WXLOGIN_DEMO", raising=False)
    monkeypatch.setenv("WXLOGIN_SIM_ANY_CODE", "off")
    running = await start_demo(mongo_server, unique)
    assert running.settings.sim_any_code == "off"
    try:
        yield running
    finally:
        await stop_demo(running)


def devtools_code() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def devtools_scan_login(demo: Demo) -> dict[str, Any]:
    """Browser shows a code; the page in DevTools scans it with a wx.login code and confirms."""
    gateway = demo.system.gateway
    browser = Browser(demo.http, gateway)
    await browser.issue()
    body = {"scene": browser.scene, "code": devtools_code()}
    status, scan = await post(demo.http, f"{gateway}/api/mp/scan", body)
    assert status == 200, scan
    assert scan["identified"] is True, scan
    status, confirmed = await post(
        demo.http, f"{gateway}/api/mp/confirm", {"scene": browser.scene, "scan_token": scan["scan_token"]}
    )
    assert (status, confirmed) == (200, {"state": "confirmed"})
    status, tokens = await browser.complete()
    assert status == 200, tokens
    return tokens


async def test_a_devtools_code_completes_a_scan_login_as_the_developer_user_every_time(demo: Demo) -> None:
    first = await devtools_scan_login(demo)
    developer = demo.sim.state.dev_user()
    assert first["user"]["openid"] == developer.openid
    second = await devtools_scan_login(demo)
    assert second["user"] == first["user"]  # remembered: the same wxlogin user

    async with demo.http.post(f"{demo.sim.url}/sim/dev-user") as resp:
        newcomer = (await resp.json())["openid"]
    third = await devtools_scan_login(demo)
    assert third["user"]["openid"] == newcomer and third["user"]["id"] != first["user"]["id"]


async def test_a_devtools_code_already_spent_does_not_identify_another_scan(demo: Demo) -> None:
    gateway = demo.system.gateway
    code = devtools_code()
    status, _ = await post(demo.http, f"{gateway}/api/mp/login", {"code": code})
    assert status == 200
    browser = Browser(demo.http, gateway)
    await browser.issue()
    status, scan = await post(demo.http, f"{gateway}/api/mp/scan", {"scene": browser.scene, "code": code})
    assert status == 200
    assert (scan["identified"], scan["identify_error"]) == (False, "code_invalid")


async def test_with_any_code_off_a_devtools_code_reaches_the_page_as_code_invalid(strict_demo: Demo) -> None:
    # What the mini-program page sees when the simulator refuses DevTools' codes (40029).
    gateway = strict_demo.system.gateway
    browser = Browser(strict_demo.http, gateway)
    await browser.issue()
    status, scan = await post(
        strict_demo.http, f"{gateway}/api/mp/scan", {"scene": browser.scene, "code": devtools_code()}
    )
    assert status == 200
    assert (scan["identified"], scan["identify_error"]) == (False, "code_invalid")
    body = {"scene": browser.scene, "scan_token": scan["scan_token"], "code": devtools_code()}
    status, refused = await post(strict_demo.http, f"{gateway}/api/mp/confirm", body)
    assert status == 400 and refused["error"]["code"] == "code_invalid"
