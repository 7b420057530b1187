"""Full-login throughput: logins per second (issue + subscribe + scan + confirm + complete) at
increasing concurrency, the latency of one whole login, and where the CPU goes.

Each step starts at a fresh 10 s window of the global issue limit (which, at its highest setting,
allows 714 issues per window: 4285/min, kept under WeChat's 5000 codes/min) with a full code pool, so
the step measures the services rather than the quota. The CPU seconds of every process during a step
give CPU per login; the busiest service is then sampled with py-spy (``pip install -e '.[bench]'``)
during one more run at the best concurrency.

    python -m bench.throughput [--levels 1,4,16,32,64] [--logins 400]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cluster import Cluster, Login, cluster, from_pool_share, full_login, machine_cpu
from bench.profile import record, summarize_raw
from bench.report import print_table, summarize, write_json
from shared.logging import configure_logging

POOL = 100
ISSUE_WINDOW_S = 10.0
ISSUE_WINDOW_CAPACITY = 714  # 4285 per minute / 6
SERVICES = ("gateway-1", "qrcode-1", "session-1", "token-1")


async def next_window() -> None:
    """Sleep until a new 10 s window of the shared issue limit begins (plus a little)."""
    now = time.time()
    await asyncio.sleep(math.ceil(now / ISSUE_WINDOW_S) * ISSUE_WINDOW_S - now + 0.05)


async def step(c: Cluster, logins: int, concurrency: int) -> tuple[list[Login], float, dict[str, float]]:
    """``logins`` full logins by ``concurrency`` workers; the logins, wall seconds, CPU s per process."""
    done: list[Login] = []
    counter = iter(range(logins))

    async def worker(w: int) -> None:
        for i in counter:
            done.append(await full_login(c, c.users[(w + i) % len(c.users)]))

    cpu_before, machine_before = c.cpu(), machine_cpu()
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - started
    cpu_after, machine_after = c.cpu(), machine_cpu()
    cpu = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
    busy, total = (after - before for after, before in zip(machine_after, machine_before, strict=True))
    cpu["(machine busy share)"] = busy / max(total, 1e-9)
    return done, wall, cpu


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every level, then one profiled run at the best level."""
    env = {
        "WXLOGIN_CODE_POOL_SIZE": str(POOL),
        "WXLOGIN_CODE_POOL_REFILL_BELOW": str(POOL),
        "WXLOGIN_CODE_POOL_REFILL_CONCURRENCY": "8",
        "WXLOGIN_SCENE_TTL_SECONDS": "300",
    }
    per_step = min(args.logins, ISSUE_WINDOW_CAPACITY - 20)
    rows: list[dict[str, Any]] = []
    async with cluster(env) as c:
        await c.make_users(100)
        await c.wait_for_pool(POOL)
        await step(c, min(20, per_step), 4)  # warm-up
        for level in args.levels:
            n = per_step if level > 1 else min(per_step, 60)
            await c.wait_for_pool(POOL)
            await next_window()
            before = await c.issued_by_source()
            logins, wall, cpu = await step(c, n, level)
            after = await c.issued_by_source()
            total = [x.completed - x.started for x in logins]
            stats = summarize(total)
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
    return {
        "levels": args.levels,
        "rows": rows,
        "best": {k: best[k] for k in ("concurrency", "logins_per_s", "p50_ms", "p99_ms")},
        "profile": profile,
    }


async def profiled_run(c: Cluster, best: dict[str, Any], per_step: int) -> list[dict[str, Any]]:
    """Sample, during one more run at the best concurrency, the service that used the most CPU per
    login and the database server (nx-27017 is Python too), each with its own py-spy."""
    cpu = best["cpu_ms_per_login"]
    busiest = max(SERVICES, key=lambda name: cpu.get(name, 0.0))
    targets = [busiest, "nx-27017"]
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


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> None:
    """Run, print the table and the profile, write ``bench/results/throughput.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 32, 64])
    parser.add_argument("--logins", type=int, default=400, help="logins per level (at most 694)")
    parser.add_argument("--no-profile", action="store_true")
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
    print(f"wrote {write_json('throughput', {'benchmark': 'throughput', **result})}")


if __name__ == "__main__":
    main()
