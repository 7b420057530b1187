"""Full-login throughput: logins per second (issue + subscribe + scan + confirm + complete) at
increasing concurrency, the latency of one whole login, and where the CPU goes; then the same with
several replicas of each service, and a sustained run at a fixed arrival rate.

Each step starts at a fresh 10 s window of the global issue limit (set to 1000 issues per window here:
6000/min, above WeChat's 5000 codes/min, which the render budget keeps at 4285/min) with a full code
pool, so the step measures the services rather than the quota. The CPU seconds of every process during a step
give CPU per login; gateway, qrcode and session are then sampled with py-spy (``pip install -e '.[bench]'``)
during one more run at the best concurrency.

Scaling (``--replicas N``, 2 by default, 0 for none): a second launch with N gateways, N qrcode and N
session replicas on the same machine, at the best concurrency and the next level above it, next to
the one-replica row of the same concurrency. Worker ``w`` sends the browser's steps to gateway
``w % N`` and the phone's to gateway ``(w + 1) % N``, so every push crosses gateways.

Sustained (``--rate R --duration S``; ``--rate 0`` for none): a third launch where logins start at R
per second for S seconds whatever the stack answers (open loop: each login its own task, at most
``--max-in-flight`` at once, later ones wait for a slot and the wait counts in their latency). The
pool is sized so that it and the render budget cover every login, and is full at the start. The
render budget (4285/min at most, under WeChat's getwxacodeunlimit quota of 5000/min) refills about
71 codes/s; a faster run draws the rest from the pool, so 83/s (WeChat's ceiling) for 60 s needs a
pool of about 1,000. The global issue limit is 100/s here.

    python -m bench.throughput [--levels 1,4,16,32,64] [--logins 400] [--replicas 2]
                               [--rate 83 --duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.cluster import LIMITS_OFF, Cluster, Login, cluster, from_pool_share, full_login, machine_cpu
from bench.profile import record, summarize_raw
from bench.report import print_table, summarize, write_json
from services.launch import SERVICES as SERVICE_NAMES
from services.qrcode.limits import WINDOW_SECONDS as ISSUE_WINDOW_S
from shared.logging import configure_logging

POOL = 100
POOL_MAX = 10_000  # the most WXLOGIN_CODE_POOL_SIZE allows


def _window_capacity(setting: str) -> int:
    """Uses one 10 s window of a per-minute limit the cluster is launched with allows (as qrcode counts)."""
    return math.floor(int(LIMITS_OFF[setting]) * ISSUE_WINDOW_S / 60.0)


ISSUE_WINDOW_CAPACITY = _window_capacity("WXLOGIN_LIMIT_ISSUE_GLOBAL_PER_MINUTE")  # 1000 (6000/min)
# Shared by refills and on-demand renders: 714 (4285/min).
RENDER_WINDOW_CAPACITY = _window_capacity("WXLOGIN_CODE_RENDERS_PER_MINUTE")
ISSUE_LIMIT_PER_S = ISSUE_WINDOW_CAPACITY / ISSUE_WINDOW_S
RENDER_BUDGET_PER_S = RENDER_WINDOW_CAPACITY / ISSUE_WINDOW_S
WECHAT_CODES_PER_S = 5000 / 60
SUSTAINED_BUFFER_S = 3.0  # pool headroom: this many seconds of arrivals, beyond what renders refill
SERVICES = ("gateway-1", "qrcode-1", "session-1", "token-1")
CPU_COLUMNS = ("gateway", "qrcode", "session", "token", "nx-27017", "wechat-sim", "bench-client", "rabbitmq*")


def pool_env(pool: int) -> dict[str, str]:
    """Settings of a launch whose pool holds ``pool`` codes, refilled as soon as one is taken."""
    return {
        "WXLOGIN_CODE_POOL_SIZE": str(pool),
        "WXLOGIN_CODE_POOL_REFILL_BELOW": str(pool),
        "WXLOGIN_CODE_POOL_REFILL_CONCURRENCY": "8",
        "WXLOGIN_SCENE_TTL_SECONDS": "300",
    }


async def next_window() -> None:
    """Sleep until a new 10 s window of the shared issue limit begins (plus a little)."""
    now = time.time()
    await asyncio.sleep(math.ceil(now / ISSUE_WINDOW_S) * ISSUE_WINDOW_S - now + 0.05)


class CpuWindow:
    """CPU seconds of every process, and the machine's busy share, from now until :meth:`end`."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.before = c.cpu()
        self.machine = machine_cpu()

    def end(self) -> tuple[dict[str, float], float]:
        """``(CPU seconds per process, machine busy share)`` since the start."""
        after, machine = self.c.cpu(), machine_cpu()
        cpu = {k: after[k] - self.before.get(k, 0.0) for k in after}
        busy, total = (a - b for a, b in zip(machine, self.machine, strict=True))
        return cpu, busy / max(total, 1e-9)


