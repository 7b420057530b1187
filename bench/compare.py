"""``python -m bench.compare --base REV``: this tree against commit ``REV``, in alternating runs.

On a shared 2-core VM the same commit can give 58 and 33 logins/s two minutes apart, so one run of
each side proves nothing. This runs ``bench.throughput`` (closed loop, no profile, no replicas row,
no sustained run) for ``REV`` (a git worktree of it, its own ``bench/`` included) and for this tree in
turn, ``--runs`` times each, and prints, per concurrency level, the mean of each side and the ratio
this / base of:

- ``logins_per_s``;
- ``cpu_services``: CPU ms per login of gateway + qrcode + session + token (issue 18's measure);
- ``per_sim``: the same divided by the WeChat simulator's CPU ms per login. The simulator's code is
  the same in both trees, so its cost tracks the machine's speed: the quotient moves less when the
  VM slows down for a while;
- ``cpu_nx``: nx-27017's CPU ms per login.

Each side's lowest and highest run are shown beside the means: a ratio inside that spread is noise.

The JSON of every run goes to a temporary directory; ``bench/results`` is not touched, and the
worktree is removed at the end. ``--base`` must be a commit whose ``bench/throughput.py`` takes
``--replicas`` and ``--rate`` (a3709bc or later).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bench.report import print_table, write_json

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("gateway-1", "qrcode-1", "session-1", "token-1")
# What each run executes: bench.throughput, writing its JSON to the directory given as argv[1].
RUN = (
    "import sys; from pathlib import Path; from bench import report, throughput; "
    "report.use_results_dir(Path(sys.argv[1])); throughput.main(sys.argv[2:])"
)


@contextmanager
def worktree_of(rev: str, where: Path) -> Iterator[Path]:
    """A detached git worktree of ``rev`` at ``where``, removed afterwards."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(where), rev],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)


T = TypeVar("T")


def alternating(base: str | None, runs: int, measure: Callable[[Path], T]) -> dict[str, list[T]]:
    """``measure(tree)`` ``runs`` times for this tree and, with ``base``, for a worktree of that commit
    in turn (base first): each side's results, under "base" and "this"."""
    with contextlib.ExitStack() as stack:
        trees = [("this", ROOT)]
        if base:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wxlogin-bench-")))
            trees.insert(0, ("base", stack.enter_context(worktree_of(base, scratch / "base"))))
        results: dict[str, list[T]] = {side: [] for side, _ in trees}
        for n in range(runs):
            for side, tree in trees:
                print(f"run {n + 1}/{runs}: {side}", flush=True)
                results[side].append(measure(tree))
    return results


def mean_row(label: dict[str, Any], runs: dict[str, list[T]], value: Callable[[T], float]) -> dict[str, Any]:
    """``label`` with the mean of ``value`` over each side's runs and, with a base, this / base."""
    row = dict(label)
    for side, results in runs.items():
        row[side] = round(statistics.mean(value(r) for r in results), 2)
    if "base" in runs:
        row["this/base"] = round(row["this"] / row["base"], 3)
    return row


def report_runs(
    name: str, title: str, runs: dict[str, list[Any]], rows: list[dict[str, Any]], **meta: Any
) -> None:
    """Print ``title`` and the rows; without a base, also write them (and this tree's runs) to
    ``bench/results/<name>.json``."""
    print(f"\n{title}")
    print_table(rows, list(rows[0]))
    if "base" not in runs:
        payload = {"benchmark": name, **meta, "runs": runs["this"], "rows": rows}
        print(f"wrote {write_json(name, payload)}")


def run_once(tree: Path, out: Path, levels: str, logins: int) -> dict[str, Any]:
    """One ``bench.throughput`` run of the code in ``tree``; its result."""
    out.mkdir(parents=True)
    args = ["--levels", levels, "--logins", str(logins), "--no-profile", "--replicas", "0", "--rate", "0"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(
        [sys.executable, "-c", RUN, str(out), *args],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result: dict[str, Any] = json.loads((out / "throughput.json").read_text())
    return result


def measures(row: dict[str, Any]) -> dict[str, float]:
    """The compared measures of one concurrency level of one run."""
    cpu = row["cpu_ms_per_login"]
    services = sum(float(cpu.get(name) or 0.0) for name in SERVICES)
    sim = float(cpu.get("wechat-sim") or 0.0)
    return {
        "logins_per_s": float(row["logins_per_s"]),
        "cpu_services": services,
        "per_sim": services / sim if sim > 0 else float("nan"),
        "cpu_nx": float(cpu.get("nx-27017") or 0.0),
    }


def compare(base: Sequence[dict[str, Any]], this: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency level and measure: the mean of each side's runs and this / base."""
    rows = []
    levels = sorted({row["concurrency"] for result in (*base, *this) for row in result["rows"]})
    for level in levels:
        sides = [
            [measures(row) for result in runs for row in result["rows"] if row["concurrency"] == level]
            for runs in (base, this)
        ]
        for name in ("logins_per_s", "cpu_services", "per_sim", "cpu_nx"):
            before, after = (statistics.fmean(m[name] for m in side) for side in sides)
            low_high = [(min(m[name] for m in side), max(m[name] for m in side)) for side in sides]
            rows.append(
                {
                    "concurrency": level,
                    "measure": name,
                    "runs": f"{len(sides[0])} + {len(sides[1])}",
                    "base": round(before, 2),
                    "this": round(after, 2),
                    "this/base": round(after / before, 3) if before else float("nan"),
                    # Each side's lowest and highest run: how far apart the runs of one commit are.
                    "base_range": "{:.2f} .. {:.2f}".format(*low_high[0]),
                    "this_range": "{:.2f} .. {:.2f}".format(*low_high[1]),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--base", required=True, help="the commit to compare this tree against")
    parser.add_argument("--runs", type=int, default=4, help="runs of each side, alternating")
    parser.add_argument("--levels", default="16,32", help="concurrency levels (bench.throughput)")
    parser.add_argument("--logins", type=int, default=400, help="logins per level and run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wxlogin-compare-") as scratch:
        outputs = (Path(scratch) / f"run-{n}" for n in itertools.count())

        def measure(tree: Path) -> dict[str, Any]:
            return run_once(tree, next(outputs), args.levels, args.logins)

        runs = alternating(args.base, args.runs, measure)
    print(f"\nthis tree against {args.base}: means of {args.runs} alternating runs each")
    columns = ["concurrency", "measure", "runs", "base", "this", "this/base", "base_range", "this_range"]
    print_table(compare(runs["base"], runs["this"]), columns)


if __name__ == "__main__":
    main()
