"""The benchmarks do not rot: ``bench.confirm_push`` at a tiny size, on separate service processes,
produces a well-formed result, and ``bench.compare`` runs two trees (``make bench`` itself is not part
of ``make test``)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from bench import confirm_push, report


async def test_the_confirm_push_benchmark_at_a_tiny_size_writes_a_well_formed_result(tmp_path: Path) -> None:
    result = await confirm_push.measure(argparse.Namespace(logins=6, concurrency=2, code_at_confirm=3))

    assert result["logins"] == 6
    push, poll = result["rows"][:2]
    assert push["n"] == poll["n"] == 6
    assert 0 < push["p50_ms"] <= push["p90_ms"] <= push["p99_ms"] <= push["max_ms"]
    assert poll["mean_ms"] > push["mean_ms"]  # a 1 s poller cannot beat a push
    late = result["rows"][-1]
    assert late["observer"] == "(push, code sent with the confirm)" and late["n"] == 3
    calls = {row["endpoint"]: row["per_1000_logins"] for row in result["wechat"]}
    assert calls["sns/jscode2session"] == 1000.0  # exactly one exchange per login

    report.use_results_dir(tmp_path)
    try:
        path = report.write_json("confirm_push", {"benchmark": "confirm_push", **result})
    finally:
        report.use_results_dir(report.RESULTS)
    written = json.loads(path.read_text())
    assert path.parent == tmp_path
    assert written["meta"]["cpus"] >= 1 and written["rows"][0]["observer"] == "WebSocket push"


def test_the_comparison_of_two_trees_runs_both_and_leaves_no_worktree_or_result_behind() -> None:
    # This tree against its own HEAD, at a tiny size: the table has each measure, bench/results is
    # untouched and the worktree of the base is gone.
    root = Path(__file__).resolve().parents[2]
    results = {p.name: p.read_bytes() for p in (root / "bench" / "results").glob("*.json")}
    listed = ["git", "worktree", "list"]
    worktrees = subprocess.run(listed, cwd=root, capture_output=True, text=True, check=True)
    tiny = ["--base", "HEAD", "--runs", "1", "--levels", "2", "--logins", "6"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.compare", *tiny],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout[done.stdout.index("this tree against HEAD") :]
    for measure in ("logins_per_s", "cpu_services", "per_sim", "cpu_nx"):
        assert re.search(rf"^2\s+{measure}\s+1 \+ 1\s+\d", table, re.MULTILINE), table
    assert {p.name: p.read_bytes() for p in (root / "bench" / "results").glob("*.json")} == results
    after = subprocess.run(listed, cwd=root, capture_output=True, text=True, check=True)
    assert after.stdout == worktrees.stdout


def test_the_rpc_cost_benchmark_measures_both_trees_and_leaves_nothing_behind() -> None:
    # Against its own HEAD, 32 calls a phase: every measure has a number on each side, and neither the
    # base's worktree nor a result file is left (a comparison writes none).
    root = Path(__file__).resolve().parents[2]
    results = {p.name: p.read_bytes() for p in (root / "bench" / "results").glob("*.json")}
    listed = ["git", "worktree", "list"]
    worktrees = subprocess.run(listed, cwd=root, capture_output=True, text=True, check=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.rpc_cost", "--base", "HEAD", "--runs", "1", "--calls", "32"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for phase in ("one_at_a_time", "sixteen_at_a_time"):
        for measure in ("server_cpu_us_per_call", "caller_cpu_us_per_call", "wall_ms_per_call"):
            row = rf"^{phase}\s+{measure}\s+\d+(\.\d+)?\s+\d+(\.\d+)?\s+\d"
            assert re.search(row, done.stdout, re.MULTILINE), done.stdout
    assert {p.name: p.read_bytes() for p in (root / "bench" / "results").glob("*.json")} == results
    after = subprocess.run(listed, cwd=root, capture_output=True, text=True, check=True)
    assert after.stdout == worktrees.stdout
