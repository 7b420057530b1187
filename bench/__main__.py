"""``python -m bench`` (``make bench``): every benchmark at full size; ``--quick`` (``make bench-quick``)
runs each at a small size in a few minutes and writes to ``bench/results/quick/`` instead."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from bench import report

# In this order: the cheap ones first, the 15,000 sockets last.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    # module: (full-size arguments, quick arguments)
    "hops": ([], ["--logins", "10"]),
    "rpc_cost": ([], ["--calls", "300"]),
    "log_cost": ([], ["--calls", "2000", "--runs", "1"]),
    "issue_latency": ([], ["--requests", "30", "--cold-requests", "5"]),
    "confirm_push": ([], ["--logins", "60", "--code-at-confirm", "20"]),
    # Full size: levels, then 2 replicas of each service, then 60 s at 83 logins/s (WeChat's ceiling).
    "throughput": ([], ["--levels", "1,8", "--logins", "40", "--rate", "20", "--duration", "10"]),
    "capacity": ([], ["--levels", "500,1000", "--hold", "3"]),
}


def main(argv: list[str] | None = None) -> None:
    """Run ``main(args)`` of each benchmark module, in order; ``--only`` picks some."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, results under results/quick")
    parser.add_argument("--only", help="comma-separated benchmark names", default=",".join(BENCHMARKS))
    args = parser.parse_args(argv)
    if args.quick:
        report.use_results_dir(report.RESULTS / "quick")
    for name in args.only.split(","):
        full, quick = BENCHMARKS[name]
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        print(f"\n== bench.{name} ==", flush=True)
        module.main(quick if args.quick else full)
        print(f"(bench.{name}: {time.monotonic() - started:.0f} s)", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
