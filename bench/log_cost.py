"""``python -m bench.log_cost``: the CPU one log line costs a service, at INFO and below the level.

A login makes about fifteen log calls across gateway, qrcode and session (an access line per HTTP
request, ``scene_issued``, ``scanner_identified``, ``login_confirmed`` …). Production runs at INFO,
where each is rendered to JSON, scrubbed of secrets and written; ``bench.throughput`` runs its
services at WARNING, where each should cost next to nothing. This measures both in a fresh process:
``shared.logging.configure_logging`` as a service calls it, a task context bound as the gateway binds
it (``correlation_id``, ``scene``), lines written to a file, CPU time (user + system) per call.

``--base REV --runs N`` measures commit ``REV`` (a git worktree, its code on ``PYTHONPATH``) and this
tree in turn, N times each, and prints the means and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from operator import itemgetter
from pathlib import Path
from typing import Any

from bench.compare import alternating, mean_row, report_runs

ROOT = Path(__file__).resolve().parents[1]

# Runs in the tree under test (cwd and PYTHONPATH): argv = level, calls, the file lines go to.
WORKER = r"""
import json, resource, sys
from shared.logging import bind_context, configure_logging, get_logger

level, calls, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

with open(path, "w") as out:
    configure_logging(service="qrcode", fmt="json", level=level, stream=out)
    bind_context(correlation_id="7" * 32, scene="S" * 32)
    log = get_logger("services.qrcode.handlers")
    for _ in range(200):
        log.info("scene_issued", source="pool", purpose="login")
    started = cpu()
    for _ in range(calls):
        log.info("scene_issued", source="pool", purpose="login")
    spent = cpu() - started
print(json.dumps({"us_per_call": round(spent / calls * 1e6, 2)}))
"""

LEVELS = {"info_written": "INFO", "info_below_level": "WARNING"}


def measure(tree: Path, calls: int) -> dict[str, float]:
    """One run in ``tree``: µs of CPU per ``log.info`` call, written and below the level."""
    out: dict[str, float] = {}
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory(prefix="wxlogin-log-") as scratch:
        for name, level in LEVELS.items():
            done = subprocess.run(
                [sys.executable, "-c", WORKER, level, str(calls), str(Path(scratch) / "lines.jsonl")],
                cwd=tree, env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            out[name] = float(json.loads(done.stdout.strip().splitlines()[-1])["us_per_call"])
    return out


def rows_of(runs: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    return [mean_row({"measure": f"{name}_cpu_us_per_call"}, runs, itemgetter(name)) for name in LEVELS]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.log_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=20000, help="log calls per measurement")
    parser.add_argument("--base", help="also measure this commit, alternating")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side")
    args = parser.parse_args(argv)
    runs = alternating(args.base, args.runs, lambda tree: measure(tree, args.calls))
    title = f"one log.info call (two fields, a bound context), {args.calls} calls, mean of {args.runs} runs"
    report_runs("log_cost", title, runs, rows_of(runs), calls=args.calls)


if __name__ == "__main__":
    main()