async def step(c: Cluster, logins: int, concurrency: int) -> tuple[list[Login], float, dict[str, float]]:
    """``logins`` full logins by ``concurrency`` workers; the logins, wall seconds, CPU s per process.

    With several gateways, worker ``w`` uses gateway ``w % N`` for the browser and the next one for
    the phone.
    """
    done: list[Login] = []
    counter = iter(range(logins))
    gateways = c.launcher.urls("gateway")

    async def worker(w: int) -> None:
        browser, phone = gateways[w % len(gateways)], gateways[(w + 1) % len(gateways)]
        for i in counter:
            openid = c.users[(w + i) % len(c.users)]
            done.append(await full_login(c, openid, gateway=browser, phone_gateway=phone))

    window = CpuWindow(c)
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - started
    cpu, busy = window.end()
    cpu["(machine busy share)"] = busy
    return done, wall, cpu


def by_service(cpu: dict[str, float]) -> dict[str, float]:
    """Per-process values summed over the replicas of each service (``gateway-1`` + ``gateway-2``)."""
    out: dict[str, float] = {}
    for name, value in cpu.items():
        base, _, index = name.rpartition("-")
        key = base if index.isdigit() and base in SERVICE_NAMES else name
        out[key] = out.get(key, 0.0) + value
    return out


