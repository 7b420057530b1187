"""Every service replica as its own OS process on this machine, the way ``docker compose up`` runs them.

``python -m services launch --gateway 2 --qrcode 2`` makes sure RabbitMQ runs (``rabbitmq-server
-detached`` when nothing answers on a local AMQP URL), starts an nx-27017 MongoDB wire server and the
WeChat simulator unless told where the real ones are, then each replica as its own process
(``python -m services run <service>``) with its own port and log file. It prints URLs and PIDs and,
on SIGTERM or SIGINT, stops everything it started by PID: gateways first, token last.

Unless ``WXLOGIN_BUS_PREFIX`` is given, its exchanges and queues are named ``launch-<id>.<name>`` and
deleted when it stops, so a launch leaves nothing behind on a shared RabbitMQ (a given prefix belongs to
whoever gave it: its names are kept).

:class:`Launcher` is the same as a library for tests and benchmarks::

    async with Launcher({"gateway": 2, "qrcode": 2}, env={...}, workdir=tmp) as cluster:
        a, b = cluster.urls("gateway")
        await cluster.stop_replica(cluster.replicas("gateway")[0])   # SIGTERM, wait, exit code
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import aio_pika
import aiohttp

from shared.bus.amqp import AmqpBus, split_urls
from shared.logging import get_logger
from shared.messages import Event
from shared.mongo import EmbeddedMongo, free_port
from shared.sealing import Sealer, generate_key

SERVICES = ("token", "qrcode", "session", "gateway", "webhook")
# What each service waits for before it starts, as docker-compose.yml's depends_on says (a qrcode
# replica is ready once it holds an access token; a gateway once it has the session's JWKS).
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "token": (),
    "session": (),
    "qrcode": ("token",),
    "gateway": ("qrcode", "session"),
    "webhook": (),
}
# Callers before callees, like compose stops dependants first: nothing calls a stopped service.
STOP_ORDER = ("gateway", "webhook", "qrcode", "session", "token")
# Replicas a library caller gets of a service it does not name: the webhook service (optional: only
# sites with webhook endpoints need it) runs only when asked; ``launch`` asks for one by default.
DEFAULT_REPLICAS = {"token": 1, "qrcode": 1, "session": 1, "gateway": 1, "webhook": 0}


def start_tiers() -> list[list[str]]:
    """Services grouped so each group depends only on earlier ones (started together, in order)."""
    tiers: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(SERVICES):
        tier = [s for s in SERVICES if s not in placed and set(DEPENDS_ON[s]) <= placed]
        if not tier:
            raise ValueError("DEPENDS_ON has a cycle")
        tiers.append(tier)
        placed.update(tier)
    return tiers


DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

log = get_logger("launch")


class LaunchError(RuntimeError):
    """A process did not start, or did not become ready in time."""


@dataclass
class Replica:
    """One running service process."""

    service: str
    index: int
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    host: str = "127.0.0.1"
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """``<service>-<index>``, as compose names a scaled container's suffix."""
        return f"{self.service}-{self.index}"

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.process.pid

    @property
    def url(self) -> str:
        """Base URL: the API of a gateway, the ops endpoints of the others."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True until the process has exited."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of this replica's output (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the launcher dies (Linux), so nothing is orphaned."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _events(base: type[Event] = Event) -> list[type[Event]]:
    """Every event type, each of which a service may have a durable queue for."""
    found: list[type[Event]] = []
    for cls in base.__subclasses__():
        if cls.TYPE:
            found.append(cls)
        found.extend(_events(cls))
    return found


def bus_object_names(prefix: str) -> tuple[list[str], list[str]]:
    """``(queues, exchanges)`` that services on bus ``prefix`` can declare (from the bus's own names)."""
    queues: list[str] = []
    exchanges: list[str] = []
    for service in SERVICES:
        names = AmqpBus("amqp://unused", service, Sealer(bytes(32)), prefix=prefix)
        queues += [names.rpc_queue_name(service), names.dead_letter_name()]
        queues += [names.event_queue_name(event) for event in _events()]
        exchanges += [names.exchange_name(service), names.dead_letter_name()]
    return sorted(set(queues)), sorted(set(exchanges))


async def delete_bus_objects(url: str, prefix: str) -> None:
    """Delete the queues and exchanges of bus ``prefix`` (deleting one that does not exist is fine)."""
    queues, exchanges = bus_object_names(prefix)
    connection = await aio_pika.connect(split_urls(url)[0], timeout=10)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


def ensure_rabbitmq(url: str, *, timeout: float = 120.0) -> bool:
    """Make sure a broker answers at ``url``; start the local one if it does not.

    Returns True when this call started it. A broker started here is left running afterwards: it is
    shared infrastructure (like ``make rabbitmq``), not one of the launched processes.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (5671 if parts.scheme == "amqps" else 5672)
    if _port_open(host, port):
        return False
    if host not in LOCAL_HOSTS:
        raise LaunchError(f"RabbitMQ does not answer at {host}:{port}")
    server = shutil.which("rabbitmq-server")
    if server is None:
        raise LaunchError(f"RabbitMQ does not answer at {host}:{port} and rabbitmq-server is not installed")
    subprocess.run([server, "-detached"], check=False, capture_output=True, timeout=60)  # noqa: S603
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(host, port):
            ctl = shutil.which("rabbitmqctl")
            if ctl:
                subprocess.run([ctl, "await_startup"], check=False, capture_output=True, timeout=60)  # noqa: S603
            return True
        time.sleep(0.5)
    raise LaunchError(f"RabbitMQ did not start listening on {host}:{port} within {timeout:.0f} s")


class Launcher:
    """RabbitMQ (ensured), MongoDB, the simulator and every service replica as separate processes.

    ``env`` holds the ``WXLOGIN_*`` settings of every replica (variables of the same name inherited
    from this process are dropped, so a launch is reproducible); ``service_env`` adds per-service
    variables, e.g. each service's own broker user in ``WXLOGIN_AMQP_URL``. What is not given is
    filled in: the local broker, an nx-27017 server, the simulator, fresh bus and data keys, and a
    free port per replica. Children run in ``workdir`` (so no stray ``.env`` is read) and write their
    output to ``workdir/logs/<service>-<n>.log``.
    """

    def __init__(
        self,
        counts: Mapping[str, int] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        service_env: Mapping[str, Mapping[str, str]] | None = None,
        workdir: str | Path | None = None,
        ready_timeout: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        counts = dict(counts or {})
        unknown = set(counts) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown service(s): {', '.join(sorted(unknown))}")
        self.counts = {name: counts.get(name, DEFAULT_REPLICAS[name]) for name in SERVICES}
        self.env: dict[str, str] = dict(env or {})
        self.service_env = {name: dict(values) for name, values in (service_env or {}).items()}
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="wxlogin-launch-"))
        self.ready_timeout = ready_timeout
        self.python = python
        self.mongo: EmbeddedMongo | None = None
        self.sim: subprocess.Popen[bytes] | None = None
        self.sim_url: str | None = None
        self.started_rabbitmq = False
        self.owns_prefix = False  # True when it named the bus objects itself (and deletes them at stop)
        self._replicas: list[Replica] = []
        self._next_index: dict[str, int] = dict.fromkeys(SERVICES, 1)
        self._sim_log: IO[bytes] | None = None

    # --- what is running ----------------------------------------------------------------------

    def replicas(self, service: str | None = None) -> list[Replica]:
        """Running replicas, of one service or of all, in start order."""
        return [r for r in self._replicas if service is None or r.service == service]

    def urls(self, service: str) -> list[str]:
        """Base URLs of the replicas of ``service``."""
        return [r.url for r in self.replicas(service)]

    @property
    def amqp_url(self) -> str:
        """The broker URL the replicas use (unless ``service_env`` overrides it)."""
        return self.env["WXLOGIN_AMQP_URL"]

    @property
    def mongo_url(self) -> str:
        """The MongoDB URL the replicas use."""
        return self.env["WXLOGIN_MONGO_URL"]

    @property
    def bus_prefix(self) -> str:
        """The prefix of every exchange and queue name of this launch."""
        return self.env.get("WXLOGIN_BUS_PREFIX", "")

    @property
    def shutdown_timeout(self) -> float:
        """The replicas' graceful-stop deadline (``WXLOGIN_SHUTDOWN_TIMEOUT_SECONDS``)."""
        return float(self.env.get("WXLOGIN_SHUTDOWN_TIMEOUT_SECONDS", "10"))

    def describe(self) -> str:
        """A table of what runs where, for people."""
        rows = [("service", "pid", "url")]
        rows += [(r.name, str(r.pid), r.url) for r in self._replicas]
        if self.sim is not None and self.sim_url:
            rows.append(("wechat-sim", str(self.sim.pid), self.sim_url))
        if self.mongo is not None and self.mongo.process is not None:
            rows.append(("nx-27017", str(self.mongo.process.pid), self.mongo_url))
        parts = urlsplit(self.amqp_url)
        names = f"  (names {self.bus_prefix}*)" if self.bus_prefix else ""
        rows.append(
            ("rabbitmq", "-", f"{parts.scheme}://{parts.hostname}:{parts.port or 5672}{parts.path}{names}")
        )
        width = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  " + "  ".join(c.ljust(width[i]) for i, c in enumerate(row)).rstrip() for row in rows]
        return "\n".join([*lines, f"  logs: {self.workdir / 'logs'}"])

    # --- starting -----------------------------------------------------------------------------

    async def start(self) -> Launcher:
        """Start the infrastructure, then the replicas in dependency order; return once all are ready."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            await self._start_infrastructure()
            for tier in start_tiers():
                started = [self._spawn(name) for name in tier for _ in range(self.counts[name])]
                await self._wait_ready(started)
        except BaseException:
            await self.stop()
            raise
        return self

    async def add(self, service: str) -> Replica:
        """Start one more replica of ``service`` (``--scale`` up) and wait until it is ready."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        replica = self._spawn(service)
        try:
            await self._wait_ready([replica])
        except BaseException:
            await self.stop_replica(replica, timeout=5)
            raise
        return replica

    async def _start_infrastructure(self) -> None:
        env = self.env
        env.setdefault("WXLOGIN_AMQP_URL", DEFAULT_AMQP_URL)
        if env["WXLOGIN_AMQP_URL"].startswith("memory://"):
            raise LaunchError("separate processes need a broker: WXLOGIN_AMQP_URL must be amqp://…")
        self.started_rabbitmq = await asyncio.to_thread(ensure_rabbitmq, env["WXLOGIN_AMQP_URL"])
        if not env.get("WXLOGIN_BUS_PREFIX"):
            env["WXLOGIN_BUS_PREFIX"] = f"launch-{os.urandom(4).hex()}."
            self.owns_prefix = True
        env.setdefault("WXLOGIN_BUS_KEY", generate_key())
        env.setdefault("WXLOGIN_DATA_KEY", generate_key())
        env.setdefault("WXLOGIN_LOG_FORMAT", "json")
        env.setdefault("WXLOGIN_GATEWAY_HOST", "127.0.0.1")
        env.setdefault("WXLOGIN_OPS_HOST", "127.0.0.1")
        if not env.get("WXLOGIN_MONGO_URL"):
            self.mongo = EmbeddedMongo(data_dir=str(self.workdir / "mongo"))
            await asyncio.to_thread(self.mongo.start)
            env["WXLOGIN_MONGO_URL"] = self.mongo.url
        if "WXLOGIN_WECHAT_API_BASE" not in env:
            await self._start_sim()
            env.setdefault("WXLOGIN_DEMO", "true")  # the demo page's simulated phone needs the simulator

    async def _start_sim(self) -> None:
        host, port = "127.0.0.1", int(self.env.get("WXLOGIN_SIM_PORT") or free_port())
        sim = self._spawn_sim(host, port)
        deadline = time.monotonic() + self.ready_timeout
        while not _port_open(host, port):
            if sim.poll() is not None or time.monotonic() > deadline:
                raise LaunchError("the WeChat simulator did not start (see logs/wechat-sim.log)")
            await asyncio.sleep(0.05)
        self.sim_url = f"http://{host}:{port}"
        self.env["WXLOGIN_WECHAT_API_BASE"] = self.sim_url

    def _spawn_sim(self, host: str, port: int) -> subprocess.Popen[bytes]:
        self._sim_log = open(self.workdir / "logs" / "wechat-sim.log", "wb")  # noqa: SIM115 - closed in stop()
        # appid and secret reach the simulator through the environment, never the command line (ps).
        self.sim = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [self.python, "-m", "sim.wechat", "--host", host, "--port", str(port)],
            env=self._child_env({}),
            cwd=self.workdir,
            stdout=self._sim_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        return self.sim

    def _child_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("WXLOGIN_")}
        return {**inherited, "PYTHONUNBUFFERED": "1", **self.env, **extra}

    def _spawn(self, service: str) -> Replica:
        index = self._next_index[service]
        self._next_index[service] += 1
        port = free_port()
        port_key = "WXLOGIN_GATEWAY_PORT" if service == "gateway" else "WXLOGIN_OPS_PORT"
        host = self.env["WXLOGIN_GATEWAY_HOST" if service == "gateway" else "WXLOGIN_OPS_HOST"]
        log_path = self.workdir / "logs" / f"{service}-{index}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed when the replica stops
        extra = {**self.service_env.get(service, {}), port_key: str(port)}
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [self.python, "-m", "services", "run", service],
            env=self._child_env(extra),
            cwd=self.workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches the launcher only, which stops replicas in order.
            start_new_session=True,
            # Spawned from the event loop's thread on purpose: the parent-death signal follows the
            # thread that forked, and a worker thread (asyncio.to_thread) would end early.
            preexec_fn=_die_with_parent,
        )
        replica = Replica(
            service, index, port, process, log_path, host="127.0.0.1" if host == "0.0.0.0" else host
        )
        replica._log = log_file
        self._replicas.append(replica)
        return replica

    async def _wait_ready(self, replicas: Sequence[Replica]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await asyncio.gather(*(self._wait_one(http, r, deadline) for r in replicas))

    async def _wait_one(self, http: aiohttp.ClientSession, replica: Replica, deadline: float) -> None:
        while True:
            if not replica.running:
                raise LaunchError(
                    f"{replica.name} exited with {replica.process.returncode}:\n{replica.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{replica.url}/readyz") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{replica.name} was not ready within {self.ready_timeout:.0f} s:\n{replica.log_tail()}"
                )
            await asyncio.sleep(0.1)

    # --- stopping -----------------------------------------------------------------------------

    async def stop_replica(
        self, replica: Replica, *, sig: int = signal.SIGTERM, timeout: float | None = None
    ) -> int:
        """Send ``sig`` to one replica (by PID), wait for it to exit, SIGKILL it after ``timeout``.

        Returns its exit code. The default timeout is the replica's shutdown deadline plus 5 s.
        """
        timeout = self.shutdown_timeout + 5 if timeout is None else timeout
        process = replica.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
                os.kill(process.pid, signal.SIGCONT)  # a stopped (SIGSTOP) process must see it too
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)
        if replica._log is not None:
            replica._log.close()
            replica._log = None
        if replica in self._replicas:
            self._replicas.remove(replica)
        return int(process.returncode)

    async def stop(self) -> None:
        """Stop every replica (gateways first, token last), delete the bus objects of a prefix it made
        up, then stop the simulator and MongoDB."""
        for service in STOP_ORDER:
            await asyncio.gather(*(self.stop_replica(r) for r in self.replicas(service)))
        if self.owns_prefix:
            self.owns_prefix = False
            try:
                await delete_bus_objects(self.amqp_url, self.bus_prefix)
            except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
                log.warning("bus_objects_left", prefix=self.bus_prefix, error=str(exc))
        if self.sim is not None:
            sim, self.sim = self.sim, None
            if sim.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(sim.pid, signal.SIGTERM)
                try:
                    await asyncio.to_thread(sim.wait, 10)
                except subprocess.TimeoutExpired:
                    os.kill(sim.pid, signal.SIGKILL)
                    await asyncio.to_thread(sim.wait, 10)
        if self._sim_log is not None:
            self._sim_log.close()
            self._sim_log = None
        if self.mongo is not None:
            mongo, self.mongo = self.mongo, None
            await asyncio.to_thread(mongo.stop)

    async def __aenter__(self) -> Launcher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --- the command ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m services launch``."""
    for name in SERVICES:
        parser.add_argument(f"--{name}", type=int, default=1, metavar="N", help=f"{name} replicas (1)")
    parser.add_argument("--workdir", help="where logs (and the embedded database) go; a temp dir by default")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for /readyz")


def settings_env(dotenv: str | None = ".env") -> dict[str, str]:
    """``WXLOGIN_*`` from ``.env`` then the environment (which wins), as ``Settings`` would read them."""
    values: dict[str, str] = {}
    if dotenv and os.path.exists(dotenv):
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(dotenv).items() if k.startswith("WXLOGIN_") and v})
    values.update({k: v for k, v in os.environ.items() if k.startswith("WXLOGIN_")})
    return values


async def run_launch(args: argparse.Namespace) -> None:
    """Start everything, print where it runs, stop it all on SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    env = settings_env()
    counts = {name: getattr(args, name) for name in SERVICES}
    launcher = Launcher(counts, env=env, workdir=args.workdir, ready_timeout=args.ready_timeout)
    starting = asyncio.ensure_future(launcher.start())
    waiting = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal during start-up: start() stops what it started
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return
    waiting.cancel()
    starting.result()
    banner = "wxlogin: each replica is its own process"
    print(f"\n  {banner}\n{launcher.describe()}\n  (Ctrl-C to stop)\n", flush=True)
    if "WXLOGIN_DATA_KEY" not in env:
        print("  note: WXLOGIN_DATA_KEY was generated; sessions do not survive a relaunch\n", flush=True)
    try:
        await stop.wait()
    finally:
        print("  stopping…", flush=True)
        await launcher.stop()
