"""Integration fixtures: the four services as separate aiohttp apps, the simulator over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from shared.bus import MemoryBroker
from shared.config import Settings
from shared.mongo import EmbeddedMongo, make_client
from tests.logcheck import ErrorLog, error_log
from tests.support import Sim, System, drop_database, make_settings, start_sim

Client = AsyncMongoClient[dict[str, Any]]


@pytest.fixture
async def clients(mongo_server: EmbeddedMongo, unique: str) -> AsyncIterator[list[Client]]:
    """Three clients of one database (``t_<unique>``, dropped after), as three replicas would have."""
    made: list[Client] = [make_client(mongo_server.url) for _ in range(3)]
    try:
        yield made
    finally:
        await made[0].drop_database(f"t_{unique}")
        for client in made:
            await client.close()


@dataclass
class Stack:
    """A running system and what tests need to drive it."""

    system: System
    sim: Sim
    settings: Settings
    http: aiohttp.ClientSession

    @property
    def gateway(self) -> str:
        return self.system.gateway


async def start_stack(
    bus: str, mongo: EmbeddedMongo, amqp_base_url: str, unique: str, **overrides: object
) -> tuple[Stack, MemoryBroker | None]:
    base = make_settings(mongo_url=mongo.url, mongo_db=f"t_{unique}", **overrides)
    sim = await start_sim(base)
    settings = base.model_copy(
        update={
            "wechat_api_base": sim.url,
            "amqp_url": amqp_base_url if bus == "amqp" else "memory://",
            "bus_prefix": f"t{unique}.",
        }
    )
    broker = MemoryBroker() if bus == "memory" else None
    system = await System(settings).start(broker=broker)
    return Stack(system, sim, settings, aiohttp.ClientSession()), broker


@pytest.fixture(params=["amqp", "memory"])
async def stack(
    request: pytest.FixtureRequest, mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> AsyncIterator[Stack]:
    """All four services, over real RabbitMQ and over the in-memory bus."""
    running, _ = await start_stack(request.param, mongo_server, amqp_base_url, unique)
    try:
        yield running
    finally:
        await running.http.close()
        await running.system.stop()
        await running.sim.stop()
        await drop_database(running.settings)


@pytest.fixture
async def amqp_stack(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[Stack]:
    """All four services over real RabbitMQ only."""
    running, _ = await start_stack("amqp", mongo_server, amqp_base_url, unique)
    try:
        yield running
    finally:
        await running.http.close()
        await running.system.stop()
        await running.sim.stop()
        await drop_database(running.settings)


@pytest.fixture
def errors() -> Iterator[ErrorLog]:
    """Error-level log lines (and tracebacks) written during the test."""
    with error_log() as log:
        yield log
