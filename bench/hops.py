"""Work per login, counted: MongoDB commands (each one round trip) by command and collection, and bus
publishes (RPC requests, replies, events) by message type, for every service process, per login step.

Nothing in the services changes: each service process is started with ``bench/instrument`` first on its
``PYTHONPATH``, whose ``sitecustomize`` counts what the process's pymongo and aio-pika clients send
and writes the counts to a file every half second. Every HTTP request of the measured logins carries
``X-Request-ID: bench.<step>.<n>``; the gateway makes it the flow's correlation id, which travels with
the RPC requests and events the step causes, so every count lands on the step that caused it
(``issue``, ``subscribe``, ``scan``, ``confirm``, ``complete``) whichever process did the work. What no
request caused is split in two. The services' periodic loops (the pool's rounds, the overdue sweep,
health pings) are measured alone for a few idle seconds first and shown per second; at that rate over
each process's own window of the run they are ``periodic``, which grows with how long the run took, not
with the logins. The rest is ``background``: the pool refills that follow the issues.

The logins run one at a time, each by a returning user (every user logs in once during the warm-up),
with the phone's ``wx.login()`` code sent with the scan as the mini-program page does. The counts are
taken after the pool has refilled what the logins took and every process has written its counts twice
with nothing new (or, on a machine too slow for the periodic loops to ever leave two readings alike,
after 20 s).

    python -m bench.hops [--logins 40] [--users 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from bench.cluster import (
    Cluster,
    Login,
    await_confirmed,
    cluster,
    complete,
    full_login,
    issue,
    phone_scan,
    subscribe,
    wx_login_code,
)
from bench.report import print_table, write_json
from shared.logging import configure_logging

INSTRUMENT = Path(__file__).parent / "instrument"
POOL = 10
STEPS = ("issue", "subscribe", "scan", "confirm", "complete")
BACKGROUND = "background"
PERIODIC = "periodic"  # the periodic loops at their idle rate over the run
KINDS = ("mongo", "rpc", "reply", "event")
WRITE_INTERVAL = 0.25  # seconds between count files (WXLOGIN_BENCH_COUNT_INTERVAL)
IDLE_SECONDS = 4.0

# Counts[process][tag][key]: "mongo <command> <collection>" or "publish <exchange> <type>".
Counts = dict[str, dict[str, Counter[str]]]

_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_step", default=None)


def tagging() -> aiohttp.TraceConfig:
    """Adds ``X-Request-ID: bench.<step>.<random>`` to every request made while a step is set."""

    async def on_request_start(_session: Any, _ctx: SimpleNamespace, params: Any) -> None:
        step = _step.get()
        if step is not None:
            params.headers["X-Request-ID"] = f"bench.{step}.{uuid.uuid4().hex[:12]}"

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace


def classify(key: str, bus_prefix: str) -> tuple[str, str]:
    """``(kind, what)`` of a counted key: a Mongo command, or an RPC request, reply or event."""
    source, _, rest = key.partition(" ")
    if source == "mongo":
        return "mongo", rest
    exchange, _, kind = rest.partition(" ")
    if exchange == "default":
        return ("reply" if kind == "error" or kind.endswith(".reply") else "rpc"), kind
    return "event", f"{kind} → {exchange.removeprefix(bus_prefix)}"


def read_counts(directory: Path) -> dict[int, dict[str, Any]]:
    """PID → the latest file each counting process wrote."""
    out: dict[int, dict[str, Any]] = {}
    for path in directory.glob("*.json"):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced while read: the next reading has it
        out[int(payload["pid"])] = payload
    return out


async def settled(
    directory: Path, pids: set[int], timeout: float = 20.0, *, fresh_within: float = 10.0
) -> dict[int, dict[str, Any]]:
    """The counts once every process has written twice more and nothing changed in between.

    The services' periodic loops (the pool's rounds, the overdue sweep, health pings) keep counting
    while nothing else happens, so on a slow machine two readings in a row may never agree: after
    ``timeout`` the latest fresh reading is taken (what the periodic loops add is reported apart,
    :func:`split_background`). Only a process that writes nothing for ``fresh_within`` seconds is an
    error.
    """
    deadline = time.monotonic() + timeout
    previous: dict[int, Any] | None = None
    while True:
        mark, waited_from = time.time(), time.monotonic()
        while True:
            files = read_counts(directory)
            if all(pid in files and files[pid]["written_at"] > mark for pid in pids):
                break
            if time.monotonic() - waited_from > fresh_within:
                stale = sorted(pid for pid in pids if pid not in files or files[pid]["written_at"] <= mark)
                raise RuntimeError(f"no fresh counts from PIDs {stale} in {fresh_within:g} s")
            await asyncio.sleep(WRITE_INTERVAL / 2)
        current = {pid: files[pid]["counts"] for pid in pids}
        if current == previous or time.monotonic() > deadline:
            return files
        previous = current


def process_name(pid: int, payload: dict[str, Any], names: dict[int, str]) -> str:
    """The launcher's name of a counting process (``qrcode-1``), else its service and PID."""
    return names.get(pid, f"{payload['service']}-pid{pid}")


