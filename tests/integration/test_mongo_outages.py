"""MongoDB killed and restarted 20 times under the whole stack (every service its own process, its own
nx-27017 on a fixed port with a persistent data directory), while each Mongo-backed service's
``/readyz`` is polled every 0.25 s: readiness turns 503 in each outage and 200 after each restart (the
health probe never wedges a client), requests in flight get 503 ``store_unavailable`` with Retry-After
(never a 500, never past their timeout), logins work after the last restart, and SIGTERM stops every
service within its shutdown timeout, with MongoDB up and with it down.

It once jammed for good: ``/readyz`` cancelled a PyMongo ping with ``asyncio.wait_for`` (see
shared.mongo), and in 2 of 15 outages the qrcode service's client stayed wedged until restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.cluster import LIMITS_OFF
from services.launch import Launcher, Replica
from shared.mongo import EmbeddedMongo, free_port
from sim.phone import Phone
from tests.integration.cluster import metric
from tests.support import ORIGIN, Browser

OUTAGES = 20
POLL_EVERY = 0.25
DETECT_WITHIN = 4.0  # an outage shows on /readyz within this (pings every 1 s, each at most 1 s)
READY_WITHIN = 5.0  # and ready again this long after MongoDB listens again
RPC_TIMEOUT = 3.0
SHUTDOWN_TIMEOUT = 5.0
WATCHED = ("qrcode", "session", "token")  # the services that hold a MongoDB client

pytestmark = pytest.mark.timeout(240)


@dataclass
class Readiness:
    """Every /readyz answer of one replica, polled on a fixed beat (a slow answer does not delay the next
    poll, as a load balancer's checks do not wait for each other)."""

    replica: Replica
    answers: list[tuple[float, int | str]] = field(default_factory=list)

    def latest(self, since: float) -> int | str | None:
        fresh = [status for at, status in self.answers if at >= since]
        return fresh[-1] if fresh else None

    async def poll(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            task = asyncio.create_task(self._once(http))
            pending.add(task)
            task.add_done_callback(pending.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_EVERY)
        await asyncio.gather(*pending)

    async def _once(self, http: aiohttp.ClientSession) -> None:
        try:
            async with http.get(f"{self.replica.url}/readyz") as resp:
                await resp.read()
                self.answers.append((time.monotonic(), resp.status))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.answers.append((time.monotonic(), type(exc).__name__))


@dataclass
class Stack:
    launcher: Launcher
    mongo: EmbeddedMongo
    port: int
    data_dir: Path

    def kill_mongo(self) -> None:
        """SIGKILL, as a crashed or OOM-killed mongod goes (no goodbye on any connection)."""
        process = self.mongo.process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.mongo.stop()  # nothing left to stop: removes its temporary files

    def start_mongo(self) -> None:
        self.mongo = EmbeddedMongo(port=self.port, data_dir=str(self.data_dir)).start()


@pytest.fixture
async def stack(amqp_base_url: str, tmp_path: Path, unique: str) -> AsyncIterator[Stack]:
    port = free_port()
    data_dir = tmp_path / "mongo"
    mongo = EmbeddedMongo(port=port, data_dir=str(data_dir)).start()
    launcher = Launcher(
        env={
            "WXLOGIN_AMQP_URL": amqp_base_url,
            "WXLOGIN_BUS_PREFIX": f"mo{unique}.",
            "WXLOGIN_MONGO_URL": mongo.url,
            "WXLOGIN_MONGO_DB": f"mo_{unique}",
            "WXLOGIN_ALLOWED_ORIGINS": ORIGIN,
            "WXLOGIN_LOG_LEVEL": "INFO",
            "WXLOGIN_RPC_TIMEOUT_SECONDS": str(RPC_TIMEOUT),
            "WXLOGIN_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT),
            **LIMITS_OFF,
        },
        workdir=tmp_path / "launch",
    )
    running = Stack(launcher, mongo, port, data_dir)
    try:
        await launcher.start()
        yield running
    finally:
        await launcher.stop()
        running.mongo.stop()


# What a request during an outage got: status, error code, Retry-After, seconds taken.
Answer = tuple[int, str, str | None, float]


async def issue_during_outage(http: aiohttp.ClientSession, gateway: str) -> Answer:
    """``POST /api/login/qrcode``: status, error code, Retry-After, seconds taken."""
    started = time.monotonic()
    async with http.post(f"{gateway}/api/login/qrcode") as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
        code = str(body.get("error", {}).get("code", "")) if resp.status >= 400 else ""
        return resp.status, code, resp.headers.get("Retry-After"), time.monotonic() - started


async def login(http: aiohttp.ClientSession, gateway: str, sim_url: str) -> dict[str, Any]:
    browser = Browser(http, gateway)
    await browser.issue()
    phone = Phone(http, gateway, sim_url)
    await phone.register()
    await phone.scan(browser.scene)
    assert await phone.confirm(browser.scene) == {"state": "confirmed"}
    status, tokens = await browser.complete()
    assert status == 200, tokens
    return tokens


async def stop_within(launcher: Launcher, replica: Replica) -> tuple[int, float]:
    started = time.monotonic()
    code = await launcher.stop_replica(replica, timeout=SHUTDOWN_TIMEOUT + 10)
    return code, time.monotonic() - started


async def store_up(watch: dict[str, Readiness]) -> dict[str, float]:
    """``wxlogin_store_up{service}`` of each watched replica (0 when absent)."""
    return {name: await metric(r.replica, "wxlogin_store_up", service=name) for name, r in watch.items()}


async def wait_until(watch: dict[str, Readiness], wanted: int, since: float, within: float) -> float:
    """Seconds from ``since`` until every watched service last answered ``wanted``."""
    deadline = since + within
    while time.monotonic() < deadline:
        if all(r.latest(since) == wanted for r in watch.values()):
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    seen = {name: r.latest(since) for name, r in watch.items()}
    raise AssertionError(f"/readyz not {wanted} within {within} s: {seen}")


async def test_twenty_mongo_outages_never_wedge_a_service_and_sigterm_always_stops(stack: Stack) -> None:
    launcher = stack.launcher
    gateway = launcher.urls("gateway")[0]
    assert launcher.sim_url is not None
    watch = {name: Readiness(launcher.replicas(name)[0]) for name in WATCHED}
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=RPC_TIMEOUT + 3)
    async with (
        aiohttp.ClientSession(timeout=timeout) as probes,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        pollers = [asyncio.create_task(r.poll(probes, stop)) for r in watch.values()]
        detect: list[float] = []
        recover: list[float] = []
        answers: list[Answer] = []
        try:
            await login(http, gateway, launcher.sim_url)
            gauges: list[dict[str, float]] = [await store_up(watch)]
            for outage in range(OUTAGES):
                stack.kill_mongo()
                down_at = time.monotonic()
                # Two requests in flight as MongoDB dies, and readiness turning 503 meanwhile.
                requests = asyncio.gather(*(issue_during_outage(http, gateway) for _ in range(2)))
                detect.append(await wait_until(watch, 503, down_at, DETECT_WITHIN))
                answers.extend(await requests)
                if outage == 0:
                    gauges.append(await store_up(watch))
                stack.start_mongo()
                up_at = time.monotonic()
                recover.append(await wait_until(watch, 200, up_at, READY_WITHIN))
                if outage == 0:
                    gauges.append(await store_up(watch))

            tokens = await login(http, gateway, launcher.sim_url)
            assert tokens["user"]["openid"]
            assert (await issue_during_outage(http, gateway))[0] == 201

            # SIGTERM with MongoDB up (the gateway), then with it down (every service that uses it).
            gateway_stop = await stop_within(launcher, launcher.replicas("gateway")[0])
            stack.kill_mongo()
            await wait_until(watch, 503, time.monotonic(), DETECT_WITHIN)
        finally:
            stop.set()
            await asyncio.gather(*pollers)
        stops_down = await asyncio.gather(*(stop_within(launcher, r.replica) for r in watch.values()))

    statuses = Counter((status, code) for status, code, _, _ in answers)
    print(
        f"\n{OUTAGES} outages: /readyz 503 after {min(detect):.2f}-{max(detect):.2f} s, 200 again "
        f"{min(recover):.2f}-{max(recover):.2f} s after the restart; requests during outages: "
        f"{dict(statuses)}, slowest {max(a[3] for a in answers):.2f} s; SIGTERM: gateway "
        f"{gateway_stop[1]:.2f} s (MongoDB up), "
        + ", ".join(f"{n} {s[1]:.2f} s" for n, s in zip(watch, stops_down, strict=True))
        + " (MongoDB down)"
    )
    assert gauges == [dict.fromkeys(WATCHED, 1.0), dict.fromkeys(WATCHED, 0.0), dict.fromkeys(WATCHED, 1.0)]
    polls = Counter(status for r in watch.values() for _, status in r.answers)
    assert set(polls) <= {200, 503}, polls  # every probe answered, none failed or hung
    for status, code, retry_after, took in answers:
        assert status in (201, 503), answers  # never a 500
        if status == 503:
            assert code == "store_unavailable" and retry_after is not None, answers
        assert took < RPC_TIMEOUT + 0.5, answers
    assert statuses[(503, "store_unavailable")] >= OUTAGES, statuses
    assert gateway_stop[0] == 0 and gateway_stop[1] < SHUTDOWN_TIMEOUT, gateway_stop
    for name, (exit_code, took) in zip(watch, stops_down, strict=True):
        assert exit_code == 0 and took < SHUTDOWN_TIMEOUT, f"{name}: exit {exit_code} after {took:.1f} s"
