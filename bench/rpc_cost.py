"""``python -m bench.rpc_cost``: the CPU one RPC over RabbitMQ costs its server and its caller.

Two processes on a fresh vhost of the local broker: a server whose handler publishes a hint event
(as ``qrcode.scan`` and ``qrcode.confirm`` do) and replies, and a caller that makes ``--calls`` calls
one at a time, then as many sixteen at a time. Each process's CPU time (user + system) is read
around each phase, so the figures are CPU per call, not latency (the wall time per call is printed
beside). The full login makes seven such calls and four events; ``bench.throughput`` cannot resolve a
change of a few per cent on a shared VM, this can.

``--base REV --runs N`` runs the same measurement for commit ``REV`` (a git worktree, its code on
``PYTHONPATH``) and for this tree in turn, N times each, and prints the means and their ratio. The
worker code is passed with ``-c`` and uses only the bus API both trees have.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cluster import amqp_vhost
from bench.compare import alternating, mean_row, report_runs

ROOT = Path(__file__).resolve().parents[1]

# Runs in the tree under test (cwd and PYTHONPATH): argv = role, AMQP URL, calls.
WORKER = r"""
import asyncio, os, resource, sys, time
from datetime import UTC, datetime
import uvloop
from shared.bus import AmqpBus
from shared.messages import GetSceneStatus, SceneScanned, SceneStatus
from shared.sealing import Sealer

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

async def main(role, url, calls):
    name = "qrcode" if role == "server" else "gateway"
    bus = AmqpBus(url, name, Sealer.from_text(os.environ["BENCH_BUS_KEY"]), prefix="rpc.", rpc_timeout=10.0)
    await bus.start()
    loop = asyncio.get_running_loop()
    if role == "server":
        async def status(request):
            await bus.publish(SceneScanned(scene=request.scene, scanned_at=datetime.now(UTC)))
            return SceneStatus(scene=request.scene, state="pending", expires_at=datetime.now(UTC))
        await bus.serve({GetSceneStatus: status})
        print("ready", flush=True)
        while True:  # each line from the parent asks for this process's CPU time so far
            line = await loop.run_in_executor(None, sys.stdin.readline)
            print(f"cpu {cpu():.6f}", flush=True)
            if not line or line.strip() == "stop":
                break
    else:
        request = GetSceneStatus(scene="Q" * 32)
        for _ in range(200):  # warm-up
            await bus.call(request)
        async def calls_of(n):
            for _ in range(n):
                await bus.call(request)
        for phase, workers in (("one_at_a_time", 1), ("sixteen_at_a_time", 16)):
            print("mark", flush=True)
            sys.stdin.readline()  # the parent has read the server's CPU
            started, wall = cpu(), time.perf_counter()
            await asyncio.gather(*(calls_of(calls // workers) for _ in range(workers)))
            done = (calls // workers) * workers
            print(f"phase {phase} {done} {cpu() - started:.6f} {time.perf_counter() - wall:.6f}", flush=True)
        print("mark", flush=True)
        sys.stdin.readline()
    await bus.close()

uvloop.install()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def bus_key(tree: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "from shared.sealing import generate_key; print(generate_key())"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def measure(tree: Path, calls: int) -> dict[str, Any]:
    """One run in ``tree``: µs of CPU per call for server and caller, and wall ms per call."""
    env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_BUS_KEY": bus_key(tree)}
    with amqp_vhost("wxlogin-rpc") as url:
        args = [url, str(calls)]
        popen: dict[str, Any] = {"cwd": tree, "env": env, "text": True, "stdin": subprocess.PIPE}
        popen |= {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}
        server = subprocess.Popen([sys.executable, "-c", WORKER, "server", *args], **popen)
        try:
            assert server.stdin is not None
            assert server.stdout is not None
            while server.stdout.readline().strip() != "ready":
                pass
            caller = subprocess.Popen([sys.executable, "-c", WORKER, "caller", *args], **popen)
            assert caller.stdin is not None
            assert caller.stdout is not None
            marks: list[float] = []
            phases: list[tuple[str, int, float, float]] = []
            for line in caller.stdout:
                if line.strip() == "mark":
                    server.stdin.write("tick\n")
                    server.stdin.flush()
                    while not (answer := server.stdout.readline()).startswith("cpu "):
                        pass
                    marks.append(float(answer.split()[1]))
                    caller.stdin.write("go\n")
                    caller.stdin.flush()
                elif line.startswith("phase "):
                    _, name, done, spent, wall = line.split()
                    phases.append((name, int(done), float(spent), float(wall)))
            caller.wait(timeout=60)
            server.stdin.write("stop\n")
            server.stdin.flush()
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
    result: dict[str, Any] = {}
    for index, (name, done, spent, wall) in enumerate(phases):
        result[name] = {
            "server_cpu_us_per_call": round((marks[index + 1] - marks[index]) / done * 1e6, 1),
            "caller_cpu_us_per_call": round(spent / done * 1e6, 1),
            "wall_ms_per_call": round(wall / done * 1000, 3),
        }
    return result


def rows_of(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    def value(phase: str, name: str) -> Callable[[dict[str, Any]], float]:
        return lambda result: float(result[phase][name])

    return [
        mean_row({"phase": phase, "measure": name}, runs, value(phase, name))
        for phase in ("one_at_a_time", "sixteen_at_a_time")
        for name in ("server_cpu_us_per_call", "caller_cpu_us_per_call", "wall_ms_per_call")
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rpc_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="calls per phase")
    parser.add_argument("--base", help="also measure this commit, alternating")
    parser.add_argument("--runs", type=int, default=1, help="runs of each side")
    args = parser.parse_args(argv)
    runs = alternating(args.base, args.runs, lambda tree: measure(tree, args.calls))
    title = f"one RPC (a hint, then the reply), {args.calls} calls a phase, mean of {args.runs} run(s)"
    report_runs("rpc_cost", title, runs, rows_of(runs), calls=args.calls)


if __name__ == "__main__":
    main()
