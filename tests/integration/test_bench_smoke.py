"""The benchmarks do not rot: ``bench.confirm_push`` at a tiny size, on separate service processes,
produces a well-formed result (``make bench`` itself is not part of ``make test``)."""

from __future__ import annotations

import argparse
import json
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
