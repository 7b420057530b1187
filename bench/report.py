"""Shared by the benchmarks: latency summaries, a printed table, and a JSON file in ``bench/results``."""

from __future__ import annotations

import json
import os
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
        "cpu_model": _cpu_model(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # the machine may be shared: others' load
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
    return os.cpu_count() or 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(results: Path = RESULTS) -> str:
    """The latest results as Markdown tables (what docs/benchmarks.md and the README show)."""

    def load(name: str) -> dict[str, Any] | None:
        path = results / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
        return "\n".join(lines)

    out: list[str] = []
    if (d := load("confirm_push")) is not None:
        out += [
            f"**Confirm → push** ({d['logins']} logins, {d['concurrency']} at a time; "
            f"polling's mean / push's mean = {d['poll_mean_over_push_mean']}x)",
            "",
            table(d["rows"], ["observer", "n", "p50_ms", "p90_ms", "p99_ms", "mean_ms"]),
            "",
        ]
    if (d := load("issue_latency")) is not None:
        out += [
            f"**Issue latency** ({d['render_latency_ms']:g} ms added to every code render)",
            "",
            table(d["rows"], ["scenario", "n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "from_pool"]),
            "",
        ]
    if (d := load("throughput")) is not None:
        rows = []
        for r in d["rows"]:
            cpu = r["cpu_ms_per_login"]
            rows.append(
                {
                    **r,
                    "cpu_ms_per_login (gateway/qrcode/session/nx-27017/rabbitmq*)": " / ".join(
                        str(cpu.get(k, "-"))
                        for k in ("gateway-1", "qrcode-1", "session-1", "nx-27017", "rabbitmq*")
                    ),
                }
            )
        columns = ["concurrency", "logins", "logins_per_s", "p50_ms", "p99_ms", "from_pool"]
        columns += ["machine_busy_share"]
        columns += ["stack_busy_share", "cpu_ms_per_login (gateway/qrcode/session/nx-27017/rabbitmq*)"]
        out += ["**Full-login throughput**", "", table(rows, columns), ""]
        if (scaled := d.get("scaling")) is not None:
            rows = [
                {
                    **r,
                    "cpu_ms_per_login, all replicas (gateway/qrcode/session/nx-27017/rabbitmq*)": " / ".join(
                        str(r["cpu_ms_per_login_by_service"].get(k, "-"))
                        for k in ("gateway", "qrcode", "session", "nx-27017", "rabbitmq*")
                    ),
                }
                for r in scaled["rows"]
            ]
            columns = ["concurrency", "replicas", "logins", "logins_per_s", "vs_1_replica"]
            columns += ["p50_ms", "p99_ms", "from_pool", "machine_busy_share"]
            columns += ["cpu_ms_per_login, all replicas (gateway/qrcode/session/nx-27017/rabbitmq*)"]
            services = ", ".join(scaled["services"])
            out += [
                f"**{scaled['replicas']} replicas each of {services} on the same machine, against one**",
                "",
                table(rows, columns),
                "",
            ]
        if (run := d.get("sustained")) is not None:
            cpu = run["cpu_ms_per_login"]
            row = {
                **run,
                "cpu_ms_per_login (gateway/qrcode/session/nx-27017/rabbitmq*)": " / ".join(
                    str(cpu.get(k, "-"))
                    for k in ("gateway-1", "qrcode-1", "session-1", "nx-27017", "rabbitmq*")
                ),
            }
            columns = ["started", "completed", "failed", "logins_per_s", "p50_ms", "p90_ms", "p99_ms"]
            columns += ["from_pool", "machine_busy_share"]
            columns += ["cpu_ms_per_login (gateway/qrcode/session/nx-27017/rabbitmq*)"]
            out += [
                f"**Sustained: logins started at {run['rate_per_s']:g}/s for {run['duration_s']:g} s** "
                f"(open loop, at most {run['max_in_flight']} at once, latency from the scheduled start; "
                f"pool {run['pool']}; the global issue limit allows {run['issue_limit_per_s']}/s, the render "
                f"budget refills {run.get('render_budget_per_s', 71.4)}/s and the pool covers the rest)",
                "",
                table([row], columns),
                "",
            ]
    if (d := load("hops")) is not None:
        out += [
            f"**Work per login** ({d['logins']} logins one at a time; mongo = MongoDB commands, rpc = RPC "
            "requests, reply = RPC replies, event = events published; background = the pool refill and "
            "periodic loops)",
            "",
            table(d["per_step"], ["step", "mongo", "rpc", "reply", "event", "rpc_calls"]),
            "",
            table(d["totals"], ["process", "mongo", "rpc", "reply", "event"]),
            "",
        ]
    if (d := load("capacity")) is not None:
        limit = d["open_files_limit"]
        out += [
            f"**Idle WebSockets on one gateway process** (open-file limit {limit['soft']}; "
            f"{d['still_open_after_hold']} still open after {d['held_after_s']:g} s more)",
            "",
            table(d["rows"], ["sockets", "held", "failed", "gateway_rss_mb", "kb_per_socket"]),
            "",
        ]
    if (d := load("wechat_cost")) is not None:
        out += [
            f"**WeChat calls per 1,000 logins** ({d['logins']} logins)",
            "",
            table(d["rows"], ["endpoint", "calls", "per_1000_logins", "total_since_start"]),
            "",
        ]
    if out and (d := load("confirm_push")) is not None:
        m = d["meta"]
        out.append(
            f"_Measured {m['measured_at']} at commit {m['commit']}, Python {m['python']}, {m['cpus']} CPUs._"
        )
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(markdown(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS))