async def level_row(c: Cluster, level: int, n: int) -> dict[str, Any]:
    """One step of ``n`` logins at concurrency ``level`` from a full pool and a fresh issue window."""
    await c.wait_for_pool(POOL)
    await next_window()
    before = await c.issued_by_source()
    logins, wall, cpu = await step(c, n, level)
    after = await c.issued_by_source()
    stats = summarize([x.completed - x.started for x in logins])
    row: dict[str, Any] = {
        "concurrency": level,
        "logins": len(logins),
        "logins_per_s": round(len(logins) / wall, 1),
        "p50_ms": stats["p50_ms"],
        "p90_ms": stats["p90_ms"],
        "p99_ms": stats["p99_ms"],
        "from_pool": from_pool_share(before, after),
    }
    row["machine_busy_share"] = round(cpu.pop("(machine busy share)"), 2)
    ours = sum(v for k, v in cpu.items() if k != "rabbitmq*")
    row["stack_busy_share"] = round(ours / wall / _cpus(), 2)
    row["cpu_ms_per_login"] = {k: round(v * 1000 / len(logins), 2) for k, v in sorted(cpu.items())}
    return row


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every level, one profiled run at the best level, then the scaling and sustained runs."""
    per_step = min(args.logins, ISSUE_WINDOW_CAPACITY - 20)
    rows: list[dict[str, Any]] = []
    async with cluster(pool_env(POOL)) as c:
        await c.make_users(100)
        await c.wait_for_pool(POOL)
        await step(c, min(20, per_step), 4)  # warm-up
        for level in args.levels:
            row = await level_row(c, level, per_step if level > 1 else min(per_step, 60))
            rows.append(row)
            print(
                f"  concurrency {level:>3}: {row['logins_per_s']:>6}/s  p50 {row['p50_ms']} ms  "
                f"p99 {row['p99_ms']} ms",
                flush=True,
            )
        best = max(rows, key=lambda r: r["logins_per_s"])
        profile: list[dict[str, Any]] = []
        if not args.no_profile:
            profile = await profiled_run(c, best, per_step)
    result: dict[str, Any] = {
        "levels": args.levels,
        "rows": rows,
        "best": {k: best[k] for k in ("concurrency", "logins_per_s", "p50_ms", "p99_ms")},
        "profile": profile,
    }
    if args.replicas > 0:
        result["scaling"] = await scaling(args.replicas, rows, best, per_step)
    if args.rate > 0:
        result["sustained"] = await sustained(args.rate, args.duration, args.max_in_flight, args.pool)
    return result


async def profiled_run(c: Cluster, best: dict[str, Any], per_step: int) -> list[dict[str, Any]]:
    """Sample, during one more run at the best concurrency, each service that does work in a login
    (gateway, qrcode, session, busiest first) and the database server (nx-27017 is Python too), each
    with its own py-spy."""
    cpu = best["cpu_ms_per_login"]
    working = sorted((name for name in SERVICES if name != "token-1"), key=lambda name: -cpu.get(name, 0.0))
    targets = [*working, "nx-27017"]
    pids = c.pids()
    await c.wait_for_pool(POOL)
    await next_window()
    with tempfile.TemporaryDirectory() as tmp:
        load = asyncio.ensure_future(step(c, per_step, best["concurrency"]))
        await asyncio.sleep(0.3)
        recorded = await asyncio.gather(
            *(record(pids[name], 2.0, Path(tmp) / f"{name}.txt") for name in targets if name in pids)
        )
        await load
        out = []
        for name, path in zip(targets, recorded, strict=False):
            summary = summarize_raw(path) if path else {"error": "py-spy is not installed"}
            out.append({"process": name, "concurrency": best["concurrency"], **summary})
    return out


async def scaling(
    replicas: int, rows: list[dict[str, Any]], best: dict[str, Any], per_step: int
) -> dict[str, Any]:
    """``replicas`` gateways, qrcode and session replicas at the best concurrency and the next level
    above it, each beside the one-replica row of the same concurrency."""
    levels = [r["concurrency"] for r in rows]
    chosen = [best["concurrency"]]
    above = sorted(level for level in levels if level > best["concurrency"])
    if above:
        chosen.append(above[0])
    counts = {"gateway": replicas, "qrcode": replicas, "session": replicas}
    out: list[dict[str, Any]] = []
    async with cluster(pool_env(POOL), counts=counts) as c:
        await c.make_users(100)
        await c.wait_for_pool(POOL)
        await step(c, min(20, per_step), 4)  # warm-up
        for level in chosen:
            single = next(r for r in rows if r["concurrency"] == level)
            row = await level_row(c, level, per_step if level > 1 else min(per_step, 60))
            row["replicas"] = replicas
            row["vs_1_replica"] = round(row["logins_per_s"] / max(single["logins_per_s"], 1e-9), 2)
            row["cpu_ms_per_login_by_service"] = _rounded(by_service(row["cpu_ms_per_login"]))
            one = {
                **single,
                "replicas": 1,
                "vs_1_replica": 1.0,
                "cpu_ms_per_login_by_service": _rounded(by_service(single["cpu_ms_per_login"])),
            }
            out += [one, row]
            print(
                f"  {replicas} replicas, concurrency {level:>3}: {row['logins_per_s']:>6}/s "
                f"({row['vs_1_replica']}x one replica)  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms",
                flush=True,
            )
    return {"replicas": replicas, "services": sorted(counts), "rows": out}


def sustained_pool(rate: float, duration: float) -> int:
    """A pool that, with what the render budget refills during the run, covers every login, plus a
    few seconds of arrivals of headroom (a bigger pool costs nx-27017: each refill round counts the
    ready codes with a scan)."""
    logins = math.ceil(rate * duration)
    refilled = math.floor(RENDER_WINDOW_CAPACITY * duration / ISSUE_WINDOW_S)
    return max(POOL, min(POOL_MAX, logins - refilled + math.ceil(rate * SUSTAINED_BUFFER_S)))


async def sustained(rate: float, duration: float, max_in_flight: int, pool: int | None) -> dict[str, Any]:
    """Logins started at ``rate`` per second for ``duration`` seconds, open loop, on a fresh launch."""
    pool = pool or sustained_pool(rate, duration)
    if rate > ISSUE_LIMIT_PER_S:
        print(
            f"  note: {rate:g}/s is above the global issue limit ({ISSUE_LIMIT_PER_S:.1f}/s): "
            "expect refused issues (429)",
            flush=True,
        )
    async with cluster(pool_env(pool)) as c:
        await c.make_users(100)
        await c.wait_for_pool(POOL)
        await step(c, len(c.users), 8)  # warm-up: every user logs in once, the run has returning users
        await c.wait_for_pool(pool, timeout=max(180.0, pool / RENDER_BUDGET_PER_S + 60))
        await next_window()
        before = await c.issued_by_source()
        slots = asyncio.Semaphore(max_in_flight)
        failures: Counter[str] = Counter()
        done: list[tuple[float, Login]] = []  # (arrival, login)
        waited: list[float] = []

        async def one(i: int, arrival: float) -> None:
            async with slots:
                waited.append(time.perf_counter() - arrival)
                try:
                    login = await full_login(c, c.users[i % len(c.users)])
                except Exception as exc:  # a refused or failed login is counted, not fatal
                    failures[_reason(exc)] += 1
                    return
                done.append((arrival, login))

        window = CpuWindow(c)
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        while (arrival := t0 + len(tasks) / rate) < t0 + duration:
            await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(len(tasks), arrival)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        cpu, busy = window.end()
        after = await c.issued_by_source()
    completed = len(done)
    whole = summarize([login.completed - arrival for arrival, login in done]) if done else {}
    in_flight = summarize([login.completed - login.started for _, login in done]) if done else {}
    in_window = sum(1 for _, login in done if login.completed - t0 <= duration)
    ours = sum(v for k, v in cpu.items() if k != "rabbitmq*")
    return {
        "rate_per_s": rate,
        "duration_s": duration,
        "max_in_flight": max_in_flight,
        "pool": pool,
        "started": len(tasks),
        "completed": completed,
        "failed": sum(failures.values()),
        "failures": dict(failures.most_common()),
        "wall_s": round(wall, 1),
        "logins_per_s": round(completed / wall, 1),
        "in_window_per_s": round(in_window / duration, 1),
        "p50_ms": whole.get("p50_ms", ""),
        "p90_ms": whole.get("p90_ms", ""),
        "p99_ms": whole.get("p99_ms", ""),
        "max_ms": whole.get("max_ms", ""),
        "p99_in_flight_ms": in_flight.get("p99_ms", ""),
        "max_slot_wait_ms": round(max(waited, default=0.0) * 1000, 1),
        "from_pool": from_pool_share(before, after),
        "machine_busy_share": round(busy, 2),
        "stack_busy_share": round(ours / wall / _cpus(), 2),
        "cpu_ms_per_login": {k: round(v * 1000 / max(completed, 1), 2) for k, v in sorted(cpu.items())},
        "issue_limit_per_s": round(ISSUE_LIMIT_PER_S, 1),
        "render_budget_per_s": round(RENDER_BUDGET_PER_S, 1),
        "wechat_codes_per_s": round(WECHAT_CODES_PER_S, 1),
    }


def _reason(exc: BaseException) -> str:
    """A short, groupable reason: the step and status of a refused request, else the error's type."""
    text = str(exc)
    if " answered " in text:
        return text.split(":", 1)[0][:80]
    return type(exc).__name__


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in sorted(values.items())}


