"""Three token-service replicas over real RabbitMQ and nx-27017, against the simulator and its clock.

The replicas follow the simulator's clock (``create_app(clock=...)``). Their ticks are set long, and
tests drive them with ``TokenKeeper.poke()`` (one whole step of every replica) after moving the clock,
so a simulated day takes seconds. The lease takeover test runs a real OS process with short ticks
and kills it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.token.app import KEEPER
from services.token.handlers import TokenKeeper
from services.token.store import LeaseHolder, LeaseStore
from shared.bus import Bus
from shared.config import Settings
from shared.messages import GetCurrentToken, TokenInvalidated
from shared.mongo import EmbeddedMongo, free_port, make_client
from shared.runtime import REGISTRY, make_bus
from shared.tokens import TokenCache, TokenUnavailable, fingerprint
from shared.wechat import WeChatClient, WeChatError
from sim.wechat.testing import SimControl
from tests.support import Sim, System, drop_database, eventually, make_settings, start_sim

ROOT = Path(__file__).resolve().parents[2]
STABLE = "cgi-bin/stable_token"
DAY = 86400.0
REPLICAS = 3
OUTCOMES = ("claimed", "stale", "throttled", "daily_cap")
# Long ticks: the replicas step when a test pokes them (and once at start-up), so nothing happens
# behind a test's back while it moves the simulator's clock.
TIMING: dict[str, Any] = {
    "token_tick_seconds": 60.0,
    "token_lease_seconds": 120.0,
    "token_refresh_margin_seconds": 240.0,
    "wechat_timeout_seconds": 2.0,
}


@dataclass
class Cluster:
    """The simulator, token replicas, and a consumer (a TokenCache and a WeChat client) on the bus."""

    settings: Settings
    sim: Sim
    control: SimControl
    http: aiohttp.ClientSession
    consumer_bus: Bus
    cache: TokenCache
    wechat: WeChatClient
    system: System = field(init=False)

    def __post_init__(self) -> None:
        self.system = System(self.settings)

    async def start_replicas(self, count: int = REPLICAS) -> None:
        self.system.settings = self.settings
        await self.system.start(["token"] * count, clock=self.sim.state.now)

    @property
    def keepers(self) -> list[TokenKeeper]:
        return [app[KEEPER] for app in self.system.apps.values()]

    async def poke(self) -> None:
        """One whole step of every replica, started after this call."""
        await asyncio.wait_for(asyncio.gather(*(k.poke() for k in self.keepers)), 20)

    async def advance(self, seconds: float) -> None:
        await self.control.advance(seconds)

    def calls(self, endpoint: str = STABLE) -> int:
        return self.sim.state.counters[endpoint]

    def all_calls(self) -> int:
        return sum(self.sim.state.counters.values())

    def forced(self) -> int:
        """Force refreshes WeChat granted today."""
        return self.sim.state.used("force_refresh", "day")

    def metric(self, name: str, **labels: str) -> float:
        """A sample summed over the running replicas."""
        return sum(app[REGISTRY].get_sample_value(name, labels) or 0.0 for app in self.system.apps.values())

    def metric_total_invalidations(self) -> float:
        """token.invalidated events handled by all replicas, whatever the outcome."""
        return sum(self.metric("wxlogin_token_invalidations_total", outcome=o) for o in OUTCOMES)

    def metric_each(self, name: str, **labels: str) -> list[float]:
        return [app[REGISTRY].get_sample_value(name, labels) or 0.0 for app in self.system.apps.values()]

    async def render(self, token: str) -> int | None:
        """None when ``token`` renders a code at the simulator, else the errcode."""
        try:
            await self.wechat.get_unlimited_qrcode(token, scene="tokentest", page="pages/index/index")
        except WeChatError as exc:
            return exc.errcode
        return None

    async def ready(self) -> list[int]:
        statuses = []
        for url in self.system.urls.values():
            async with self.http.get(f"{url}/readyz") as resp:
                statuses.append(resp.status)
        return statuses

    async def current(self) -> str:
        reply = await self.consumer_bus.call(GetCurrentToken())
        return reply.access_token.get_secret_value()


@pytest.fixture
async def cluster(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[Cluster]:
    base = make_settings(
        mongo_url=mongo_server.url,
        mongo_db=f"t_{unique}",
        amqp_url=amqp_base_url,
        bus_prefix=f"t{unique}.",
        **TIMING,
    )
    sim = await start_sim(base)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    http = aiohttp.ClientSession()
    bus = make_bus(settings, "qrcode")  # the consumer side, as the qrcode service holds it
    await bus.start()
    cache = TokenCache(bus, wait_seconds=5, poll_seconds=0.2, clock=sim.state.now)
    assert not await cache.start()  # no token service yet: not an error
    wechat = WeChatClient(
        http, base_url=sim.url, appid=settings.appid, secret=settings.secret, clock=sim.state.now
    )
    running = Cluster(settings, sim, SimControl(http, sim.url), http, bus, cache, wechat)
    try:
        yield running
    finally:
        await running.system.stop()
        await bus.close()
        await http.close()
        await sim.stop()
        await drop_database(settings)


async def test_a_simulated_day_costs_at_most_13_stable_token_calls_and_the_consumer_never_gets_40001(
    cluster: Cluster,
) -> None:
    await cluster.start_replicas()
    await cluster.poke()
    start = cluster.sim.state.now()
    assert cluster.calls() == 1
    margin = cluster.settings.token_refresh_margin_seconds
    seen: list[str] = []
    failures: list[tuple[int, int]] = []
    while (now := cluster.sim.state.now()) < start + DAY:
        token = cluster.keepers[0].token
        assert token is not None
        # Big steps far from a refresh, 100 s steps (under the margin) around one.
        step = 1200.0 if token.expires_at - margin - now > 1300 else 100.0
        await cluster.advance(min(step, start + DAY - now))
        await cluster.poke()
        assert sum(k.holds_lease for k in cluster.keepers) == 1
        held = await cluster.cache.get()
        if held not in seen:
            seen.append(held)
        errcode = await cluster.render(held)
        if errcode is not None:
            failures.append((round(now - start), errcode))
    assert failures == []
    calls = cluster.calls()
    # 1 + floor(86400 / (7200 - 240)) = 13: one call per refresh window, each getting a new token,
    # and the consumer received every one of them.
    assert 12 <= calls <= 13
    assert len(seen) == calls
    assert cluster.metric("wxlogin_token_refreshes_total", mode="normal") == calls


async def test_a_hundred_invalidations_of_the_current_token_cause_exactly_one_force_refresh(
    cluster: Cluster,
) -> None:
    await cluster.start_replicas()
    await cluster.poke()
    old = await cluster.cache.get()
    forced_before, calls_before = cluster.forced(), cluster.calls()
    event = TokenInvalidated(fingerprint=fingerprint(old), errcode=40001)
    await asyncio.gather(*(cluster.consumer_bus.publish(event) for _ in range(100)))
    await eventually(lambda: cluster.metric_total_invalidations() == 100, timeout=20)
    assert cluster.forced() - forced_before == 1
    assert cluster.calls() - calls_before == 1  # not even a refused attempt
    assert cluster.metric("wxlogin_token_invalidations_total", outcome="claimed") == 1
    assert cluster.metric("wxlogin_token_refreshes_total", mode="force") == 1
    per_outcome = [cluster.metric_each("wxlogin_token_invalidations_total", outcome=o) for o in OUTCOMES]
    handled = [sum(values) for values in zip(*per_outcome, strict=True)]
    assert sum(1 for n in handled if n) >= 2, handled  # the storm was shared, the claim decided

    async def consumer_has_a_new_token() -> str | None:
        held = await cluster.cache.get()
        return held if held != old else None

    new = await eventually(consumer_has_a_new_token, timeout=5)
    assert await cluster.render(old) == 40001  # a force refresh kills the old token at once
    assert await cluster.render(new) is None
    assert await cluster.current() == new


async def test_invalidations_of_an_old_token_force_nothing(cluster: Cluster) -> None:
    await cluster.start_replicas()
    await cluster.poke()
    old = await cluster.cache.get()
    token = cluster.keepers[0].token
    assert token is not None
    await cluster.advance(token.expires_at - cluster.sim.state.now() - 200)  # inside the margin
    await cluster.poke()
    assert await cluster.current() != old  # a normal refresh: the old token still works for 200 s
    forced_before, calls_before = cluster.forced(), cluster.calls()
    event = TokenInvalidated(fingerprint=fingerprint(old), errcode=40001)
    await asyncio.gather(*(cluster.consumer_bus.publish(event) for _ in range(100)))
    await eventually(lambda: cluster.metric_total_invalidations() == 100, timeout=20)
    assert cluster.metric("wxlogin_token_invalidations_total", outcome="stale") == 100
    assert (cluster.forced(), cluster.calls()) == (forced_before, calls_before)


async def test_a_restart_with_a_valid_stored_token_makes_no_wechat_call_and_hands_the_lease_over(
    cluster: Cluster,
) -> None:
    await cluster.start_replicas()
    await cluster.poke()
    token = cluster.keepers[0].token
    assert cluster.all_calls() == 1
    await cluster.system.stop()  # graceful: the owner releases the lease

    await cluster.start_replicas()
    await cluster.poke()
    assert cluster.all_calls() == 1
    assert all(k.token == token for k in cluster.keepers)
    # Without the release, the dead owner's 120 s lease would leave nobody in charge here.
    assert sum(k.holds_lease for k in cluster.keepers) == 1
    assert await cluster.ready() == [200] * REPLICAS
    assert token is not None and await cluster.current() == token.access_token
    late = TokenCache(cluster.consumer_bus, wait_seconds=0.01, clock=cluster.sim.state.now)
    assert await late.start()  # a consumer starting now has the token before its first use
    assert await late.get() == token.access_token


async def test_while_wechat_answers_minus_one_the_last_good_token_is_served_then_a_refresh_succeeds(
    cluster: Cluster,
) -> None:
    await cluster.start_replicas()
    await cluster.poke()
    old = await cluster.cache.get()
    token = cluster.keepers[0].token
    assert token is not None
    # Two refresh attempts' worth of -1 (the client tries each attempt three times).
    await cluster.control.fault(STABLE, errcode=-1, count=6)
    await cluster.advance(token.expires_at - cluster.sim.state.now() - 200)
    for _ in range(2):
        await cluster.poke()
        assert await cluster.current() == old
        assert await cluster.cache.get() == old
        assert await cluster.ready() == [200] * REPLICAS
        await cluster.advance(10)  # past the back-off (2 s, then 4 s)
    await cluster.poke()

    async def consumer_has_a_new_token() -> str | None:
        held = await cluster.cache.get()
        return held if held != old else None

    new = await eventually(consumer_has_a_new_token, timeout=5)
    assert cluster.calls() == 1 + 6 + 1
    assert cluster.metric("wxlogin_token_wechat_errors_total", errcode="-1") == 6
    assert await cluster.render(old) is None  # renewed in normal mode: the old one lives to its end
    assert await cluster.render(new) is None


async def test_without_a_valid_token_readyz_fails_and_consumers_wait_bounded_until_one_exists(
    cluster: Cluster,
) -> None:
    await cluster.control.fault(STABLE, errcode=-1)  # every call, until cleared
    await cluster.start_replicas()
    await cluster.poke()
    assert await cluster.ready() == [503] * REPLICAS
    impatient = TokenCache(
        cluster.consumer_bus, wait_seconds=0.3, poll_seconds=0.1, clock=cluster.sim.state.now
    )
    with pytest.raises(TokenUnavailable):
        await impatient.get()

    waiting = asyncio.create_task(cluster.cache.get())  # waits up to 5 s
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await cluster.control.clear_faults()
    await cluster.advance(60)  # past any back-off
    await cluster.poke()
    token = await asyncio.wait_for(waiting, 5)
    assert await cluster.render(token) is None

    async def all_ready() -> bool:  # the replicas that did not refresh learn it from the broadcast
        return await cluster.ready() == [200] * REPLICAS

    await eventually(all_ready, timeout=5)

    async with cluster.http.get(f"{next(iter(cluster.system.urls.values()))}/metrics") as resp:
        text = await resp.text()
    for name in (
        'wxlogin_token_refreshes_total{mode="normal"}',
        'wxlogin_token_wechat_errors_total{errcode="-1"}',
        "wxlogin_token_remaining_seconds",
        "wxlogin_token_age_seconds",
        "wxlogin_token_lease_held",
    ):
        assert name in text, name


# --- a real process, killed -----------------------------------------------------------------------


def replica_process(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m services run token`` as a container runs it, with short ticks and lease."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXLOGIN_")}
    env.update(
        {
            "WXLOGIN_APPID": settings.appid,
            "WXLOGIN_SECRET": settings.secret.get_secret_value(),
            "WXLOGIN_WECHAT_API_BASE": settings.wechat_api_base,
            "WXLOGIN_AMQP_URL": settings.amqp_url,
            "WXLOGIN_BUS_PREFIX": settings.bus_prefix,
            "WXLOGIN_BUS_KEY": settings.bus_key.get_secret_value(),
            "WXLOGIN_DATA_KEY": settings.data_key.get_secret_value(),  # seals the stored token
            "WXLOGIN_MONGO_URL": settings.mongo_url,
            "WXLOGIN_MONGO_DB": settings.mongo_db,
            "WXLOGIN_OPS_HOST": "127.0.0.1",
            "WXLOGIN_OPS_PORT": str(free_port()),
            "WXLOGIN_TOKEN_TICK_SECONDS": str(settings.token_tick_seconds),
            "WXLOGIN_TOKEN_LEASE_SECONDS": str(settings.token_lease_seconds),
            "WXLOGIN_TOKEN_REFRESH_MARGIN_SECONDS": str(settings.token_refresh_margin_seconds),
            "WXLOGIN_LOG_FORMAT": "json",
            "WXLOGIN_LOG_LEVEL": "WARNING",
        }
    )
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services", "run", "token"], cwd=ROOT, env=env, stdout=log, stderr=log
        )


async def test_when_the_lease_owner_is_killed_another_replica_takes_over_within_the_lease_time(
    cluster: Cluster, tmp_path: Path
) -> None:
    tick, lease_time = 0.2, 2.0
    cluster.settings = cluster.settings.model_copy(
        update={"token_tick_seconds": tick, "token_lease_seconds": lease_time}
    )
    client = make_client(cluster.settings.mongo_url)
    lease = LeaseStore(client[cluster.settings.mongo_db], cluster.settings.appid)

    async def holder() -> LeaseHolder | None:
        return await lease.holder()

    proc = replica_process(cluster.settings, tmp_path / "replica.log")
    try:
        first = await eventually(holder, timeout=30, interval=0.05)
        assert f"/{proc.pid}/" in first.owner, first
        await cluster.start_replicas(2)
        await asyncio.sleep(3 * tick)
        assert not any(k.holds_lease for k in cluster.keepers)  # the process holds it and renews it
        calls = cluster.calls()

        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        await asyncio.to_thread(proc.wait, 10)
        last = await holder()
        assert last is not None and f"/{proc.pid}/" in last.owner

        async def taken_over() -> LeaseHolder | None:
            now = await holder()
            return now if now is not None and now.owner != last.owner else None

        new = await eventually(taken_over, timeout=lease_time * 3, interval=0.02)
        taken_at = time.time()
        assert taken_at - killed_at <= lease_time + tick + 1.0  # 1 s of slack for a busy machine
        assert taken_at >= last.until - 0.05  # nobody took it before it lapsed
        assert any(k.owner == new.owner and k.holds_lease for k in cluster.keepers)
        assert cluster.calls() == calls  # a takeover is no reason to call WeChat

        token = cluster.keepers[0].token
        assert token is not None
        await cluster.advance(token.expires_at - cluster.sim.state.now() - 200)
        await cluster.poke()
        assert cluster.calls() == calls + 1  # the new owner refreshes when the time comes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await client.close()
