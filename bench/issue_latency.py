"""How fast ``POST /api/login/qrcode`` answers when WeChat is slow: the simulator adds 200 ms to every
code render, and issuing is timed from a warm pool (sequential and concurrent) and with no pool.

    python -m bench.issue_latency [--requests 200] [--latency-ms 200] [--bus memory|amqp]

Everything runs in this one process on the machine's cores, clients included: compare rows with each
other, not with numbers from another machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from bench.harness import Stack, amqp_vhost, start_stack
from bench.report import print_table, summarize, write_json
from shared.logging import configure_logging
from shared.mongo import EmbeddedMongo

POOL = 250
LIMITS_OFF = {
    "limit_issue_per_ip_per_minute": 0,
    "limit_mp_per_ip_per_minute": 0,
    "limit_ws_per_ip_per_minute": 0,
    "limit_poll_per_ip_per_minute": 0,
    "limit_issue_global_per_minute": 4285,
}


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


async def ready_codes(stack: Stack) -> int:
    """Ready codes in the pool, read from Mongo."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.settings.mongo_url)
    try:
        pool = client[stack.settings.mongo_db]["scene_pool"]
        return int(await pool.count_documents({"kind": "code", "state": "ready"}))
    finally:
        await client.close()


async def wait_for_pool(stack: Stack, size: int, timeout: float = 120.0) -> float:
    """Wait until the pool holds ``size`` codes; returns how long that took."""
    started = time.monotonic()
    while await ready_codes(stack) < size:
        if time.monotonic() - started > timeout:
            raise RuntimeError("the pool did not fill in time")
        await asyncio.sleep(0.25)
    return time.monotonic() - started


async def issued_from_pool(http: aiohttp.ClientSession, stack: Stack) -> dict[str, float]:
    """Scenes issued so far by code source (``pool``/``render``), from the qrcode metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(f"{stack.urls['qrcode']}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "wxlogin_scenes_issued_total":
                out[s.labels["source"]] = s.value
    return out


async def measure(
    mongo: EmbeddedMongo, bus_url: str, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], str]:
    """The three scenarios; returns the table rows and how the latency fault was applied."""
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        warm = await start_stack(
            mongo,
            amqp_url=bus_url,
            latency_ms=args.latency_ms,
            code_pool_size=POOL,
            code_pool_refill_below=POOL,
            code_pool_refill_concurrency=8,
            **LIMITS_OFF,
        )
        fault_mode = warm.sim.fault_mode
        try:
            fill_s = await wait_for_pool(warm, POOL)
            print(f"pool of {POOL} filled in {fill_s:.1f} s ({args.latency_ms:g} ms per render)", flush=True)
            await sequential(http, warm.gateway, 10)  # warm-up: connections, caches
            await wait_for_pool(warm, POOL)
            before = await issued_from_pool(http, warm)
            seq = await sequential(http, warm.gateway, args.requests)
            mid = await issued_from_pool(http, warm)
            rows.append({"scenario": "warm pool, 1 client", **summarize(seq), **_sources(before, mid)})
            await wait_for_pool(warm, POOL)
            conc = await concurrent(http, warm.gateway, args.requests, clients=args.clients)
            after = await issued_from_pool(http, warm)
            scenario = f"warm pool, {args.clients} clients"
            rows.append({"scenario": scenario, **summarize(conc), **_sources(mid, after)})
        finally:
            await warm.stop()

        cold = await start_stack(
            mongo, amqp_url=bus_url, latency_ms=args.latency_ms, code_pool_size=0, **LIMITS_OFF
        )
        try:
            await sequential(http, cold.gateway, 3)
            before = await issued_from_pool(http, cold)
            seq = await sequential(http, cold.gateway, args.cold_requests)
            after = await issued_from_pool(http, cold)
            rows.append({"scenario": "no pool, 1 client", **summarize(seq), **_sources(before, after)})
        finally:
            await cold.stop()
    return rows, fault_mode


async def run(args: argparse.Namespace, bus_url: str) -> dict[str, Any]:
    """Measure, print the table, return the JSON payload."""
    with EmbeddedMongo() as mongo:
        rows, fault_mode = await measure(mongo, bus_url, args)
    columns = ["scenario", "n", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "from_pool"]
    print(
        f"\nPOST /api/login/qrcode, {args.latency_ms:g} ms added to every code render "
        f"(latency fault: {fault_mode}), bus={args.bus}"
    )
    print_table(rows, columns)
    return {
        "benchmark": "issue_latency",
        "render_latency_ms": args.latency_ms,
        "latency_fault": fault_mode,
        "bus": args.bus,
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
    parser.add_argument("--bus", choices=["memory", "amqp"], default="memory")
    args = parser.parse_args(argv)
    configure_logging(service="bench", fmt="console", level="WARNING")
    if args.bus == "amqp":
        with amqp_vhost() as url:
            result = asyncio.run(run(args, url))
    else:
        result = asyncio.run(run(args, "memory://"))
    path = write_json("issue_latency" if args.bus == "memory" else f"issue_latency_{args.bus}", result)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
