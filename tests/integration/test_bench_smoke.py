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


ROOT = Path(__file__).resolve().parents[2]


def run_against_head(module: str, *args: str) -> str:
    """``python -m bench.<module> --base HEAD --runs 1 *args``: its output, after checking that it
    succeeded and left neither a worktree of the base nor a changed file in bench/results behind."""

    def results() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (ROOT / "bench" / "results").glob("*.json")}

    def worktrees() -> str:
        listed = ["git", "worktree", "list"]
        return subprocess.run(listed, cwd=ROOT, capture_output=True, text=True, check=True).stdout

    results_before, worktrees_before = results(), worktrees()
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--base", "HEAD", "--runs", "1", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert results() == results_before
    assert worktrees() == worktrees_before
    return done.stdout


def test_the_comparison_of_two_trees_runs_both_and_leaves_no_worktree_or_result_behind() -> None:
    # This tree against its own HEAD, at a tiny size: the table has each measure.
    out = run_against_head("compare", "--levels", "2", "--logins", "6")
    table = out[out.index("this tree against HEAD") :]
    for measure in ("logins_per_s", "cpu_services", "per_sim", "cpu_nx"):
        assert re.search(rf"^2\s+{measure}\s+1 \+ 1\s+\d", table, re.MULTILINE), table


def test_the_rpc_cost_benchmark_measures_both_trees_and_leaves_nothing_behind() -> None:
    # 32 calls a phase: every measure has a number on each side.
    out = run_against_head("rpc_cost", "--calls", "32")
    for phase in ("one_at_a_time", "sixteen_at_a_time"):
        for measure in ("server_cpu_us_per_call", "caller_cpu_us_per_call", "wall_ms_per_call"):
            row = rf"^{phase}\s+{measure}\s+\d+(\.\d+)?\s+\d+(\.\d+)?\s+\d"
            assert re.search(row, out, re.MULTILINE), out


def test_the_log_cost_benchmark_measures_a_written_line_and_one_below_the_level() -> None:
    # 500 calls: both measures have a number on each side, and a line below the level costs less
    # than a written one.
    out = run_against_head("log_cost", "--calls", "500")
    found = {}
    for measure in ("info_written_cpu_us_per_call", "info_below_level_cpu_us_per_call"):
        match = re.search(rf"^{measure}\s+\d+(?:\.\d+)?\s+(\d+(?:\.\d+)?)\s+\d", out, re.MULTILINE)
        assert match, out
        found[measure] = float(match.group(1))
    assert found["info_below_level_cpu_us_per_call"] < found["info_written_cpu_us_per_call"]
