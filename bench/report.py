"""Shared by the benchmarks: latency summaries, a printed table, and a JSON file in ``bench/results``."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
_out = RESULTS


def use_results_dir(path: Path) -> None:
    """Write this run's JSON files to ``path`` (``--quick`` runs keep the full results intact)."""
    global _out
    _out = path


def summarize(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99/max/mean in milliseconds."""
    ms = sorted(x * 1000 for x in latencies_s)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, max(0, round(p / 100 * len(ms)) - 1))]

    return {
        "n": len(ms),
        "p50_ms": round(pct(50), 2),
        "p90_ms": round(pct(90), 2),
        "p95_ms": round(pct(95), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(ms[-1], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain fixed-width table on stdout."""
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)))


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """``bench/results/<name>.json`` with the payload and where it was measured."""
    _out.mkdir(parents=True, exist_ok=True)
    path = _out / f"{name}.json"
    meta = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": _cpus(),
    }
    path.write_text(json.dumps({"meta": meta, **payload}, indent=2, ensure_ascii=False) + "\n")
    return path


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
