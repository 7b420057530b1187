"""The system under chaos: private RabbitMQ node(s), an nx-27017 server that can be killed and started
again on the same port and data, and every service replica as its own process (services.launch)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.launch import Launcher, Replica
from shared.mongo import EmbeddedMongo, free_port
from tests.chaos.rabbit import RabbitHome, RabbitNode, join_cluster

ORIGIN = "http://chaos.invalid"
# One client IP drives every login: the per-IP limits would measure the limiter, not the recovery.
LIMITS_OFF = {
    "WXLOGIN_LIMIT_ISSUE_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_MP_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_WS_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_POLL_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_LOGIN_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_SESSION_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_USER_PER_MINUTE": "0",  # twenty phones take turns: a retry storm would hit it
    "WXLOGIN_LIMIT_ISSUE_PREFIX_SHARE_PERCENT": "100",  # 127.0.0.1's /24 may use the whole budget
}


class RestartableMongo:
    """nx-27017 on a fixed port with a data dir that outlives the process, so it can be killed and
    started again where the services expect it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.server: EmbeddedMongo | None = None

    @property
    def url(self) -> str:
        """The URL every service uses (the same across restarts)."""
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        """Start (or start again) the server on its port and data."""
        self.server = EmbeddedMongo(port=self.port, data_dir=str(self.data_dir))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.server.start()
                return
            except RuntimeError:  # the port of the killed server may linger a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def kill(self) -> None:
        """``kill -9`` the server (by its PID's group), as a crashed database would go."""
        server, self.server = self.server, None
        if server is None or server.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        server.stop()  # removes its temp files; the data dir stays

    def stop(self) -> None:
        """Stop the server if it runs."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()


@dataclass
class Stack:
    """A running system: its broker nodes, its database and its launch."""

    nodes: list[RabbitNode]
    mongo: RestartableMongo
    launcher: Launcher
    workdir: Path
    node_start_s: list[float] = field(default_factory=list)
    cluster_form_s: float = 0.0

    @property
    def sim_url(self) -> str:
        """The WeChat simulator."""
        assert self.launcher.sim_url is not None
        return self.launcher.sim_url

    def gateways(self) -> list[str]:
        """Base URLs of the gateways whose process runs."""
        return [r.url for r in self.launcher.replicas("gateway") if r.running]

    def replicas(self) -> list[Replica]:
        """Every service replica the launcher runs."""
        return self.launcher.replicas()

    async def kill_gateway(self) -> Replica:
        """``kill -9`` the first gateway (by PID); returns it."""
        victim = self.launcher.replicas("gateway")[0]
        await self.launcher.stop_replica(victim, sig=signal.SIGKILL, timeout=10)
        return victim

    async def add_gateway(self) -> Replica:
        """One more gateway (a replacement for a killed one), once it is ready."""
        return await self.launcher.add("gateway")


def start_nodes(home: RabbitHome, count: int) -> tuple[list[RabbitNode], list[float], float]:
    """``count`` nodes started side by side, joined into one cluster when more than one.

    Returns the nodes, each node's start time and the seconds the cluster took to form.
    """
    nodes = [home.node() for _ in range(count)]
    try:
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            start_s = list(pool.map(lambda n: n.start(), nodes))
        formed = time.monotonic()
        for node in nodes[1:]:
            join_cluster(node, nodes[0])
        return nodes, start_s, (time.monotonic() - formed if count > 1 else 0.0)
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def copy_logs(workdir: Path, dest: Path) -> None:
    """The services' logs and each node's RabbitMQ log, copied to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for log in [*workdir.glob("launch/logs/*.log"), *workdir.glob("*/chaos-*/log/*.log")]:
        with contextlib.suppress(OSError):
            shutil.copy2(log, dest / log.name)


def amqp_url(nodes: list[RabbitNode]) -> str:
    """``WXLOGIN_AMQP_URL``: one node's URL, or the comma-separated URLs of a cluster's nodes."""
    return ",".join(node.url for node in nodes)


@asynccontextmanager
async def stack(
    *,
    nodes: int = 1,
    counts: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    keep_logs: Path | None = None,
) -> AsyncIterator[Stack]:
    """Start the broker node(s), Mongo and every service; stop all of it (by PID) afterwards.

    ``keep_logs``: where the services' and the nodes' logs are copied before the temp dir goes.
    """
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    workdir = Path(tempfile.mkdtemp(prefix="wxlogin-chaos-", dir=shm))
    home = RabbitHome(workdir)
    mongo = RestartableMongo(workdir / "mongo")
    started: list[RabbitNode] = []
    launcher: Launcher | None = None
    try:
        started, start_s, form_s = await asyncio.to_thread(start_nodes, home, nodes)
        await asyncio.to_thread(mongo.start)
        settings = {
            "WXLOGIN_AMQP_URL": amqp_url(started),
            "WXLOGIN_MONGO_URL": mongo.url,
            "WXLOGIN_ALLOWED_ORIGINS": ORIGIN,
            "WXLOGIN_LOG_LEVEL": "INFO",
            **LIMITS_OFF,
            **(env or {}),
        }
        launcher = Launcher(counts or {}, env=settings, workdir=workdir / "launch", ready_timeout=90)
        await launcher.start()
        yield Stack(started, mongo, launcher, workdir, start_s, form_s)
    finally:
        if launcher is not None:
            await launcher.stop()
        await asyncio.to_thread(mongo.stop)
        for node in started:
            await asyncio.to_thread(node.stop)
        if keep_logs is not None:
            copy_logs(workdir, keep_logs)
        if os.environ.get("WXLOGIN_CHAOS_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