def windows(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], names: dict[int, str]
) -> dict[str, float]:
    """Seconds between the two readings of each process (its own ``written_at``), by process name."""
    return {
        process_name(pid, payload, names): payload["written_at"] - before[pid]["written_at"]
        for pid, payload in after.items()
        if pid in before
    }


def split_background(
    run: Counts, idle: Counts, run_seconds: dict[str, float], idle_seconds: dict[str, float]
) -> Counts:
    """``run`` with its untagged counts split in two: what the periodic loops count at their idle rate
    over the run's window (``periodic``), and the rest (``background``: the pool refills the logins
    caused). The steps' counts do not depend on how long the run took; the periodic loops' do."""
    out: Counts = {process: dict(tags) for process, tags in run.items()}
    for process, tags in out.items():
        counted = tags.pop(BACKGROUND, Counter())
        idle_total: Counter[str] = sum(idle.get(process, {}).values(), Counter())
        span, idle_span = run_seconds.get(process, 0.0), idle_seconds.get(process, 0.0)
        # At most what was counted; Counter arithmetic keeps only the keys left above zero.
        periodic = +Counter(
            {key: min(n, round(idle_total[key] * span / idle_span)) for key, n in counted.items()}
            if idle_span > 0
            else {}
        )
        rest = counted - periodic
        if rest:
            tags[BACKGROUND] = rest
        if periodic:
            tags[PERIODIC] = periodic
    return out


def difference(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], names: dict[int, str]
) -> Counts:
    """What each process counted between two readings, by tag."""
    out: Counts = {}
    for pid, payload in after.items():
        name = process_name(pid, payload, names)
        old = before.get(pid, {}).get("counts", {})
        for tag, counts in payload["counts"].items():
            delta = Counter(counts)
            delta.subtract(old.get(tag, {}))
            delta = Counter({k: v for k, v in delta.items() if v})
            if delta:
                out.setdefault(name, {})[tag] = delta
    return out


def per_unit(counts: Counter[str], divisor: float, bus_prefix: str) -> dict[str, dict[str, float]]:
    """``{kind: {what: count / divisor}}``."""
    out: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
    for key, n in sorted(counts.items()):
        kind, what = classify(key, bus_prefix)
        out[kind][what] = round(out[kind].get(what, 0.0) + n / divisor, 3)
    return out


