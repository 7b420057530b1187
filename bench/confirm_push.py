"""Confirm → push latency, and what WeChat is asked per login.

Each login is a browser (issue, WebSocket subscribe, complete) and a phone (a wx.login code sent with
the scan, as the mini-program page does, then the confirm). The latency is from the moment the
phone's ``POST /api/mp/confirm`` leaves to the moment the browser's WebSocket reads ``confirmed``.
The same logins are also watched by a 1 s poller (``GET /api/login/status`` once a second, what the
seed design did), started at a random phase, for the ratio. The simulator's call counters before and
after give WeChat calls per 1,000 logins. A smaller run after it sends the code with the confirm
instead (the confirm then waits on jscode2session), for comparison.

    python -m bench.confirm_push [--logins 2000] [--concurrency 1] [--code-at-confirm 300]

Every service runs as its own process (RabbitMQ, nx-27017, simulator); the clients run here.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

from bench.cluster import Cluster, Login, LoginError, cluster, full_login
from bench.report import print_table, summarize, write_json
from shared.logging import configure_logging

POOL = 40
POLL_INTERVAL = 1.0


async def poller(c: Cluster, login: Login, ready: asyncio.Event) -> None:
    """Poll the status endpoint once a second (random first phase) until it says ``confirmed``."""
    await ready.wait()
    await asyncio.sleep(random.uniform(0, POLL_INTERVAL))
    headers = {"X-Login-Ticket": login.ticket}
    url = f"{c.gateway}/api/login/status?scene={login.scene}"
    next_at = time.perf_counter()
    while True:
        async with c.http.get(url, headers=headers) as resp:
            await resp.read()
            seen = time.perf_counter()
            if resp.status == 200:
                login.polled = seen
                return
            if resp.status != 202:
                raise LoginError(f"status answered {resp.status}")
        next_at += POLL_INTERVAL
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def one(
    c: Cluster, openid: str, pollers: list[asyncio.Task[None]], *, code_with_scan: bool = True
) -> Login:
    """A full login with its poller running beside it (from the moment the scene exists)."""
    login = Login()
    issued = asyncio.Event()
    pollers.append(asyncio.ensure_future(poller(c, login, issued)))
    try:
        return await full_login(c, openid, login, issued, code_with_scan=code_with_scan)
    finally:
        issued.set()


async def run_logins(
    c: Cluster, n: int, concurrency: int, *, code_with_scan: bool = True
) -> tuple[list[Login], float]:
    """``n`` logins by ``concurrency`` workers; returns them and the wall time."""
    pollers: list[asyncio.Task[None]] = []
    done: list[Login] = []
    counter = iter(range(n))

    async def worker(w: int) -> None:
        for i in counter:
            openid = c.users[(w + i) % len(c.users)]
            done.append(await one(c, openid, pollers, code_with_scan=code_with_scan))

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - started
        await asyncio.wait_for(asyncio.gather(*pollers), timeout=30)
    finally:
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
    return done, wall


def per_thousand(before: dict[str, int], after: dict[str, int], logins: int) -> list[dict[str, Any]]:
    """WeChat calls per endpoint during the run, per 1,000 logins."""
    rows = []
    for endpoint in sorted(set(before) | set(after)):
        calls = after.get(endpoint, 0) - before.get(endpoint, 0)
        rows.append(
            {
                "endpoint": endpoint,
                "calls": calls,
                "per_1000_logins": round(calls * 1000 / logins, 1),
                "total_since_start": after.get(endpoint, 0),
            }
        )
    return rows


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Launch, warm up, run the logins, read the counters."""
    env = {
        "WXLOGIN_CODE_POOL_SIZE": str(POOL),
        "WXLOGIN_CODE_POOL_REFILL_BELOW": str(POOL),
        "WXLOGIN_CODE_POOL_REFILL_CONCURRENCY": "8",
    }
    async with cluster(env) as c:
        await c.make_users(50)
        await c.wait_for_pool(POOL)
        await run_logins(c, min(20, args.logins), args.concurrency)  # warm-up: connections, caches
        # A full pool before and after (it tops up after every claim): renders = codes the run took.
        await c.wait_for_pool(POOL)
        await asyncio.sleep(1.0)
        before = await c.sim_counters()
        logins, wall = await run_logins(c, args.logins, args.concurrency)
        await c.wait_for_pool(POOL)
        await asyncio.sleep(1.0)
        after = await c.sim_counters()
        late: list[Login] = []
        if args.code_at_confirm:
            late, _ = await run_logins(c, args.code_at_confirm, args.concurrency, code_with_scan=False)
    push = [x.pushed - x.confirm_sent for x in logins]
    poll = [x.polled - x.confirm_sent for x in logins]
    rows: list[dict[str, Any]] = [
        {"observer": "WebSocket push", **summarize(push)},
        {"observer": f"poll every {POLL_INTERVAL:g} s", **summarize(poll)},
        # Where the push's time goes: the confirm request itself, and the push after its answer.
        {
            "observer": "(confirm request answered)",
            **summarize([x.confirm_answered - x.confirm_sent for x in logins]),
        },
        {
            "observer": "(push minus confirm answer)",
            **summarize([x.pushed - x.confirm_answered for x in logins]),
        },
    ]
    if late:
        # The same, with the code sent with the confirm: WeChat's jscode2session is on the path.
        rows.append(
            {
                "observer": "(push, code sent with the confirm)",
                **summarize([x.pushed - x.confirm_sent for x in late]),
            }
        )
    ratio_mean = statistics.fmean(poll) / statistics.fmean(push)
    return {
        "logins": len(logins),
        "concurrency": args.concurrency,
        "wall_s": round(wall, 2),
        "logins_per_s": round(len(logins) / wall, 1),
        "rows": rows,
        "poll_mean_over_push_mean": round(ratio_mean, 1),
        "poll_mean_over_push_p99": round(statistics.fmean(poll) / (rows[0]["p99_ms"] / 1000), 1),
        "wechat": per_thousand(before, after, len(logins)),
    }


def main(argv: list[str] | None = None) -> None:
    """Run, print both tables, write ``confirm_push.json`` and ``wechat_cost.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.confirm_push", description=__doc__)
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--code-at-confirm", type=int, default=300, help="logins whose code goes with the confirm (0: none)"
    )
    args = parser.parse_args(argv)
    configure_logging(service="bench", fmt="console", level="WARNING")
    result = asyncio.run(measure(args))
    print(
        f"\nconfirm → browser sees 'confirmed': {result['logins']} logins, "
        f"{result['concurrency']} at a time ({result['logins_per_s']}/s)"
    )
    print_table(result["rows"], ["observer", "n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"])
    print(f"polling's mean / push's mean = {result['poll_mean_over_push_mean']}x")
    push = {k: v for k, v in result.items() if k != "wechat"}
    print(f"wrote {write_json('confirm_push', {'benchmark': 'confirm_push', **push})}")
    print(f"\nWeChat API calls per 1,000 logins ({result['logins']} logins, from /sim/counters)")
    print_table(result["wechat"], ["endpoint", "calls", "per_1000_logins", "total_since_start"])
    cost = {"benchmark": "wechat_cost", "logins": result["logins"], "rows": result["wechat"]}
    print(f"wrote {write_json('wechat_cost', cost)}")


if __name__ == "__main__":
    main()
