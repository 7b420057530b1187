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

from bench.cluster import Cluster, cluster
from bench.report import print_table, summarize, write_json
from shared.logging import configure_logging

POOL = 150


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


async def issued_from_pool(c: Cluster) -> dict[str, float]:
    """Scenes issued so far by code source (``pool``/``render``), from the qrcode metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with c.http.get(f"{c.launcher.urls('qrcode')[0]}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "wxlogin_scenes_issued_total":
                out[s.labels["source"]] = s.value
    return out


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
        await warm.wait_for_pool(POOL)
        before = await issued_from_pool(warm)
        seq = await sequential(warm.http, warm.gateway, args.requests)
        mid = await issued_from_pool(warm)
        rows.append({"scenario": "warm pool, 1 client", **summarize(seq), **_sources(before, mid)})
        await warm.wait_for_pool(POOL)
        mid = await issued_from_pool(warm)
        conc = await concurrent(warm.http, warm.gateway, args.requests, clients=args.clients)
        after = await issued_from_pool(warm)
        scenario = f"warm pool, {args.clients} clients"
        rows.append({"scenario": scenario, **summarize(conc), **_sources(mid, after)})
        await warm.wait_for_pool(POOL)
        rows += await baselines(warm, args.requests)

    async with cluster({"WXLOGIN_CODE_POOL_SIZE": "0"}) as cold:
        await cold.sim_fault(args.latency_ms)
        await sequential(cold.http, cold.gateway, 3)
        before = await issued_from_pool(cold)
        seq = await sequential(cold.http, cold.gateway, args.cold_requests)
        after = await issued_from_pool(cold)
        rows.append({"scenario": "no pool, 1 client", **summarize(seq), **_sources(before, after)})
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


def _sources(before: dict[str, float], after: dict[str, float]) -> dict[str, str]:
    pool = after.get("pool", 0) - before.get("pool", 0)
    render = after.get("render", 0) - before.get("render", 0)
    total = pool + render
    return {"from_pool": f"{pool / total:.0%}" if total else "-"}


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
