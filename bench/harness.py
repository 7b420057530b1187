"""What a benchmark needs running: nx-27017, the WeChat simulator (with a render-latency fault) and
the four services in this process, over the in-memory bus or a throw-away RabbitMQ vhost."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from pymongo import AsyncMongoClient

from services.__main__ import SERVICES, app_factory
from shared.bus import MemoryBroker
from shared.config import DEV_APPID, DEV_SECRET, Settings
from shared.mongo import EmbeddedMongo, free_port
from shared.sealing import generate_key
from sim.wechat.app import create_app as create_sim

CODE_ENDPOINT = "wxa/getwxacodeunlimit"


@dataclass
class Sim:
    """The simulator, in its own process so its PNG rendering does not share the services' loop."""

    process: subprocess.Popen[bytes]
    url: str
    fault_mode: str  # "sim-api" (POST /sim/faults, DESIGN §6) or "bench-middleware" (fallback)

    def stop(self) -> None:
        """Stop the simulator process."""
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def has_faults_api() -> bool:
    """True when the simulator serves ``POST /sim/faults`` (DESIGN §6)."""
    app = create_sim(appid=DEV_APPID, secret=DEV_SECRET)
    return any(getattr(r, "canonical", "") == "/sim/faults" for r in app.router.resources())


def slow_sim_app(*, appid: str, secret: str, delays_ms: dict[str, float]) -> web.Application:
    """The simulator with a middleware that delays the given endpoints (the fallback fault)."""
    app = create_sim(appid=appid, secret=secret)

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> web.StreamResponse:
        delay = delays_ms.get(request.path.lstrip("/"), 0.0)
        if delay:
            await asyncio.sleep(delay / 1000)
        return await handler(request)

    app.middlewares.append(slow)
    return app


def spawn_sim(settings: Settings, *, delays_ms: dict[str, float]) -> Sim:
    """Start ``python -m bench.harness`` (the simulator, plus the fallback delays) on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.harness", "--port", str(port), "--appid", settings.appid]
    for endpoint, ms in delays_ms.items():
        argv += ["--delay", f"{endpoint}={ms}"]
    env = {**os.environ, "BENCH_SIM_SECRET": settings.secret.get_secret_value()}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    return Sim(process, f"http://127.0.0.1:{port}", "")


async def start_sim(settings: Settings, *, latency_ms: float, endpoint: str = CODE_ENDPOINT) -> Sim:
    """The simulator with every call of ``endpoint`` slowed by ``latency_ms``.

    Uses the simulator's own ``POST /sim/faults`` (DESIGN §6) when it has one; otherwise a middleware
    of this harness adds the delay, so the numbers can be taken before that API lands.
    """
    native = has_faults_api()
    sim = spawn_sim(settings, delays_ms={} if native or not latency_ms else {endpoint: latency_ms})
    sim.fault_mode = "sim-api" if native else "bench-middleware"
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(f"{sim.url}/sim/counters") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        else:
            sim.stop()
            raise RuntimeError("the simulator did not start")
        if latency_ms and native:
            fault = {"endpoint": endpoint, "latency_ms": latency_ms}  # no count: until cleared
            async with http.post(f"{sim.url}/sim/faults", json=fault) as resp:
                if resp.status >= 300:
                    sim.stop()
                    raise RuntimeError(f"POST /sim/faults answered {resp.status}: {await resp.text()}")
    return sim


@contextmanager
def amqp_vhost() -> Iterator[str]:
    """A RabbitMQ vhost for this run, deleted afterwards (``/`` when rabbitmqctl is missing)."""
    ctl = shutil.which("rabbitmqctl")
    vhost = f"wxlogin-bench-{uuid.uuid4().hex[:8]}"
    created = False
    if ctl:
        created = subprocess.run([ctl, "add_vhost", vhost], capture_output=True, timeout=60).returncode == 0
        if created:
            subprocess.run(
                [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                capture_output=True,
                timeout=60,
            )
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost if created else ''}"
    finally:
        if created and ctl:
            subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)


@dataclass
class Stack:
    """The services of one scenario."""

    settings: Settings
    sim: Sim
    runners: dict[str, web.AppRunner]
    urls: dict[str, str]

    @property
    def gateway(self) -> str:
        """Base URL of the gateway."""
        return self.urls["gateway"]

    async def stop(self) -> None:
        """Stop the services and the simulator, then drop the database.

        Dropping matters: nx-27017 in single-file mode shares collections between database names.
        """
        for runner in reversed(list(self.runners.values())):
            await runner.cleanup()
        self.sim.stop()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.settings.mongo_url)
        try:
            await client.drop_database(self.settings.mongo_db)
        finally:
            await client.close()


async def start_stack(mongo: EmbeddedMongo, *, amqp_url: str, latency_ms: float, **overrides: Any) -> Stack:
    """Simulator plus the four services, each on its own port, sharing one fresh database."""
    base = Settings(  # type: ignore[call-arg]
        _env_file=None,
        bus_key=generate_key(),
        data_key=generate_key(),
        mongo_url=mongo.url,
        mongo_db=f"bench_{uuid.uuid4().hex[:8]}",
        amqp_url=amqp_url,
        bus_prefix=f"b{uuid.uuid4().hex[:6]}.",
        log_level="WARNING",
        **overrides,
    )
    sim = await start_sim(base, latency_ms=latency_ms)
    settings = base.model_copy(update={"wechat_api_base": sim.url})
    broker = MemoryBroker() if settings.embedded_bus else None
    runners: dict[str, web.AppRunner] = {}
    urls: dict[str, str] = {}
    for name in SERVICES:
        runner = web.AppRunner(
            app_factory(name)(settings, broker=broker), access_log=None, shutdown_timeout=2
        )
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners[name], urls[name] = runner, f"http://127.0.0.1:{port}"
    return Stack(settings, sim, runners, urls)


def _serve_sim(argv: list[str] | None = None) -> None:
    """``python -m bench.harness --port P [--delay endpoint=ms]``: the simulator for a benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench.harness")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--appid", required=True)
    parser.add_argument("--delay", action="append", default=[], help="endpoint=milliseconds")
    args = parser.parse_args(argv)
    delays = {k: float(v) for k, v in (item.split("=", 1) for item in args.delay)}
    app = slow_sim_app(appid=args.appid, secret=os.environ["BENCH_SIM_SECRET"], delays_ms=delays)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # resets of cut renders are expected
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    _serve_sim()
