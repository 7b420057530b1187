"""How fast ``POST /api/login/qrcode`` answers when WeChat is slow: the simulator adds 200 ms to every
code render, and issuing is timed from a warm pool (sequential and concurrent) and with no pool.

    python -m bench.issue_latency [--requests 200] [--latency-ms 200]

Every service runs as its own process over RabbitMQ (``bench.cluster``); the clients run here.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp

from bench.cluster import Cluster, cluster, from_pool_share
from bench.report import print_table, summarize, write_json
from shared.logging import configure_logging

# A pool twice the default size (20), topped up after every claim; issues come in bursts of BURST
# from a full pool, as a login page's visitors do, so every one is served from the pool.
POOL = 40
BURST = 32


async def issue_once(http: aiohttp.ClientSession, gateway: str) -> float:
    """Seconds one ``POST /api/login/qrcode`` took (it must answer 201)."""
    started = time.perf_counter()
    async with http.post(f"{gateway}/api/login/qrcode") as resp:
        await resp.read()
        if resp.status != 201:
            raise RuntimeError(f"issue answered {resp.status}")
    return time.perf_counter() - started


async def sequential(http: aiohttp.ClientSession, gateway: str, n: int) -> list[float]:
    """``n`` issues one after the other."""
    return [await issue_once(http, gateway) for _ in range(n)]


async def concurrent(http: aiohttp.ClientSession, gateway: str, n: int, clients: int) -> list[float]:
    """``n`` issues by ``clients`` clients at once, each issuing one after the other."""
    per_client = max(1, n // clients)

    async def client() -> list[float]:
        return [await issue_once(http, gateway) for _ in range(per_client)]

    batches = await asyncio.gather(*(client() for _ in range(clients)))
    return [x for batch in batches for x in batch]


async def timed_get(http: aiohttp.ClientSession, url: str, n: int, **kwargs: Any) -> list[float]:
    """``n`` sequential GETs of ``url``; seconds each."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with http.get(url, **kwargs) as resp:
            await resp.read()
        out.append(time.perf_counter() - started)
    return out


async def baselines(c: Cluster, n: int) -> list[dict[str, Any]]:
    """What the issue path is made of, timed the same way: an HTTP round trip to the gateway alone
    (``/healthz``), and HTTP + one RPC + one Mongo read (a status poll of an issued scene)."""
    async with c.http.post(f"{c.gateway}/api/login/qrcode") as resp:
        issued = await resp.json()
    status = f"{c.gateway}/api/login/status?scene={issued['scene']}"
    headers = {"X-Login-Ticket": issued["ticket"]}
    return [
        {
            "scenario": "(gateway /healthz: HTTP only)",
            **summarize(await timed_get(c.http, f"{c.gateway}/healthz", n)),
        },
        {
            "scenario": "(status poll: HTTP + RPC + 1 Mongo read)",
            **summarize(await timed_get(c.http, status, n, headers=headers)),
        },
    ]


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The three scenarios, each stack launched afresh; returns the table rows."""
    rows: list[dict[str, Any]] = []
    warm_env = {
        "WXLOGIN_CODE_POOL_SIZE": str(POOL),
        "WXLOGIN_CODE_POOL_REFILL_BELOW": str(POOL),
        "WXLOGIN_CODE_POOL_REFILL_CONCURRENCY": "8",
    }
    async with cluster(warm_env) as warm:
        await warm.sim_fault(args.latency_ms)
        fill_s = await warm.wait_for_pool(POOL)
        print(f"pool of {POOL} ready after {fill_s:.1f} s more", flush=True)
        await sequential(warm.http, warm.gateway, 10)  # warm-up: connections, caches
        before = await warm.issued_by_source()
        seq: list[float] = []
        while len(seq) < args.requests:  # in bursts of BURST, each from a full pool
            await warm.wait_for_pool(POOL)
            seq += await sequential(warm.http, warm.gateway, min(BURST, args.requests - len(seq)))
        mid = await warm.issued_by_source()
        rows.append(
            {"scenario": "warm pool, 1 client", **summarize(seq), "from_pool": from_pool_share(before, mid)}
        )
        conc: list[float] = []
        while len(conc) < args.requests:
            await warm.wait_for_pool(POOL)
            conc += await concurrent(warm.http, warm.gateway, BURST, clients=args.clients)
        after = await warm.issued_by_source()
        scenario = f"warm pool, {args.clients} clients"
        rows.append({"scenario": scenario, **summarize(conc), "from_pool": from_pool_share(mid, after)})
        await warm.wait_for_pool(POOL)
        rows += await baselines(warm, args.requests)

    async with cluster({"WXLOGIN_CODE_POOL_SIZE": "0"}) as cold:
        await cold.sim_fault(args.latency_ms)
        await sequential(cold.http, cold.gateway, 3)
        before = await cold.issued_by_source()
        seq = await sequential(cold.http, cold.gateway, args.cold_requests)
        after = await cold.issued_by_source()
        rows.append(
            {"scenario": "no pool, 1 client", **summarize(seq), "from_pool": from_pool_share(before, after)}
        )
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure, print the table, return the JSON payload."""
    rows = await measure(args)
    columns = ["scenario", "n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "from_pool"]
    print(
        f"\nPOST /api/login/qrcode, {args.latency_ms:g} ms added to every code render (POST /sim/faults), "
        "every service its own process over RabbitMQ"
    )
    print_table(rows, columns)
    return {
        "benchmark": "issue_latency",
        "render_latency_ms": args.latency_ms,
        "latency_fault": "sim-api",
        "bus": "amqp",
        "pool_size": POOL,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print its table, write ``bench/results/issue_latency.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.issue_latency", description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cold-requests", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args(argv)
    configure_logging(service="bench", fmt="console", level="WARNING")
    result = asyncio.run(run(args))
    print(f"wrote {write_json('issue_latency', result)}")


if __name__ == "__main__":
    main()
