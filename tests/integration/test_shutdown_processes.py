"""SIGTERM on real service processes: a gateway with open WebSockets, a session replica mid-request.

Two gateways, two qrcode, two session replicas and a token service, as separate OS processes on
least-privilege broker users. To hold work in flight at the moment of SIGTERM, the service further
down the call chain is paused with SIGSTOP and resumed with SIGCONT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator, Sequence

import aiohttp
import pytest

from services.launch import Replica
from shared.mongo import EmbeddedMongo
from sim.phone import Phone
from tests.integration.broker import rabbitmqctl
from tests.integration.cluster import Cluster, metric, start_cluster, stop_cluster
from tests.support import Browser, eventually

pytestmark = pytest.mark.skipif(rabbitmqctl() is None, reason="needs rabbitmqctl to create broker users")

SHUTDOWN_TIMEOUT = 8.0
GOING_AWAY = 1001


@pytest.fixture(scope="module")
def cluster(
    amqp_base_url: str, mongo_server: EmbeddedMongo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    running = start_cluster(
        {"gateway": 2, "qrcode": 2, "session": 2, "token": 1},
        amqp_base_url=amqp_base_url,
        mongo=mongo_server,
        workdir=tmp_path_factory.mktemp("shutdown"),
        env={
            "WXLOGIN_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT),
            # Longer than any pause below, so a paused callee delays a call instead of failing it.
            "WXLOGIN_RPC_TIMEOUT_SECONDS": "8",
        },
    )
    try:
        yield running
    finally:
        stop_cluster(running)


class paused:
    """SIGSTOP the given processes for the duration of the block (SIGCONT even when it fails)."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self.replicas = list(replicas)

    def __enter__(self) -> None:
        for replica in self.replicas:
            os.kill(replica.pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        for replica in self.replicas:
            if replica.running:
                os.kill(replica.pid, signal.SIGCONT)


async def close_code(browser: Browser, timeout: float = 5.0) -> int | None:
    """The code of the close frame the server sends next (None if something else comes)."""
    assert browser.ws is not None
    msg = await browser.ws.receive(timeout=timeout)
    return int(msg.data) if msg.type == aiohttp.WSMsgType.CLOSE else None


async def until_exit(replica: Replica, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while replica.process.poll() is None:
        assert time.monotonic() < deadline, f"{replica.name} did not exit:\n{replica.log_tail()}"
        await asyncio.sleep(0.05)
    return int(replica.process.returncode)


async def login_at(browser: Browser, phone: Phone) -> None:
    """Scan and confirm ``browser``'s scene with ``phone``, then complete it: 200."""
    await phone.scan(browser.scene)
    assert await phone.confirm(browser.scene) == {"state": "confirmed"}
    status, body = await browser.complete()
    assert status == 200, body


async def test_sigterm_closes_a_gateways_sockets_with_1001_and_browsers_resume_on_the_other_gateway(
    cluster: Cluster,
) -> None:
    launcher = cluster.launcher
    stopping, staying = launcher.replicas("gateway")
    a, b = stopping.url, staying.url
    async with aiohttp.ClientSession() as http:
        names = ("pending", "scanned", "confirming", "confirmed")
        browsers = {name: Browser(http, a) for name in names}
        phones = {name: Phone(http, b, cluster.sim_url) for name in names}
        for browser in browsers.values():
            await browser.issue()
            assert (await browser.subscribe())["state"] == "pending"
        for name in ("scanned", "confirming", "confirmed"):
            await phones[name].scan(browsers[name].scene)
            assert (await browsers[name].next_message())["state"] == "scanned"
        assert await phones["confirmed"].confirm(browsers["confirmed"].scene) == {"state": "confirmed"}
        assert (await browsers["confirmed"].next_message())["state"] == "confirmed"
        assert await close_code(browsers["confirmed"]) == 1000  # closed after the final state

        with paused(launcher.replicas("session")):
            # A confirm through gateway A that cannot finish until the session service resumes.
            via_a = Phone(http, a, cluster.sim_url, openid=await phones["confirming"].register())
            scene = browsers["confirming"].scene
            in_flight = asyncio.create_task(
                via_a.confirm(scene, scan_token=phones["confirming"].scan_tokens[scene])
            )
            # /metrics is itself a request in flight, hence two.
            await eventually(lambda: _at_least(stopping, "wxlogin_http_inflight", 2, kind="http"), timeout=10)
            os.kill(stopping.pid, signal.SIGTERM)

            for name in ("pending", "scanned", "confirming"):
                assert await close_code(browsers[name]) == GOING_AWAY, name
            async with aiohttp.ClientSession() as fresh:  # no pooled connection to A
                with pytest.raises(aiohttp.ClientConnectorError):  # A accepts nothing new
                    await fresh.get(f"{a}/healthz")
            assert stopping.running, "A must wait for the request in flight"
            assert not in_flight.done()

        assert await asyncio.wait_for(in_flight, 10) == {"state": "confirmed"}  # finished by A
        assert await until_exit(stopping, SHUTDOWN_TIMEOUT + 5) == 0
        await launcher.stop_replica(stopping)

        # Each browser reconnects (the load balancer would pick B) and first gets the current state.
        expected = dict(zip(names, ("pending", "scanned", "confirmed", "confirmed"), strict=True))
        for name, browser in browsers.items():
            browser.gateway = b
            assert (await browser.subscribe())["state"] == expected[name], name

        # No confirmed login is lost, and the others can still finish.
        for name in ("confirming", "confirmed"):
            status, body = await browsers[name].complete()
            assert status == 200, (name, body)
        await login_at(browsers["pending"], phones["pending"])
        assert await phones["scanned"].confirm(browsers["scanned"].scene) == {"state": "confirmed"}
        status, body = await browsers["scanned"].complete()
        assert status == 200, body

        # Scaling back up: a new gateway serves at once.
        added = await launcher.add("gateway")
        fresh = Browser(http, added.url)
        await fresh.issue()
        assert (await fresh.subscribe())["state"] == "pending"
        await login_at(fresh, Phone(http, b, cluster.sim_url))


async def test_sigterm_on_a_session_replica_lets_it_finish_the_confirm_it_is_handling(
    cluster: Cluster,
) -> None:
    launcher = cluster.launcher
    gateway = launcher.urls("gateway")[0]
    async with aiohttp.ClientSession() as http:
        browser = Browser(http, gateway)
        await browser.issue()
        assert (await browser.subscribe())["state"] == "pending"
        phone = Phone(http, gateway, cluster.sim_url)
        await phone.scan(browser.scene)
        assert (await browser.next_message())["state"] == "scanned"

        with paused(launcher.replicas("qrcode")):
            # session.confirm exchanges the code, then waits on qrcode.confirm: held in flight.
            confirming = asyncio.create_task(phone.confirm(browser.scene))
            busy = await eventually(lambda: _busy_session(launcher.replicas("session")), timeout=10)
            os.kill(busy.pid, signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert busy.running, "the replica must wait for the message it is handling"
            assert not confirming.done()

        assert await asyncio.wait_for(confirming, 10) == {"state": "confirmed"}
        assert (await browser.next_message())["state"] == "confirmed"
        status, body = await browser.complete()
        assert status == 200, body
        assert await until_exit(busy, SHUTDOWN_TIMEOUT + 5) == 0
        await launcher.stop_replica(busy)
        assert "bus_drained" in busy.log_path.read_text()

        # The other replica takes the new work.
        (remaining,) = launcher.replicas("session")
        before = await metric(remaining, "wxlogin_bus_deliveries_total", kind="rpc", outcome="ack")
        again = Browser(http, gateway)
        await again.issue()
        await login_at(again, phone)
        assert await metric(remaining, "wxlogin_bus_deliveries_total", kind="rpc", outcome="ack") > before


async def _at_least(replica: Replica, name: str, value: float, **labels: str) -> bool:
    return await metric(replica, name, **labels) >= value


async def _busy_session(replicas: Sequence[Replica]) -> Replica | None:
    for replica in replicas:
        if await metric(replica, "wxlogin_bus_inflight", service="session") >= 1:
            return replica
    return None
