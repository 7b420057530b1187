"""What the identity tests share: a running system with the identity knobs set, and a mini-program client.

The appid is the one of WeChat's official decryption vector, so that vector can be fed through the
real ``/api/mp/decrypt``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from shared.bus import MemoryBroker
from shared.config import Settings
from shared.mongo import EmbeddedMongo, make_client
from sim.phone import Phone
from sim.wechat.testing import SimControl
from tests.support import Sim, System, drop_database, make_settings, start_sim

OFFICIAL_APPID = "wx4f4bc4dec97d474b"
# Short enough that rotation tests and "after the grace" tests stay fast.
FAST = {
    "refresh_grace_seconds": 1.0,
    "signing_keys_reload_seconds": 0.2,
    "signing_key_lead_seconds": 2.0,
    "jwks_refresh_seconds": 0.5,
}


@dataclass
class IdentityStack:
    """The four services, the simulator, an HTTP session and a handle on the database."""

    system: System
    sim: Sim
    settings: Settings
    http: aiohttp.ClientSession
    mongo: AsyncMongoClient[dict[str, Any]]
    broker: MemoryBroker | None = None

    @property
    def gateway(self) -> str:
        return self.system.gateway

    @property
    def control(self) -> SimControl:
        return SimControl(self.http, self.sim.url)

    @property
    def db(self) -> Any:
        return self.mongo[self.settings.mongo_db]

    async def counters(self) -> dict[str, int]:
        return await self.control.counters()

    def phone(self) -> MiniProgram:
        return MiniProgram(self, Phone(self.http, self.gateway, self.sim.url))

    async def request(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        """Call the gateway; returns (status, JSON body or None)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, f"{self.gateway}{path}", json=body, headers=headers) as resp:
            raw = await resp.read()
            return resp.status, json.loads(raw) if raw else None


@dataclass
class MiniProgram:
    """The mini-program on one user's phone, talking to our gateway."""

    stack: IdentityStack
    phone: Phone
    tokens: dict[str, Any] = field(default_factory=dict)

    @property
    def openid(self) -> str:
        assert self.phone.openid is not None
        return self.phone.openid

    @property
    def access_token(self) -> str:
        return str(self.tokens["access_token"])

    async def register(self, **traits: Any) -> MiniProgram:
        await self.phone.register(**traits)
        return self

    async def login(self, code: str | None = None) -> dict[str, Any]:
        """``wx.login()`` then ``POST /api/mp/login``; keeps the tokens."""
        status, body = await self.stack.request(
            "POST", "/api/mp/login", {"code": code or await self.phone.wx_login()}
        )
        assert status == 200, body
        self.tokens = body
        return dict(body)

    async def bind_phone(self, code: str | None = None) -> tuple[int, Any]:
        code = code or await self.phone.phone_number_code()
        return await self.stack.request("POST", "/api/mp/phone", {"code": code}, token=self.access_token)

    async def decrypt(self, payload: dict[str, str]) -> tuple[int, Any]:
        return await self.stack.request("POST", "/api/mp/decrypt", payload, token=self.access_token)

    async def me(self, token: str | None = None) -> tuple[int, Any]:
        return await self.stack.request("GET", "/api/me", token=token or self.access_token)

    async def refresh(self, refresh_token: str | None = None) -> tuple[int, Any]:
        return await self.stack.request(
            "POST", "/api/token/refresh", {"refresh_token": refresh_token or self.tokens["refresh_token"]}
        )


@asynccontextmanager
async def identity_stack(
    bus: str,
    mongo: EmbeddedMongo,
    amqp_base_url: str,
    unique: str,
    *,
    broker_factory: Callable[[], MemoryBroker] = MemoryBroker,
    clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> AsyncIterator[IdentityStack]:
    """Start everything; stop it all (and drop the database) on exit. ``clock`` is every service's
    but the gateway's (a test's fake clock)."""
    values: dict[str, Any] = {"appid": OFFICIAL_APPID, **FAST, **overrides}
    base = make_settings(mongo_url=mongo.url, mongo_db=f"t_{unique}", **values)
    sim = await start_sim(base)
    settings = base.model_copy(
        update={
            "wechat_api_base": sim.url,
            "amqp_url": amqp_base_url if bus == "amqp" else "memory://",
            "bus_prefix": f"t{unique}.",
        }
    )
    broker = broker_factory() if bus == "memory" else None
    http = aiohttp.ClientSession()
    mongo_client: AsyncMongoClient[dict[str, Any]] = make_client(settings.mongo_url)
    system = System(settings)
    try:
        await system.start(broker=broker, clock=clock)
        yield IdentityStack(system, sim, settings, http, mongo_client, broker)
    finally:
        await http.close()
        await system.stop()
        await sim.stop()
        await mongo_client.close()
        await drop_database(settings)