def _cpus() -> int:
    return os.cpu_count() or 1


def _column(process: str) -> str:
    """The table column of a process's CPU: ``cpu_gateway``, ``cpu_nx``, ``cpu_client``."""
    return "cpu_client" if process == "bench-client" else f"cpu_{process.split('-')[0]}"


def _cpu_columns(cpu: dict[str, float]) -> dict[str, Any]:
    """CPU ms per login by column, summed over the replicas of each service."""
    summed = _rounded(by_service(cpu))
    return {_column(k): summed.get(k, "") for k in CPU_COLUMNS}


def main(argv: list[str] | None = None) -> None:
    """Run, print the tables and the profile, write ``bench/results/throughput.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 32, 64])
    parser.add_argument(
        "--logins", type=int, default=400, help=f"logins per level (at most {ISSUE_WINDOW_CAPACITY - 20})"
    )
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--replicas", type=int, default=2, help="replicas of gateway, qrcode, session (0: off)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=83.0,
        help="sustained logins started per second (0: off; 83 is WeChat's max)",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the sustained run")
    parser.add_argument("--max-in-flight", type=int, default=256, help="sustained logins running at once")
    parser.add_argument("--pool", type=int, help="code pool of the sustained run (default: computed)")
    args = parser.parse_args(argv)
    configure_logging(service="bench", fmt="console", level="WARNING")
    result = asyncio.run(measure(args))
    table = []
    for row in result["rows"]:
        cpu = row["cpu_ms_per_login"]
        table.append(
            {
                **{k: v for k, v in row.items() if k != "cpu_ms_per_login"},
                **{f"cpu_{k.split('-')[0]}": cpu.get(k, "") for k in (*SERVICES, "nx-27017", "wechat-sim")},
                "cpu_client": cpu.get("bench-client", ""),
                "cpu_rabbitmq*": cpu.get("rabbitmq*", ""),
            }
        )
    print(
        "\nfull logins (issue + subscribe + scan + confirm + complete); cpu_* = CPU ms per login "
        "(rabbitmq* is the shared broker: other users' load included); machine_busy_share counts every "
        "process on the machine"
    )
    columns = ["concurrency", "logins", "logins_per_s", "p50_ms", "p90_ms", "p99_ms", "from_pool"]
    columns += ["machine_busy_share", "stack_busy_share"]
    columns += [f"cpu_{k.split('-')[0]}" for k in (*SERVICES, "nx-27017", "wechat-sim")]
    columns += ["cpu_client", "cpu_rabbitmq*"]
    print_table(table, columns)
    for profile in result["profile"]:
        if not profile.get("top_self"):
            continue
        print(f"\nprofile of {profile['process']} at concurrency {profile['concurrency']} (py-spy):")
        print_table(profile["top_self"], ["function", "share_of_busy"])
        libs = [{"library": k, "share_of_busy": v} for k, v in profile["by_library_inclusive"].items()]
        print_table(libs, ["library", "share_of_busy"])
    if "scaling" in result:
        scaled = result["scaling"]
        print(
            f"\n{scaled['replicas']} replicas each of {', '.join(scaled['services'])} against one, same "
            "machine; cpu_* = CPU ms per login summed over a service's replicas; the browser and the "
            "phone of a login use different gateways"
        )
        rows = [{**r, **_cpu_columns(r["cpu_ms_per_login"])} for r in scaled["rows"]]
        columns = ["concurrency", "replicas", "logins", "logins_per_s", "vs_1_replica", "p50_ms", "p99_ms"]
        columns += ["from_pool", "machine_busy_share"]
        columns += [_column(k) for k in CPU_COLUMNS]
        print_table(rows, columns)
    if "sustained" in result:
        s = result["sustained"]
        print(
            f"\nsustained: logins started at {s['rate_per_s']:g}/s for {s['duration_s']:g} s (open loop, at "
            f"most {s['max_in_flight']} at once; latency from the scheduled start, slot wait included); "
            f"pool {s['pool']}. The global issue limit is {s['issue_limit_per_s']}/s here; the render "
            f"budget refills {s['render_budget_per_s']}/s (4285/min) and the pool covers the "
            f"rest; WeChat's code quota is {s['wechat_codes_per_s']}/s (5000/min)."
        )
        columns = ["rate_per_s", "started", "completed", "failed", "logins_per_s", "in_window_per_s"]
        columns += ["p50_ms", "p90_ms", "p99_ms", "p99_in_flight_ms", "from_pool", "machine_busy_share"]
        print_table([s], columns)
        print_table([_cpu_columns(s["cpu_ms_per_login"])], [_column(k) for k in CPU_COLUMNS])
        if s["failures"]:
            print(f"failures: {s['failures']}")
    print(f"wrote {write_json('throughput', {'benchmark': 'throughput', **result})}")


if __name__ == "__main__":
    main()