async def one_login(c: Cluster, openid: str) -> None:
    """A full login, each step under its own tag (the push waits are part of the phone's steps)."""
    login = Login()
    _step.set("issue")
    await issue(c.http, c.gateway, login)
    _step.set("subscribe")
    ws = await subscribe(c.http, c.gateway, login)
    try:
        _step.set(None)
        code = await wx_login_code(c.http, c.sim, openid)
        _step.set("scan")
        scanned = await phone_scan(c.http, c.gateway, login, code)
        pushed = await ws.receive_json(timeout=30)
        if pushed.get("state") != "scanned":
            raise RuntimeError(f"expected the scanned push, got {pushed}")
        _step.set("confirm")
        confirmed = asyncio.ensure_future(await_confirmed(ws, login))
        body = {"scene": login.scene, "scan_token": scanned["scan_token"]}
        async with c.http.post(f"{c.gateway}/api/mp/confirm", json=body) as resp:
            if resp.status != 200:
                confirmed.cancel()
                raise RuntimeError(f"confirm answered {resp.status}: {await resp.text()}")
        await confirmed
    finally:
        _step.set(None)
        await ws.close()
    _step.set("complete")
    await complete(c.http, c.gateway, login)
    _step.set(None)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, count an idle stretch, count ``args.logins`` logins one at a time."""
    with tempfile.TemporaryDirectory(prefix="wxlogin-hops-") as tmp:
        directory = Path(tmp)
        env = {
            "WXLOGIN_CODE_POOL_SIZE": str(POOL),
            "WXLOGIN_CODE_POOL_REFILL_BELOW": str(POOL),
            "WXLOGIN_SCENE_TTL_SECONDS": "300",
            "WXLOGIN_BENCH_COUNT_DIR": str(directory),
            "WXLOGIN_BENCH_COUNT_INTERVAL": str(WRITE_INTERVAL),
            # Only for the launched processes (the launcher puts its env over the inherited one).
            "PYTHONPATH": os.pathsep.join(filter(None, [str(INSTRUMENT), os.environ.get("PYTHONPATH")])),
        }
        async with (
            cluster(env) as plain,
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=60),
                connector=aiohttp.TCPConnector(limit=0),
                trace_configs=[tagging()],
            ) as http,
        ):
            c = Cluster(plain.launcher, http)
            await c.make_users(args.users)
            await c.wait_for_pool(POOL)
            for openid in c.users:  # each user once: the measured logins are returning users'
                await full_login(c, openid)
            names = {pid: name for name, pid in c.pids().items()}
            services = {r.pid for r in c.launcher.replicas()}
            await c.wait_for_pool(POOL)
            quiet = await settled(directory, services)
            quiet_at = time.perf_counter()
            await asyncio.sleep(IDLE_SECONDS)
            before = await settled(directory, services)
            idle_seconds = time.perf_counter() - quiet_at
            wechat_before = await c.sim_counters()
            started = time.perf_counter()
            for i in range(args.logins):
                await one_login(c, c.users[i % len(c.users)])
            await c.wait_for_pool(POOL)
            after = await settled(directory, services)
            seconds = time.perf_counter() - started
            wechat_after = await c.sim_counters()
            prefix = c.launcher.bus_prefix
    idle = difference(quiet, before, names)
    run = split_background(
        difference(before, after, names), idle, windows(before, after, names), windows(quiet, before, names)
    )
    return summarize_counts(run, idle, args.logins, seconds, idle_seconds, prefix) | {
        "users": args.users,
        "pool": POOL,
        "wechat_per_login": {
            k: round((v - wechat_before.get(k, 0)) / args.logins, 3)
            for k, v in sorted(wechat_after.items())
            if v - wechat_before.get(k, 0)
        },
    }


def summarize_counts(
    run: Counts, idle: Counts, logins: int, seconds: float, idle_seconds: float, prefix: str
) -> dict[str, Any]:
    """Per-login tables (by step and process, and per process in all) and the idle rates."""
    others = {t for tags in run.values() for t in tags} - {*STEPS, BACKGROUND, PERIODIC}
    tags = [*STEPS, *sorted(others), BACKGROUND, PERIODIC]
    detail: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    steps: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    for tag in tags:
        for process in sorted(run):
            counts = run[process].get(tag)
            if not counts:
                continue
            kinds = per_unit(counts, logins, prefix)
            detail.setdefault(process, {})[tag] = kinds
            steps.append({"step": tag, "process": process, **_sums(kinds), "rpc_calls": _calls(kinds)})
    for process in sorted(run):
        everything: Counter[str] = Counter()
        for counts in run[process].values():
            everything.update(counts)
        totals.append({"process": process, **_sums(per_unit(everything, logins, prefix))})
    totals.append({"process": "(all)", **{k: round(sum(r[k] for r in totals), 2) for k in KINDS}})
    per_step = []
    for tag in tags:
        rows = [r for r in steps if r["step"] == tag]
        if rows:
            calls = "; ".join(f"{r['process']}: {r['rpc_calls']}" for r in rows if r["rpc_calls"])
            per_step.append(
                {"step": tag, **{k: round(sum(r[k] for r in rows), 2) for k in KINDS}, "rpc_calls": calls}
            )
    per_step.append({"step": "(all)", **{k: round(sum(r[k] for r in per_step), 2) for k in KINDS}})
    idle_rates = {
        process: per_unit(sum(tags.values(), Counter()), idle_seconds, prefix)
        for process, tags in sorted(idle.items())
    }
    return {
        "logins": logins,
        "seconds": round(seconds, 2),
        "idle_seconds": round(idle_seconds, 2),
        "per_step": per_step,
        "steps": steps,
        "totals": totals,
        "detail_per_login": detail,
        "idle_per_second": {p: {k: v for k, v in kinds.items() if v} for p, kinds in idle_rates.items()},
    }


def _sums(kinds: dict[str, dict[str, float]]) -> dict[str, float]:
    return {kind: round(sum(kinds[kind].values()), 2) for kind in KINDS}


def _calls(kinds: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{what} x{n:g}" for what, n in kinds["rpc"].items())


def main(argv: list[str] | None = None) -> None:
    """Run, print the tables, write ``bench/results/hops.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__)
    parser.add_argument("--logins", type=int, default=40, help="measured logins, one at a time")
    parser.add_argument("--users", type=int, default=5, help="simulated users taking turns")
    args = parser.parse_args(argv)
    configure_logging(service="bench", fmt="console", level="WARNING")
    result = asyncio.run(measure(args))
    columns = ["mongo", "rpc", "reply", "event"]
    print(
        f"\nper login ({result['logins']} logins one at a time, returning users): mongo = MongoDB commands "
        "(round trips), rpc = RPC requests sent, reply = RPC replies sent, event = events published"
    )
    print_table(result["per_step"], ["step", *columns, "rpc_calls"])
    print("\nby step and process:")
    print_table(result["steps"], ["step", "process", *columns, "rpc_calls"])
    print("\nby process, all steps, the pool refills and the periodic loops together:")
    print_table(result["totals"], ["process", *columns])
    print("\nwhat, per login:")
    rows = [
        {"step": step, "process": process, "kind": kind, "what": what, "per_login": n}
        for process, by_step in sorted(result["detail_per_login"].items())
        for step, kinds in by_step.items()
        for kind, items in kinds.items()
        for what, n in items.items()
    ]
    rows.sort(key=lambda r: ([*STEPS, r["step"]].index(r["step"]), r["process"], KINDS.index(r["kind"])))
    print_table(rows, ["step", "process", "kind", "what", "per_login"])
    print(f"\nidle, per second ({result['idle_seconds']} s with no logins):")
    idle = [
        {"process": process, "kind": kind, "what": what, "per_s": n}
        for process, kinds in result["idle_per_second"].items()
        for kind, items in kinds.items()
        for what, n in items.items()
    ]
    print_table(idle, ["process", "kind", "what", "per_s"])
    print(f"\nWeChat calls per login: {result['wechat_per_login']}")
    print(f"wrote {write_json('hops', {'benchmark': 'hops', **result})}")


if __name__ == "__main__":
    main()
