"""One chaos run: start the stack, drive logins and poll readiness while the faults of a plan are
injected one after another, let the system settle, and return everything that was seen."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.chaos.driver import Driver, LoginRecord, ReadyWatch, make_users
from tests.chaos.faults import Fault, Inject
from tests.chaos.stack import Stack, stack


@dataclass
class Plan:
    """What a run does: the faults in order, the pause after each, the load and the settling time."""

    faults: Sequence[Inject]
    nodes: int = 1
    rate: float = 2.0  # logins started per second
    warmup: float = 5.0  # seconds of logins before the first fault
    gap: float = 6.0  # seconds between a fault's recovery and the next fault
    settle: float = 12.0  # seconds of logins after the last recovery (the assertions use ≥ 5 s of them)
    scene_ttl: int = 45  # WXLOGIN_SCENE_TTL_SECONDS: how long a stuck login keeps trying
    env: Mapping[str, str] = field(default_factory=dict)
    keep_logs: Path | None = None  # copy the services' and nodes' logs here at the end


@dataclass
class Run:
    """What a run saw."""

    faults: list[Fault]
    logins: list[LoginRecord]
    ready: ReadyWatch
    node_start_s: list[float]
    cluster_form_s: float
    stack_start_s: float
    wall_s: float
    started: float
    load_stopped: float
    replica_names: list[str]
    errors: list[str] = field(default_factory=list)  # a fault that could not be injected
    warnings: list[str] = field(default_factory=list)  # the services' warnings and errors, counted


async def run(plan: Plan) -> Run:
    """Carry out ``plan`` on a fresh stack (two gateways, one of everything else)."""
    began = time.monotonic()
    env = {"WXLOGIN_SCENE_TTL_SECONDS": str(plan.scene_ttl), **plan.env}
    async with stack(nodes=plan.nodes, counts={"gateway": 2}, env=env, keep_logs=plan.keep_logs) as s:
        stack_start_s = time.monotonic() - began
        timeout = aiohttp.ClientTimeout(total=None)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            result = await _drive(plan, s, http)
        result.warnings = service_warnings(s.workdir / "launch" / "logs")
        if plan.nodes > 1:  # how the quorum queues ended up, seen from a node still running (listed first)
            survivor = next((node for node in s.nodes if node.running), None)
            if survivor is not None:
                with contextlib.suppress(Exception):
                    state = await asyncio.to_thread(survivor.quorum_state)
                    result.warnings[:0] = [f"broker: {line}" for line in state]
        result.stack_start_s = stack_start_s
    result.wall_s = time.monotonic() - began
    return result


def service_warnings(logs: Path) -> list[str]:
    """Each replica's warning and error events, counted, with their error code or reason (to tell
    why a condition broke when the logs themselves are gone): ``gateway-2: request_failed
    bus_unavailable (x299)``."""
    counted: Counter[str] = Counter()
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict) or entry.get("level") not in ("warning", "error", "critical"):
                continue
            why = entry.get("error_code") or entry.get("error") or entry.get("reason") or ""
            counted[f"{path.stem}: {entry.get('event')} {str(why)[:100]}".rstrip()] += 1
    return [f"{what} (x{n})" for what, n in sorted(counted.items())]


async def _drive(plan: Plan, s: Stack, http: aiohttp.ClientSession) -> Run:
    openids = await make_users(http, s.sim_url, 20)
    driver = Driver(http, s.gateways, s.sim_url, openids, lifetime=plan.scene_ttl)
    seen: set[str] = set()

    def replicas() -> list[tuple[str, str]]:
        live = [(r.name, r.url) for r in s.replicas() if r.running]
        seen.update(name for name, _ in live)
        return live

    ready = ReadyWatch(http, replicas)
    stop_load, stop_ready = asyncio.Event(), asyncio.Event()
    started = time.monotonic()
    load = asyncio.ensure_future(driver.run(plan.rate, stop_load))
    polling = asyncio.ensure_future(ready.run(stop_ready))
    faults: list[Fault] = []
    errors: list[str] = []
    try:
        await asyncio.sleep(plan.warmup)
        for inject in plan.faults:
            try:
                faults.append(await inject(s))
            except Exception as exc:  # a fault the harness could not inject is reported, not hidden
                errors.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(plan.gap)
        await asyncio.sleep(max(0.0, plan.settle - plan.gap))
    finally:
        stop_load.set()
        load_stopped = time.monotonic()
        with contextlib.suppress(Exception):
            await load
        stop_ready.set()
        await polling
    return Run(
        faults=faults,
        logins=driver.ledger,
        ready=ready,
        node_start_s=s.node_start_s,
        cluster_form_s=s.cluster_form_s,
        stack_start_s=0.0,  # filled in by run()
        wall_s=0.0,
        started=started,
        load_stopped=load_stopped,
        replica_names=sorted(seen),
        errors=errors,
    )
