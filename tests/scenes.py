"""Helpers for the scene lifecycle tests: hand-written fakes, a database per test, a stack with a clock."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from services.qrcode.handlers import SceneHandlers, SceneSettings
from services.qrcode.pool import IssuedCode, new_scene_id
from services.qrcode.store import INDEXES, SceneStore
from shared.bus import MemoryBroker
from shared.messages import Event
from shared.mongo import EmbeddedMongo, ensure_indexes, make_client
from shared.runtime import Database
from shared.wechat import CodeImage
from tests.integration.conftest import Stack
from tests.support import SERVICES, System, drop_database, make_settings, start_sim

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # enough for the sniffers; nobody decodes it


def ticket_hash(ticket: str) -> str:
    """What the gateway sends instead of a ticket."""
    return hashlib.sha256(ticket.encode()).hexdigest()


def new_ticket() -> str:
    """A ticket as the gateway mints them."""
    return secrets.token_urlsafe(32)


class FakeClock:
    """Epoch seconds that only move when a test says so (or follow real time with an offset)."""

    def __init__(self, start: float | None = None, *, follow_real_time: bool = False) -> None:
        self._follow = follow_real_time
        # A whole second: every time derived from it by test steps has few enough digits to come back
        # exactly from nx-27017, which rounds floats written by $set to 15 significant digits.
        self._base = start if start is not None else float(int(time.time()))
        self._offset = 0.0
        self._real_start = time.time()

    def __call__(self) -> float:
        real = (time.time() - self._real_start) if self._follow else 0.0
        return self._base + self._offset + real

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self._offset += seconds


class RecordingPublisher:
    """A Publisher that keeps what it was given, or fails like a lost broker while ``down``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.down = False

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        """Record ``event``, or raise ConnectionError while ``down``."""
        if self.down:
            raise ConnectionError("bus down (test)")
        self.events.append(event)

    def scenes_of(self, event_type: type[Event]) -> list[str]:
        """The ``scene`` of every recorded event of ``event_type``, in order."""
        return [str(getattr(e, "scene", "")) for e in self.events if isinstance(e, event_type)]


class StaticCodes:
    """Codes for new scenes without WeChat (a fresh scene id and a fixed image each time)."""

    def __init__(self) -> None:
        self.taken = 0

    async def claim(self) -> IssuedCode | None:
        """No pool here."""
        return None

    async def give_back(self, code: IssuedCode) -> None:
        raise AssertionError("nothing was claimed")

    async def render_now(self) -> IssuedCode:
        """A fresh scene with a fixed image."""
        self.taken += 1
        return IssuedCode(new_scene_id(), CodeImage(PNG, "image/png"), "render")


class FakeRenderer:
    """A Renderer that counts calls, may be slow, and may fail with ``error``."""

    def __init__(self, *, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay = delay
        self.error = error
        self.rendered: list[str] = []

    async def render(self, scene_id: str) -> CodeImage:
        """An image naming ``scene_id`` (after ``delay``), or ``error``."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        self.rendered.append(scene_id)
        return CodeImage(PNG + scene_id.encode(), "image/png")


@asynccontextmanager
async def scene_database(mongo: EmbeddedMongo) -> AsyncIterator[Database]:
    """A fresh database with the qrcode service's indexes, dropped afterwards."""
    client: AsyncMongoClient[dict[str, Any]] = make_client(mongo.url)
    name = f"s_{uuid.uuid4().hex[:10]}"
    db = client[name]
    try:
        await ensure_indexes(db, INDEXES)
        yield db
    finally:
        await client.drop_database(name)
        await client.close()


def scene_handlers(
    db: Database,
    clock: Callable[[], float],
    publisher: RecordingPublisher,
    *,
    codes: Any = None,
    ttl: float = 120.0,
    issue_limit: Any = None,
    announce_issued: bool = False,
) -> SceneHandlers:
    """The real handlers on the real store, with fakes for codes and the bus."""
    return SceneHandlers(
        SceneStore(db),
        codes or StaticCodes(),
        publisher,
        SceneSettings(scene_ttl=ttl, site_name="Test Site", announce_issued=announce_issued),
        issue_limit=issue_limit,
        clock=clock,
    )


# Limits high enough that tests which hammer one endpoint from 127.0.0.1 test what they mean to.
RELAXED_LIMITS: dict[str, Any] = {
    "limit_issue_per_ip_per_minute": 100_000,
    "limit_issue_per_ip_burst": 10_000,
    "limit_mp_per_ip_per_minute": 100_000,
    "limit_mp_per_ip_burst": 10_000,
    "limit_ws_per_ip_per_minute": 100_000,
    "limit_ws_per_ip_burst": 10_000,
    "limit_poll_per_ip_per_minute": 100_000,
    "limit_poll_per_ip_burst": 10_000,
    "limit_login_per_ip_per_minute": 100_000,
    "limit_login_per_ip_burst": 10_000,
    "limit_session_per_ip_per_minute": 100_000,
    "limit_session_per_ip_burst": 10_000,
    "limit_user_per_minute": 100_000,
    "limit_user_burst": 10_000,
    "limit_code_entry_per_ip_per_minute": 100_000,
    "limit_code_entry_per_ip_burst": 10_000,
    "limit_issue_prefix_share_percent": 100,
}


async def start_stack_with(
    bus: str,
    mongo: EmbeddedMongo,
    amqp_base_url: str,
    unique: str,
    *,
    clock: Callable[[], float] | None = None,
    names: Sequence[str] = SERVICES,
    **overrides: Any,
) -> Stack:
    """Like ``start_stack`` of the integration conftest, with a clock and the services to run."""
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
    system = await System(settings).start(names, broker=broker, clock=clock)
    return Stack(system, sim, settings, aiohttp.ClientSession())


async def stop_stack(stack: Stack) -> None:
    """Stop everything ``start_stack_with`` started and drop its database."""
    await stack.http.close()
    await stack.system.stop()
    await stack.sim.stop()
    await drop_database(stack.settings)


def metric_value(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` (e.g. ``wxlogin_scenes_expired_total``) with ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def fetch_metrics(http: aiohttp.ClientSession, base_url: str) -> str:
    """The Prometheus text of a service."""
    async with http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()
