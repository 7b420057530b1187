"""``bench.hops``' bookkeeping: the periodic loops' counts are told apart from the refills the logins
cause, and a reading settles (or fails) in bounded time on a machine where counts never stop moving."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.hops import BACKGROUND, PERIODIC, settled, split_background, windows


def test_untagged_counts_are_split_into_the_periodic_loops_at_their_idle_rate_and_the_refills() -> None:
    run = {
        "qrcode-1": {
            "issue": Counter({"mongo findAndModify scene_pool": 40}),
            BACKGROUND: Counter({"mongo ping -": 10, "mongo insert scene_pool": 20, "mongo find scenes": 3}),
        },
        "token-1": {BACKGROUND: Counter({"mongo ping -": 9})},
    }
    # Idle: 4 pings and 8 sweeps in 4 s from qrcode (1/s and 2/s), 4 pings from token.
    idle = {
        "qrcode-1": {BACKGROUND: Counter({"mongo ping -": 4, "mongo find scenes": 8})},
        "token-1": {BACKGROUND: Counter({"mongo ping -": 4})},
    }
    split = split_background(run, idle, {"qrcode-1": 10.0, "token-1": 9.0}, {"qrcode-1": 4.0, "token-1": 4.0})

    q = split["qrcode-1"]
    assert q["issue"] == Counter({"mongo findAndModify scene_pool": 40})  # steps untouched
    # 10 s at 1 ping/s: all ten pings are periodic; the sweep's expected 20 is capped at the 3 counted.
    assert q[PERIODIC] == Counter({"mongo ping -": 10, "mongo find scenes": 3})
    assert q[BACKGROUND] == Counter({"mongo insert scene_pool": 20})  # what the logins' refills cost
    assert split["token-1"] == {PERIODIC: Counter({"mongo ping -": 9})}
    assert run["qrcode-1"][BACKGROUND]["mongo ping -"] == 10  # the input is left as it was


def test_a_process_never_seen_idle_keeps_all_of_its_untagged_counts_as_background() -> None:
    run = {"session-1": {BACKGROUND: Counter({"mongo find signing_keys": 2})}}
    split = split_background(run, {}, {"session-1": 5.0}, {})
    assert split == {"session-1": {BACKGROUND: Counter({"mongo find signing_keys": 2})}}


def test_the_window_of_each_process_is_between_its_own_two_writes() -> None:
    before = {11: {"service": "qrcode", "written_at": 100.0}, 12: {"service": "token", "written_at": 100.5}}
    after = {11: {"service": "qrcode", "written_at": 104.0}, 12: {"service": "token", "written_at": 103.0}}
    assert windows(before, after, {11: "qrcode-1"}) == {"qrcode-1": 4.0, "token-pid12": 2.5}


async def _keep_counting(directory: Path, pid: int, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        counts = {BACKGROUND: {"k": n}}
        payload = {"pid": pid, "service": "qrcode", "written_at": time.time(), "counts": counts}
        (directory / f"{pid}.json").write_text(json.dumps(payload))
        await asyncio.sleep(0.05)


async def test_counts_that_never_stop_moving_settle_at_the_deadline_with_a_fresh_reading(
    tmp_path: Path,
) -> None:
    stop = asyncio.Event()
    writer = asyncio.create_task(_keep_counting(tmp_path, 7, stop))
    try:
        started = time.time()
        files = await settled(tmp_path, {7}, timeout=0.6)
        assert files[7]["written_at"] > started
        assert time.time() - started < 3.0
    finally:
        stop.set()
        await writer


async def test_a_process_that_stops_writing_is_an_error(tmp_path: Path) -> None:
    payload = {"pid": 8, "service": "qrcode", "written_at": time.time() - 5, "counts": {}}
    (tmp_path / "8.json").write_text(json.dumps(payload))
    with pytest.raises(RuntimeError, match=r"no fresh counts from PIDs \[8\]"):
        await settled(tmp_path, {8}, timeout=5.0, fresh_within=0.4)
