"""Every service replica as its own OS process (services.launch) on this run's RabbitMQ vhost, each
service connecting as its own least-privilege user from deploy/rabbitmq: what compose runs, minus
Docker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import MongoClient

from services.launch import SERVICES, Launcher, Replica
from shared.mongo import EmbeddedMongo
from tests.integration.broker import BrokerUsers, load_service_users, rabbitmqctl
from tests.support import ORIGIN


@dataclass
class Cluster:
    """A running launch and what tests need to drive and observe it."""

    launcher: Launcher
    users: BrokerUsers
    observer_url: str  # guest on the same vhost, for test-only observers
    mongo_url: str
    db: str

    @property
    def prefix(self) -> str:
        """The bus prefix of this cluster's exchanges and queues."""
        return self.users.prefix

    @property
    def sim_url(self) -> str:
        """The WeChat simulator process."""
        assert self.launcher.sim_url is not None
        return self.launcher.sim_url

    def logs(self, service: str) -> dict[str, list[dict[str, Any]]]:
        """Each replica's JSON log lines (including stopped replicas' files)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for path in sorted((self.launcher.workdir / "logs").glob(f"{service}-*.log")):
            lines = []
            for raw in path.read_text(errors="replace").splitlines():
                if raw.startswith("{"):
                    try:
                        lines.append(json.loads(raw))
                    except ValueError:
                        continue
            out[path.stem] = lines
        return out


def start_cluster(
    counts: Mapping[str, int],
    *,
    amqp_base_url: str,
    mongo: EmbeddedMongo,
    workdir: Path,
    env: Mapping[str, str] | None = None,
) -> Cluster:
    """Load the broker users, start the processes, wait until every replica is ready."""
    tag = os.urandom(4).hex()
    users = load_service_users(amqp_base_url, f"p{tag}.", f"p{tag}", workdir)
    settings = {
        "WXLOGIN_BUS_PREFIX": users.prefix,
        "WXLOGIN_MONGO_URL": mongo.url,
        "WXLOGIN_MONGO_DB": f"p_{tag}",
        "WXLOGIN_ALLOWED_ORIGINS": ORIGIN,
        "WXLOGIN_LOG_LEVEL": "INFO",
        **(env or {}),
        # Never used as is: every service gets its own user below. It only tells the launcher which
        # broker to make sure of.
        "WXLOGIN_AMQP_URL": amqp_base_url,
    }
    own_user = {service: {"WXLOGIN_AMQP_URL": users.url(service)} for service in SERVICES}
    launcher = Launcher(counts, env=settings, service_env=own_user, workdir=workdir / "launch")
    try:
        asyncio.run(launcher.start())
    except BaseException:
        users.delete()
        raise
    return Cluster(launcher, users, amqp_base_url, mongo.url, settings["WXLOGIN_MONGO_DB"])


def stop_cluster(cluster: Cluster) -> None:
    """Stop every process by PID, remove the broker users and the database."""
    try:
        asyncio.run(cluster.launcher.stop())
    finally:
        cluster.users.delete()
        client: MongoClient[dict[str, Any]] = MongoClient(cluster.mongo_url)
        try:
            client.drop_database(cluster.db)
        finally:
            client.close()


async def metric(replica: Replica, name: str, **labels: str) -> float:
    """One sample of a replica's /metrics (0 when absent).

    A new connection each time, closed after the response (as the load balancer does): a kept-alive
    idle connection to a process that starts shutting down would hang until its drain ends.
    """
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(f"{replica.url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def bindings(vhost: str) -> list[tuple[str, str, str]]:
    """``(source, destination, destination_kind)`` of every binding in ``vhost``."""
    ctl = rabbitmqctl()
    assert ctl is not None
    listed = subprocess.run(
        [ctl, "list_bindings", "-p", vhost, "-q", "source_name", "destination_name", "destination_kind"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = []
    for line in listed.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows
