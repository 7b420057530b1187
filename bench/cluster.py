"""The stack a benchmark measures: every service as its own OS process (``services.launch.Launcher``)
on a throw-away RabbitMQ vhost, an nx-27017 server and the WeChat simulator; plus the simulated
browser and phone steps of one login, and per-process CPU and memory readings from ``/proc``."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from services.launch import Launcher
from shared.mongo import make_client

CODE_ENDPOINT = "wxa/getwxacodeunlimit"
ORIGIN = "http://bench.invalid"
# Benchmarks come from one IP: the per-IP limits would measure the limiter, not the services.
LIMITS_OFF = {
    "WXLOGIN_LIMIT_ISSUE_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_MP_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_WS_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_POLL_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_LOGIN_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_SESSION_PER_IP_PER_MINUTE": "0",
    "WXLOGIN_LIMIT_USER_PER_MINUTE": "0",
    # One IP is one /24: without this it could take only a tenth of the global issue limit.
    "WXLOGIN_LIMIT_ISSUE_PREFIX_SHARE_PERCENT": "100",
    # 100 issues/s: above WeChat's ceiling (83/s), so the stack, not our own guard, bounds a run. The
    # render budget, which keeps WeChat's 5000 codes/min, is at its most: a run above 71.4/s draws
    # on the pool.
    "WXLOGIN_LIMIT_ISSUE_GLOBAL_PER_MINUTE": "6000",
    "WXLOGIN_CODE_RENDERS_PER_MINUTE": "4285",
}


@contextmanager
def amqp_vhost(prefix: str = "wxlogin-bench", host: str = "127.0.0.1") -> Iterator[str]:
    """A fresh RabbitMQ vhost, deleted afterwards (``/`` when rabbitmqctl is missing).

    Shared with the test suite's ``amqp_base_url`` fixture.
    """
    ctl = shutil.which("rabbitmqctl")
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    created = False
    if ctl:
        created = subprocess.run([ctl, "add_vhost", vhost], capture_output=True, timeout=60).returncode == 0
        if created:
            subprocess.run(
                [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                capture_output=True,
                timeout=60,
                check=True,
            )
    try:
        yield f"amqp://guest:guest@{host}:5672/{vhost if created else ''}"
    finally:
        if created and ctl:
            subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)


def raise_open_files() -> tuple[int, int]:
    """Soft open-file limit up to the hard one (children inherit it); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        with suppress(ValueError, OSError):  # not allowed here: the current limit is the cap
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass
class ProcStat:
    """CPU seconds and resident memory of one process, from ``/proc/<pid>``."""

    cpu_s: float
    rss_kb: int


def proc_stat(pid: int) -> ProcStat:
    """The process's user+system CPU time and VmRSS."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return ProcStat(cpu, rss)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from ``/proc/stat``: others' work too."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / ticks, total / ticks


def rabbitmq_pid() -> int | None:
    """The local RabbitMQ node's Erlang VM (``beam.smp`` with the most CPU time), if any."""
    best: tuple[float, int] | None = None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "beam.smp":
                    continue
            cpu = proc_stat(int(entry)).cpu_s
        except OSError:
            continue
        if best is None or cpu > best[0]:
            best = (cpu, int(entry))
    return best[1] if best else None


@dataclass
class Cluster:
    """A running launch, with the URLs and PIDs a benchmark needs."""

    launcher: Launcher
    http: aiohttp.ClientSession
    users: list[str] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        """Base URL of the (first) gateway."""
        return self.launcher.urls("gateway")[0]

    @property
    def sim(self) -> str:
        """Base URL of the WeChat simulator."""
        assert self.launcher.sim_url is not None
        return self.launcher.sim_url

    def pids(self) -> dict[str, int]:
        """Process name → PID of every process of the stack (not RabbitMQ, which is shared)."""
        out = {r.name: r.pid for r in self.launcher.replicas()}
        if self.launcher.sim is not None:
            out["wechat-sim"] = self.launcher.sim.pid
        mongo = self.launcher.mongo
        if mongo is not None and mongo.process is not None:
            out["nx-27017"] = mongo.process.pid
        out["bench-client"] = os.getpid()
        broker = rabbitmq_pid()
        if broker is not None:
            out["rabbitmq*"] = broker  # shared with whatever else uses this broker
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process."""
        out: dict[str, float] = {}
        for name, pid in self.pids().items():
            try:
                out[name] = proc_stat(pid).cpu_s
            except OSError:
                continue
        return out

    async def sim_counters(self) -> dict[str, int]:
        """WeChat API calls per endpoint so far (``GET /sim/counters``)."""
        async with self.http.get(f"{self.sim}/sim/counters") as resp:
            return {k: int(v) for k, v in (await resp.json()).items()}

    async def sim_fault(self, latency_ms: float, endpoint: str = CODE_ENDPOINT) -> None:
        """Slow every call of ``endpoint`` by ``latency_ms`` until cleared."""
        body = {"endpoint": endpoint, "latency_ms": latency_ms}
        async with self.http.post(f"{self.sim}/sim/faults", json=body) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"POST /sim/faults answered {resp.status}: {await resp.text()}")

    async def issued_by_source(self) -> dict[str, float]:
        """Scenes issued so far by code source (``pool``/``render``), summed over the qrcode replicas'
        metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for url in self.launcher.urls("qrcode"):
            async with self.http.get(f"{url}/metrics") as resp:
                text = await resp.text()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "wxlogin_scenes_issued_total":
                        source = sample.labels["source"]
                        out[source] = out.get(source, 0.0) + sample.value
        return out

    async def make_users(self, n: int) -> None:
        """``n`` simulated WeChat users, whose phones the logins take turns with."""
        for _ in range(n):
            async with self.http.post(f"{self.sim}/sim/users", json={}) as resp:
                self.users.append(str((await resp.json())["openid"]))

    async def ready_codes(self) -> int:
        """Ready codes in the qrcode service's pool, counted in Mongo."""
        client = make_client(self.launcher.mongo_url)
        try:
            db = self.launcher.env.get("WXLOGIN_MONGO_DB", "wxlogin")
            return int(await client[db]["scene_pool"].count_documents({"kind": "code", "state": "ready"}))
        finally:
            await client.close()

    async def wait_for_pool(self, size: int, timeout: float = 180.0) -> float:
        """Wait until ``size`` codes are ready; returns the seconds it took."""
        started = time.monotonic()
        while await self.ready_codes() < size:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the code pool did not reach {size} in {timeout:.0f} s")
            await asyncio.sleep(0.5)
        return time.monotonic() - started


@asynccontextmanager
async def cluster(
    env: Mapping[str, str] | None = None, *, counts: Mapping[str, int] | None = None
) -> AsyncIterator[Cluster]:
    """Launch the stack on a fresh vhost; stop every process (by PID) and drop the vhost after."""
    # The database files go to tmpfs when there is one: nx-27017 commits (and fsyncs) every write, and
    # other work on a shared disk would otherwise time those fsyncs rather than the services.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with amqp_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="wxlogin-bench-", dir=shm) as tmp:
        full_env = {
            "WXLOGIN_AMQP_URL": amqp_url,
            "WXLOGIN_ALLOWED_ORIGINS": ORIGIN,
            "WXLOGIN_LOG_LEVEL": "WARNING",
            **LIMITS_OFF,
            **(env or {}),
        }
        launcher = Launcher(counts or {}, env=full_env, workdir=Path(tmp), ready_timeout=120)
        await launcher.start()
        try:
            timeout = aiohttp.ClientTimeout(total=60)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
                yield Cluster(launcher, http)
        finally:
            await launcher.stop()


def from_pool_share(before: dict[str, float], after: dict[str, float]) -> str:
    """The share of scenes issued between two readings whose code came from the pool."""
    pool = after.get("pool", 0) - before.get("pool", 0)
    render = after.get("render", 0) - before.get("render", 0)
    total = pool + render
    return f"{pool / total:.0%}" if total else "-"


class LoginError(RuntimeError):
    """A step of a simulated login answered something unexpected."""


async def _json(resp: aiohttp.ClientResponse, expect: int) -> Any:
    body = await resp.json(content_type=None)
    if resp.status != expect:
        raise LoginError(f"{resp.method} {resp.url.path} answered {resp.status}: {body}")
    return body


@dataclass
class Login:
    """One browser + phone login; timestamps are ``time.perf_counter()`` seconds."""

    scene: str = ""
    ticket: str = ""
    started: float = 0.0
    issued: float = 0.0
    confirm_sent: float = 0.0
    confirm_answered: float = 0.0
    pushed: float = 0.0
    polled: float = 0.0
    completed: float = 0.0


async def issue(http: aiohttp.ClientSession, gateway: str, login: Login) -> None:
    """``POST /api/login/qrcode``."""
    login.started = time.perf_counter()
    async with http.post(f"{gateway}/api/login/qrcode", headers={"Origin": ORIGIN}) as resp:
        body = await _json(resp, 201)
    login.scene, login.ticket = body["scene"], body["ticket"]
    login.issued = time.perf_counter()


async def subscribe(
    http: aiohttp.ClientSession, gateway: str, login: Login
) -> aiohttp.ClientWebSocketResponse:
    """Open the browser's WebSocket, subscribe, and read the first state (``pending``)."""
    ws = await http.ws_connect(f"{gateway}/api/login/ws", origin=ORIGIN, autoping=True)
    await ws.send_json({"type": "subscribe", "scene": login.scene, "ticket": login.ticket})
    first = await ws.receive_json(timeout=30)
    if first.get("state") != "pending":
        await ws.close()
        raise LoginError(f"first push was {first}")
    return ws


async def wx_login_code(http: aiohttp.ClientSession, sim: str, openid: str) -> str:
    """What ``wx.login()`` gives the mini-program of ``openid`` (from the simulator)."""
    async with http.post(f"{sim}/sim/codes", json={"openid": openid}) as resp:
        return str((await _json(resp, 201))["code"])


async def phone_scan(
    http: aiohttp.ClientSession, gateway: str, login: Login, code: str | None
) -> dict[str, Any]:
    """``POST /api/mp/scan`` (with the ``wx.login()`` code, or without); returns the answer."""
    scan_body = {"scene": login.scene, "code": code} if code is not None else {"scene": login.scene}
    async with http.post(f"{gateway}/api/mp/scan", json=scan_body) as resp:
        scanned: dict[str, Any] = await _json(resp, 200)
    if code is not None and scanned.get("identified") is not True:
        raise LoginError(f"the scan did not identify the phone: {scanned.get('identify_error')}")
    return scanned


async def phone_confirm(
    http: aiohttp.ClientSession,
    gateway: str,
    sim: str,
    openid: str,
    login: Login,
    *,
    code_with_scan: bool = True,
) -> None:
    """The mini-program: a ``wx.login()`` code, ``POST /api/mp/scan``, then ``POST /api/mp/confirm``.

    The code goes with the scan, as the mini-program page sends it (the confirm then carries none),
    or with the confirm (``code_with_scan=False``: the confirm exchanges it with WeChat).
    ``confirm_sent`` is taken just before the confirm request leaves.
    """
    code = await wx_login_code(http, sim, openid)
    scanned = await phone_scan(http, gateway, login, code if code_with_scan else None)
    body = {"scene": login.scene, "scan_token": scanned["scan_token"]}
    if not code_with_scan:
        body["code"] = code
    login.confirm_sent = time.perf_counter()
    async with http.post(f"{gateway}/api/mp/confirm", json=body) as resp:
        await _json(resp, 200)
    login.confirm_answered = time.perf_counter()


async def await_confirmed(ws: aiohttp.ClientWebSocketResponse, login: Login) -> None:
    """Read pushes until ``confirmed`` (``scanned`` comes first)."""
    while True:
        msg = await ws.receive_json(timeout=30)
        if msg.get("state") == "confirmed":
            login.pushed = time.perf_counter()
            return
        if msg.get("state") != "scanned":
            raise LoginError(f"unexpected push {msg}")


async def complete(http: aiohttp.ClientSession, gateway: str, login: Login) -> None:
    """``POST /api/login/complete``: the browser redeems the scene for tokens."""
    body = {"scene": login.scene, "ticket": login.ticket}
    async with http.post(f"{gateway}/api/login/complete", json=body, headers={"Origin": ORIGIN}) as resp:
        await _json(resp, 200)
    login.completed = time.perf_counter()


async def full_login(
    c: Cluster,
    openid: str,
    login: Login | None = None,
    issued: asyncio.Event | None = None,
    *,
    code_with_scan: bool = True,
    gateway: str | None = None,
    phone_gateway: str | None = None,
) -> Login:
    """Issue, subscribe, scan, confirm, wait for the push, complete (``issued`` is set after issuing).

    ``code_with_scan``: where the phone's wx.login code goes (see :func:`phone_confirm`). The browser's
    steps go to ``gateway`` and the phone's to ``phone_gateway`` (both the first gateway by default):
    any gateway serves any step, and the pushes reach the browser's gateway whichever took the phone's.
    """
    login = login or Login()
    browser = gateway or c.gateway
    phone = phone_gateway or browser
    await issue(c.http, browser, login)
    if issued is not None:
        issued.set()
    ws = await subscribe(c.http, browser, login)
    try:
        confirmed = asyncio.ensure_future(await_confirmed(ws, login))
        try:
            await phone_confirm(c.http, phone, c.sim, openid, login, code_with_scan=code_with_scan)
        except BaseException:
            confirmed.cancel()
            raise
        await confirmed
    finally:
        await ws.close()
    await complete(c.http, browser, login)
    return login
