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


@pytest.fixture
async def demo(
    mongo_server: EmbeddedMongo, unique: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Demo]:
    monkeypatch.delenv("WXLOGIN_DEMO", raising=False)
    monkeypatch.delenv("WXLOGIN_SIM_ANY_CODE", raising=False)
    settings = embedded_settings(make_settings(mongo_url=mongo_server.url, mongo_db=f"t_{unique}"))
    assert settings.demo and settings.sim_any_code == "sticky"
    sim = await start_sim(settings)
    settings = settings.model_copy(update={"wechat_api_base": sim.url, "amqp_url": "memory://"})
    system = await System(settings).start(broker=MemoryBroker())
    http = aiohttp.ClientSession()
    try:
        yield Demo(settings, sim, system, http)
    finally:
        await http.close()
        await system.stop()
        await sim.stop()
        await drop_database(settings)


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
