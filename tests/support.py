"""Helpers for tests that run real services: start the simulator and the services, act as a browser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from pymongo import AsyncMongoClient

from shared.bus import MemoryBroker
from shared.config import Settings
from shared.httpserver import AppRunner
from shared.mongo import free_port, make_client
from shared.runtime import AccessLogger
from shared.sealing import generate_key
from sim.wechat.app import STATE
from sim.wechat.app import create_app as create_sim
from sim.wechat.state import SimState


class ManualClock:
    """Seconds (epoch or monotonic, as the code under test reads them) that move only when a test moves
    them: by setting ``now`` or with :meth:`advance`. Pass it where the code takes ``clock=``."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


SERVICES = ("token", "qrcode", "session", "gateway")
ORIGIN = "http://127.0.0.1:8080"


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test: never reads ``.env``; fresh keys unless given."""
    values: dict[str, Any] = {
        "bus_key": generate_key(),
        "data_key": generate_key(),
        "allowed_origins": ORIGIN,
        "log_format": "json",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Sim:
    """A running WeChat simulator."""

    runner: web.AppRunner
    url: str
    state: SimState

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_sim(settings: Settings) -> Sim:
    """The simulator on a free port, accepting ``settings``' appid and secret (and its any-code mode)."""
    app = create_sim(
        appid=settings.appid, secret=settings.secret.get_secret_value(), any_code=settings.sim_any_code
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Sim(runner, f"http://127.0.0.1:{port}", app[STATE])


@dataclass
class System:
    """Services running as separate aiohttp apps, each on its own port."""

    settings: Settings
    apps: dict[str, web.Application] = field(default_factory=dict)
    runners: dict[str, web.AppRunner] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.urls["gateway"]

    async def start(
        self,
        names: Sequence[str] = SERVICES,
        *,
        broker: MemoryBroker | None = None,
        clock: Callable[[], float] | None = None,
        ports: dict[str, int] | None = None,
    ) -> System:
        from services.__main__ import app_factory

        for name in names:
            kwargs: dict[str, Any] = {"broker": broker}
            if clock is not None:
                kwargs["clock"] = clock
            app = app_factory(name)(self.settings, **kwargs)
            runner = AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=2)
            await runner.setup()
            port = (ports or {}).get(name) or free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            key = name if name not in self.apps else f"{name}-{len(self.apps)}"
            self.apps[key], self.runners[key] = app, runner
            self.urls[key] = f"http://127.0.0.1:{port}"
        return self

    async def stop_one(self, key: str) -> None:
        runner = self.runners.pop(key)
        self.apps.pop(key)
        self.urls.pop(key)
        await runner.cleanup()

    async def stop(self) -> None:
        for key in reversed(list(self.runners)):
            await self.stop_one(key)


async def drop_database(settings: Settings) -> None:
    client: AsyncMongoClient[dict[str, Any]] = make_client(settings.mongo_url)
    try:
        await client.drop_database(settings.mongo_db)
    finally:
        await client.close()


class Browser:
    """What the JS SDK does, over plain HTTP and an aiohttp WebSocket."""

    def __init__(self, session: aiohttp.ClientSession, gateway: str, *, origin: str = ORIGIN) -> None:
        self.session = session
        self.gateway = gateway
        self.origin = origin
        self.scene = ""
        self.ticket = ""
        self.image = ""
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def issue(self) -> dict[str, Any]:
        async with self.session.post(f"{self.gateway}/api/login/qrcode") as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 201, body
        self.scene, self.ticket, self.image = body["scene"], body["ticket"], body["image"]
        return body

    async def subscribe(self, *, ticket: str | None = None, scene: str | None = None) -> dict[str, Any]:
        """Open the socket, subscribe, return the first message."""
        self.ws = await self.session.ws_connect(
            f"{self.gateway}/api/login/ws", headers={"Origin": self.origin}
        )
        await self.ws.send_json(
            {"type": "subscribe", "scene": scene or self.scene, "ticket": ticket or self.ticket}
        )
        return await self.next_message()

    async def next_message(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.ws is not None
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {"type": "closed", "ws_type": msg.type.name, "close_code": self.ws.close_code}
        data: dict[str, Any] = msg.json()
        return data

    async def state(self) -> str:
        """The scene's current state, read once through the status fallback (no waiting)."""
        async with self.session.get(
            f"{self.gateway}/api/login/status",
            params={"scene": self.scene, "wait": "0"},
            headers={"X-Login-Ticket": self.ticket},
        ) as resp:
            return str((await resp.json())["state"])

    async def complete(self, *, ticket: str | None = None) -> tuple[int, dict[str, Any]]:
        async with self.session.post(
            f"{self.gateway}/api/login/complete", json={"scene": self.scene, "ticket": ticket or self.ticket}
        ) as resp:
            return resp.status, await resp.json()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def eventually(check: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
