"""``make chaos`` (``python -m tests.chaos``): the long chaos run, every fault with the broker down for
60 s, then the 3-node cluster with a node stopped; prints the table and exits 1 when a confirmed login
was lost or doubled, a request got a 5xx other than 503 or hung, or another condition of issue 13 broke."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from tests.chaos import plans, rabbit, report
from tests.chaos.scenario import Plan, Run, run

# What fails `make chaos` outright: the login guarantees. The rest is printed and fails it too.
HARD = (report.lost_or_doubled, report.no_500_no_hang)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--short`` runs the in-suite plans; ``--only single|cluster`` one of the two runs."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the short plans the test suite runs")
    parser.add_argument("--only", choices=("single", "cluster"), help="run one of the two stacks")
    parser.add_argument("--logs", type=Path, help="copy every log here (default: a new /tmp dir)")
    return parser.parse_args(argv)


def chosen(args: argparse.Namespace) -> list[tuple[str, Plan]]:
    """The plans to run, named."""
    long = not args.short
    both = [("single node", plans.single_node(long=long)), ("3-node cluster", plans.cluster(long=long))]
    if args.only == "single":
        return both[:1]
    if args.only == "cluster":
        return both[1:]
    return both


def describe(name: str, result: Run) -> str:
    """The table of one run and how long its parts took."""
    starts = ", ".join(f"{s:.1f}" for s in result.node_start_s)
    formed = f"; cluster formed in {result.cluster_form_s:.1f} s" if len(result.node_start_s) > 1 else ""
    notes = [f"{f.name}: {_detail(f.detail)}" for f in result.faults if f.detail]
    return (
        f"\n== {name} ==\n{report.table(result)}\n"
        f"node start: {starts} s{formed}; stack ready {result.stack_start_s:.1f} s after launch; "
        f"run {result.wall_s:.0f} s" + "".join(f"\n{note}" for note in notes)
    )


def _detail(detail: dict[str, object]) -> str:
    types = detail.get("queue_types")
    kinds = sorted(types.values()) if isinstance(types, dict) else []
    counted = ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds)))
    return f"{detail.get('connections')} client connections on the node, its queues: {counted}"


async def main(argv: list[str] | None = None) -> int:
    """Run the plans, print the tables and the broken conditions; the exit status."""
    args = parse_args(argv)
    if not rabbit.installed():
        print("rabbitmq-server is not installed: chaos runs start private RabbitMQ nodes", file=sys.stderr)
        return 2
    failed = False
    logs = args.logs or Path(tempfile.mkdtemp(prefix="wxlogin-chaos-logs-"))
    for name, plan in chosen(args):
        plan.keep_logs = logs / name.replace(" ", "-")
        result = await run(plan)
        print(describe(name, result), flush=True)
        print(report.outcomes(result))
        print(f"  logs: {plan.keep_logs}")
        broken = report.violations(result)
        hard = [line for check in HARD for line in check(result)]
        for line in broken[:40]:
            print(f"  ✗ {line}")
        if len(broken) > 40:
            print(f"  … and {len(broken) - 40} more")
        if broken:
            print("  the services logged:" + "".join(f"\n    {line}" for line in result.warnings))
        print(f"  {len(broken)} condition(s) broken, {len(hard)} of them lost/doubled/5xx/hang", flush=True)
        failed = failed or bool(broken)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
