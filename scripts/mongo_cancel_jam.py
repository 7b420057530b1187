"""Reproduce the wedged MongoDB client of issue 13: ``python scripts/mongo_cancel_jam.py [--mode csot]``.

Python 3.11 and PyMongo's async API: 20 tasks write in a loop while a probe pings every ``--every``
seconds, and nx-27017 is killed (SIGKILL) and restarted on the same port up to ``--cycles`` times.
With ``--mode waitfor`` the probe is the old ``/readyz`` ping, ``asyncio.wait_for(db.command("ping"),
1)``: sooner or later a cancel lands while PyMongo's topology wait is re-taking its lock, the probe
fails with ``RuntimeError: Lock is not acquired``, the lock stays held, and the client never serves
again (nor closes). With ``--mode csot`` the probe uses ``pymongo.timeout(1)``, as shared.mongo does
now, and nothing wedges. See shared/mongo.py. Measured on this machine at ``--every 0.01``: waitfor
wedged 3 of 6 runs (after 1, 3 and 10 restarts; other runs logged the lock's broken invariant as
``cannot wait on un-acquired lock``), csot none of 3 runs of 15 restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import tempfile
from collections import Counter

import pymongo
from pymongo.errors import PyMongoError

from shared.mongo import EmbeddedMongo, free_port, make_client


async def main(mode: str, cycles: int, every: float, workers: int) -> int:
    port, data = free_port(), tempfile.mkdtemp(prefix="wxlogin-jam-")
    mongo = EmbeddedMongo(port=port, data_dir=data).start()
    client = make_client(mongo.url)
    db = client["jam"]
    await db.c.insert_one({"_id": 1, "n": 0})
    errors: Counter[str] = Counter()
    stop = asyncio.Event()

    def note(exc: BaseException) -> None:
        errors[type(exc).__name__ if isinstance(exc, PyMongoError | TimeoutError) else repr(exc)[:60]] += 1

    async def write() -> None:
        while not stop.is_set():
            try:
                await db.c.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})
            except Exception as exc:
                note(exc)
                await asyncio.sleep(0.05)

    async def probe() -> None:
        try:
            if mode == "waitfor":
                await asyncio.wait_for(db.command("ping"), 1.0)
            else:
                with pymongo.timeout(1.0):
                    await db.command("ping")
        except Exception as exc:
            note(exc)

    async def probes() -> None:
        running: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            task = asyncio.create_task(probe())
            running.add(task)
            task.add_done_callback(running.discard)
            await asyncio.sleep(every)
        await asyncio.gather(*running)

    tasks = [asyncio.create_task(write()) for _ in range(workers)] + [asyncio.create_task(probes())]
    wedged = False
    for cycle in range(1, cycles + 1):
        await asyncio.sleep(random.uniform(0.5, 1.5))
        assert mongo.process is not None
        os.killpg(mongo.process.pid, signal.SIGKILL)
        mongo.process.wait()
        mongo.stop()
        await asyncio.sleep(random.uniform(1.0, 2.5))
        mongo = EmbeddedMongo(port=port, data_dir=data)
        await asyncio.to_thread(mongo.start)
        served = False
        for _ in range(20):  # a shielded ping: this check itself must not cancel anything
            try:
                await asyncio.wait_for(asyncio.shield(db.command("ping")), 1.0)
                served = True
                break
            except Exception:
                await asyncio.sleep(0.25)
        locked = client._topology._lock.locked()
        print(f"restart {cycle}: serves again: {served}; topology lock held while idle: {locked}", flush=True)
        if not served:
            wedged = True
            break
    stop.set()
    _, stuck = await asyncio.wait(tasks, timeout=10)
    print(f"mode={mode} wedged={wedged} errors={dict(errors)} writers stuck={len(stuck)}", flush=True)
    mongo.stop()
    os._exit(1 if wedged else 0)  # a wedged client's tasks and close() would never finish


if __name__ == "__main__":
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--mode", choices=["waitfor", "csot"], default="waitfor")
    parser.add_argument("--cycles", type=int, default=15)
    parser.add_argument("--every", type=float, default=0.01, help="seconds between probes")
    parser.add_argument("--workers", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.mode, args.cycles, args.every, args.workers))
