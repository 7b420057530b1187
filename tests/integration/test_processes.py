"""The services as separate OS processes, scaled: two gateways, two qrcode and two session replicas,
one token, over real RabbitMQ (each service its own least-privilege broker user), one nx-27017 and the
simulator process. What `docker compose up --scale gateway=2 --scale qrcode=2` runs, without Docker.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator

import aio_pika
import aiohttp
import pytest

from shared.mongo import EmbeddedMongo
from sim.phone import Phone
from tests.integration.broker import rabbitmqctl
from tests.integration.cluster import Cluster, bindings, start_cluster, stop_cluster
from tests.support import Browser, eventually

pytestmark = pytest.mark.skipif(rabbitmqctl() is None, reason="needs rabbitmqctl to create broker users")

SCENE_TTL = 10  # the shortest the settings allow


@pytest.fixture(scope="module")
def cluster(
    amqp_base_url: str, mongo_server: EmbeddedMongo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    running = start_cluster(
        {"gateway": 2, "qrcode": 2, "session": 2, "token": 1, "webhook": 1},
        amqp_base_url=amqp_base_url,
        mongo=mongo_server,
        workdir=tmp_path_factory.mktemp("processes"),
        env={"WXLOGIN_SCENE_TTL_SECONDS": str(SCENE_TTL)},
    )
    try:
        yield running
    finally:
        stop_cluster(running)


def test_every_replica_is_its_own_process(cluster: Cluster) -> None:
    replicas = cluster.launcher.replicas()
    assert Counter(r.service for r in replicas) == {
        "gateway": 2,
        "qrcode": 2,
        "session": 2,
        "token": 1,
        "webhook": 1,
    }
    assert len({r.pid for r in replicas}) == len(replicas) and all(r.running for r in replicas)
    assert len({r.port for r in replicas}) == len(replicas)


async def test_login_completes_with_the_browser_on_one_gateway_and_the_phone_on_the_other(
    cluster: Cluster,
) -> None:
    a, b = cluster.launcher.urls("gateway")
    async with aiohttp.ClientSession() as http:
        browser = Browser(http, a)
        await browser.issue()
        assert await browser.subscribe() == {"type": "state", "scene": browser.scene, "state": "pending"}

        phone = Phone(http, b, cluster.sim_url)
        openid = await phone.register()
        await phone.scan(browser.scene)
        assert (await browser.next_message())["state"] == "scanned"  # pushed by gateway A
        assert await phone.confirm(browser.scene) == {"state": "confirmed"}
        assert (await browser.next_message())["state"] == "confirmed"

        status, tokens = await browser.complete()
        assert status == 200, tokens
        assert tokens["user"]["openid"] == openid
        # Either gateway verifies the token with the session service's public keys.
        for gateway in (a, b):
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            async with http.get(f"{gateway}/api/me", headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.json())["openid"] == openid


async def test_a_returning_user_logs_in_whichever_session_replica_serves_the_scan_and_the_confirm(
    cluster: Cluster,
) -> None:
    # The broker hands session.rpc requests to the two replicas in turn, so some confirms are served
    # by the replica that did not see the scan: it reads the user the scan identified from Mongo.
    a, b = cluster.launcher.urls("gateway")
    async with aiohttp.ClientSession() as http:
        phone = Phone(http, b, cluster.sim_url)
        await phone.register()
        users, scenes = set(), []
        for _ in range(6):
            browser = Browser(http, a)
            await browser.issue()
            assert (await phone.scan(browser.scene))["identified"] is True
            assert await phone.confirm(browser.scene) == {"state": "confirmed"}
            status, tokens = await browser.complete()
            assert status == 200, tokens
            users.add(tokens["user"]["id"])
            scenes.append(browser.scene)
        assert len(users) == 1

    def served(event: str) -> dict[str, str]:
        """The replica that logged ``event`` for each scene."""
        logs = cluster.logs("session").items()
        return {line["scene"]: name for name, lines in logs for line in lines if line.get("event") == event}

    identified, confirmed = served("scanner_identified"), served("login_confirmed")
    crossed = [scene for scene in scenes if identified[scene] != confirmed[scene]]
    assert crossed, (identified, confirmed)


async def test_a_scene_issued_on_either_qrcode_replica_expires_exactly_once(cluster: Cluster) -> None:
    gateways = cluster.launcher.urls("gateway")
    expired: list[str] = []
    async with await aio_pika.connect(cluster.observer_url) as connection, aiohttp.ClientSession() as http:
        # A test-only queue on the qrcode exchange sees every scene.expired that is published.
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(f"{cluster.prefix}qrcode.events", routing_key="scene.expired")

        async def on_expired(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            expired.append(json.loads(message.body)["scene"])
            await message.ack()

        await queue.consume(on_expired)

        browsers = []
        for i in range(4):
            browser = Browser(http, gateways[i % 2])
            await browser.issue()
            browsers.append(browser)
        scenes = [b.scene for b in browsers]
        watcher = browsers[0]
        assert (await watcher.subscribe())["state"] == "pending"

        issued_by = {
            line["scene"]: replica
            for replica, lines in cluster.logs("qrcode").items()
            for line in lines
            if line.get("event") == "scene_issued"
        }
        assert set(scenes) <= set(issued_by)
        assert {issued_by[s] for s in scenes} == {"qrcode-1", "qrcode-2"}, "both replicas issue"

        await eventually(lambda: set(scenes) <= set(expired), timeout=SCENE_TTL + 10, interval=0.2)
        assert (await watcher.next_message())["state"] == "expired"
        await asyncio.sleep(2.5)  # both sweepers run twice more: nothing is announced again

    counts = Counter(s for s in expired if s in scenes)
    assert counts == dict.fromkeys(scenes, 1)
    logged = Counter(
        line["scene"]
        for lines in cluster.logs("qrcode").values()
        for line in lines
        if line.get("event") == "scene_expired" and line.get("scene") in scenes
    )
    assert logged == dict.fromkeys(scenes, 1)


def test_every_binding_the_running_services_made_is_allowed_by_their_broker_users(cluster: Cluster) -> None:
    prefix = cluster.prefix
    made = [(src, dst) for src, dst, kind in bindings(cluster.users.vhost) if dst.startswith(prefix) and src]
    owners = Counter(dst[len(prefix) :].split(".", 1)[0] for _, dst in made)
    # token binds token.invalidated, qrcode and session their token broadcast queues (session needs the
    # access_token for phone numbers), each gateway its push queue and its signing-key queue, the
    # webhook service its durable queue of each event it turns into webhooks.
    assert set(owners) == {"token", "qrcode", "session", "gateway", "webhook"}
    for source, destination in made:
        owner = destination[len(prefix) :].split(".", 1)[0]
        permissions = cluster.users.permissions[owner]
        assert re.search(permissions["read"], source), f"{owner} reads {source}"
        assert re.search(permissions["configure"], destination), f"{owner} declares {destination}"
