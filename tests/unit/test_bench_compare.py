"""``bench.compare``'s arithmetic: means per side and level, the ratio, the simulator as a yardstick."""

from __future__ import annotations

import math
from typing import Any

from bench.compare import compare


def result(*levels: tuple[int, float, dict[str, float]]) -> dict[str, Any]:
    """A ``bench.throughput`` result with one row per (concurrency, logins/s, CPU ms per login)."""
    rows = [{"concurrency": n, "logins_per_s": rate, "cpu_ms_per_login": ms} for n, rate, ms in levels]
    return {"rows": rows}


def cpu(gateway: float, qrcode: float, session: float, sim: float, nx: float = 10.0) -> dict[str, float]:
    return {
        "gateway-1": gateway,
        "qrcode-1": qrcode,
        "session-1": session,
        "token-1": 0.0,
        "wechat-sim": sim,
        "nx-27017": nx,
        "bench-client": 3.0,
        "rabbitmq*": 6.0,
    }


def test_each_side_is_the_mean_of_its_runs_and_the_ratio_is_this_over_base() -> None:
    base = [result((16, 30.0, cpu(8, 9, 10, 2.0))), result((16, 50.0, cpu(6, 7, 8, 1.5)))]
    this = [result((16, 40.0, cpu(6, 7, 8, 2.0))), result((16, 60.0, cpu(5, 6, 7, 1.5)))]
    rows = {row["measure"]: row for row in compare(base, this)}
    assert rows["logins_per_s"] == {
        "concurrency": 16,
        "measure": "logins_per_s",
        "runs": "2 + 2",
        "base": 40.0,
        "this": 50.0,
        "this/base": 1.25,
        "base_range": "30.00 .. 50.00",
        "this_range": "40.00 .. 60.00",
    }
    assert (rows["cpu_services"]["base"], rows["cpu_services"]["this"]) == (24.0, 19.5)
    assert rows["cpu_services"]["this/base"] == round(19.5 / 24.0, 3)
    # The simulator's CPU divides each run before the mean: (27/2 + 21/1.5) / 2 against (21/2 + 18/1.5) / 2.
    assert rows["per_sim"]["base"] == round((13.5 + 14.0) / 2, 2)
    assert rows["per_sim"]["this"] == round((10.5 + 12.0) / 2, 2)
    assert rows["cpu_nx"]["this/base"] == 1.0


def test_levels_are_compared_apart_in_order_and_a_missing_simulator_gives_no_quotient() -> None:
    base = [result((32, 30.0, cpu(8, 9, 10, 0.0)), (16, 20.0, cpu(8, 9, 10, 2.0)))]
    this = [result((16, 25.0, cpu(8, 9, 10, 2.0)), (32, 45.0, cpu(8, 9, 10, 0.0)))]
    rows = compare(base, this)
    order = [(row["concurrency"], row["measure"]) for row in rows]
    assert order[:2] == [(16, "logins_per_s"), (16, "cpu_services")] and order[4][0] == 32
    by = {(row["concurrency"], row["measure"]): row for row in rows}
    assert by[16, "logins_per_s"]["this/base"] == 1.25 and by[32, "logins_per_s"]["this/base"] == 1.5
    assert math.isnan(by[32, "per_sim"]["base"])
