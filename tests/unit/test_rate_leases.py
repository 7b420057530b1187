"""Leased shared rate limits: each qrcode replica counts a batch of a window's uses in Mongo at once and
hands them out itself. Never more than the window's capacity across replicas, at most
``(replicas - 1) * (k - 1)`` uses left unspent, leftovers dropped when the window changes, one Mongo
operation per batch however many takers come at once. Hand-written fakes, no MongoDB."""

from __future__ import annotations

import asyncio
import random

import pytest
from pymongo.errors import AutoReconnect

from services.qrcode.limits import PrefixShareLimit, SharedRateLimit, WindowBudget, lease_size

WINDOW_START = 1_800_000_000.0  # a multiple of 10: the start of a 10 s window


class Counters:
    """``scene_rates`` in a dict, with MongoDB's guarantee: a window's count never passes its limit.

    Counts every call (one Mongo operation each, as far as these tests care), can be slow (so takers
    overlap) and can fail like a lost connection.
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        self.counts: dict[str, int] = {}
        self.reserves: list[tuple[str, int, int]] = []  # (name, window, wanted) of every reserve
        self.delay = delay
        self.down = False

    async def reserve(self, name: str, window: int, limit: int, wanted: int, *, purge_at: float) -> int:
        self.reserves.append((name, window, wanted))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise AutoReconnect("connection refused (test)")
        key = f"{name}:{window}"
        counted = max(0, min(wanted, limit - self.counts.get(key, 0)))
        self.counts[key] = self.counts.get(key, 0) + counted
        return counted

    async def take(self, name: str, window: int, limit: int, *, purge_at: float) -> bool:
        return await self.reserve(name, window, limit, 1, purge_at=purge_at) == 1

    async def give_back(self, name: str, window: int) -> None:
        key = f"{name}:{window}"
        self.counts[key] = max(0, self.counts.get(key, 0) - 1)


def test_the_lease_is_a_thirty_second_of_the_window_at_most_sixteen_and_at_least_one() -> None:
    assert [lease_size(c) for c in (1, 10, 31, 32, 64, 500, 512, 700, 100_000)] == [
        1,
        1,
        1,
        1,
        2,
        15,
        16,
        16,
        16,
    ]
    # The defaults: 3000 issues/min (500 a window), 4200 renders/min (700), a 10 % prefix share (50).
    assert SharedRateLimit(Counters(), "issue", 3000).lease == 15
    assert SharedRateLimit(Counters(), "renders", 4200).lease == 16
    assert PrefixShareLimit(Counters(), 3000, 10, [24], [48]).lease == 1


async def test_one_replica_asks_mongo_once_per_batch_not_once_per_use() -> None:
    store = Counters()
    limit = SharedRateLimit(store, "issue", 3840)  # 640 a window, batches of 16
    results = [(await limit.take(WINDOW_START + i * 0.01)).allowed for i in range(48)]
    assert all(results)
    assert len(store.reserves) == 3 and store.counts["issue:180000000"] == 48


async def test_two_replicas_sharing_one_window_never_exceed_its_capacity() -> None:
    store = Counters()
    replicas = [SharedRateLimit(store, "issue", 3840) for _ in range(2)]  # 640 a window, k = 16
    rng = random.Random(7)
    allowed = 0
    for i in range(2000):
        decision = await rng.choice(replicas).take(WINDOW_START + i * 0.001)
        allowed += decision.allowed
        if not decision.allowed:
            assert 1 <= decision.retry_after <= 10
    assert store.counts["issue:180000000"] <= 640
    assert 640 - (2 - 1) * (16 - 1) <= allowed <= 640


@pytest.mark.parametrize("replicas", [2, 4, 8])
async def test_a_full_window_goes_under_used_by_at_most_k_minus_one_per_other_replica(replicas: int) -> None:
    store = Counters()
    limits = [SharedRateLimit(store, "renders", 4200) for _ in range(replicas)]  # 700 a window, k = 16
    # The worst case: every other replica takes one use, so holds 15 it never hands out.
    for other in limits[1:]:
        assert (await other.take(WINDOW_START)).allowed
    busy = limits[0]
    taken = 0
    while (await busy.take(WINDOW_START + 1)).allowed:
        taken += 1
    assert store.counts["renders:180000000"] == 700  # never more in Mongo
    assert (replicas - 1) + taken == 700 - (replicas - 1) * (16 - 1)
    refused = await busy.take(WINDOW_START + 1)
    assert not refused.allowed and refused.retry_after == 9
    # The leftovers are not lost to their own replica: it hands them out until the window ends.
    assert all([(await other.take(WINDOW_START + 2)).allowed for other in limits[1:]])


async def test_a_spent_window_is_refused_without_asking_mongo_again() -> None:
    store = Counters()
    limit = SharedRateLimit(store, "issue", 60)  # 10 a window, k = 1: exact
    assert [(await limit.take(WINDOW_START)).allowed for _ in range(12)] == [True] * 10 + [False] * 2
    asked = len(store.reserves)
    assert asked == 11  # ten uses and the one refusal that found the window full
    for _ in range(100):
        assert not (await limit.take(WINDOW_START + 5)).allowed
    assert len(store.reserves) == asked


async def test_leftovers_of_a_past_window_are_dropped_and_the_next_window_is_counted_anew() -> None:
    store = Counters()
    limit = SharedRateLimit(store, "issue", 3840)  # k = 16
    assert (await limit.take(WINDOW_START + 9.5)).allowed  # 15 left over in this replica
    assert (await limit.take(WINDOW_START + 10.0)).allowed  # the next window: a new batch
    assert store.reserves == [("issue", 180_000_000, 16), ("issue", 180_000_001, 16)]
    assert store.counts == {"issue:180000000": 16, "issue:180000001": 16}


async def test_leftovers_of_a_past_window_never_pass_a_full_new_window() -> None:
    store = Counters()
    limit = SharedRateLimit(store, "issue", 3840)
    assert (await limit.take(WINDOW_START)).allowed  # 15 left over in this replica
    store.counts["issue:180000001"] = 640  # the next window is spent by other replicas
    assert not (await limit.take(WINDOW_START + 10)).allowed  # the old leftovers are no use there


async def test_fifty_concurrent_takers_cost_one_mongo_operation_per_batch() -> None:
    store = Counters(delay=0.01)
    limit = SharedRateLimit(store, "issue", 3840)  # k = 16
    decisions = await asyncio.gather(*(limit.take(WINDOW_START + 1) for _ in range(50)))
    assert all(d.allowed for d in decisions)
    assert len(store.reserves) == 4  # ceil(50 / 16), never two at once
    assert store.counts["issue:180000000"] == 64  # 50 handed out, 14 left over in this replica


async def test_concurrent_takers_at_the_end_of_a_window_never_pass_its_capacity() -> None:
    store = Counters(delay=0.005)
    replicas = [SharedRateLimit(store, "issue", 3840) for _ in range(3)]
    store.counts["issue:180000000"] = 600  # 40 left
    decisions = await asyncio.gather(*(replicas[i % 3].take(WINDOW_START + 2) for i in range(90)))
    assert store.counts["issue:180000000"] == 640
    assert 40 - 2 * 15 <= sum(d.allowed for d in decisions) <= 40


async def test_a_mongo_failure_reaches_the_takers_and_the_limit_works_again_once_it_is_back() -> None:
    store = Counters(delay=0.005)
    limit = SharedRateLimit(store, "issue", 3840)
    store.down = True
    results = await asyncio.gather(*(limit.take(WINDOW_START) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, AutoReconnect) for r in results)  # the adapter answers store_unavailable
    store.down = False
    assert (await limit.take(WINDOW_START + 1)).allowed
    assert store.counts == {"issue:180000000": 16}  # nothing was counted while it was down


async def test_take_up_to_hands_out_what_the_window_has_left_in_one_call() -> None:
    store = Counters()
    budget = SharedRateLimit(store, "renders", 60)  # 10 a window, k = 1
    assert [await budget.take_up_to(WINDOW_START, 4) for _ in range(4)] == [4, 4, 2, 0]
    assert [wanted for _, _, wanted in store.reserves] == [4, 4, 4]  # the last call asked nobody
    assert await budget.take_up_to(WINDOW_START + 10, 4) == 4  # a new window


async def test_take_up_to_mostly_serves_a_refill_from_the_lease() -> None:
    store = Counters()
    budget = SharedRateLimit(store, "renders", 4200)  # k = 16
    assert [await budget.take_up_to(WINDOW_START, 4) for _ in range(5)] == [4] * 5
    assert len(store.reserves) == 2  # 16, then 16 more for the fifth batch
    assert await budget.take_up_to(WINDOW_START, 30) == 30  # more than a batch: asked in one go
    assert store.reserves[-1] == ("renders", 180_000_000, 18)  # 12 left over, 18 more


async def test_each_prefix_has_its_own_leased_share_and_one_over_it_is_refused() -> None:
    store = Counters()
    share = PrefixShareLimit(store, 3840, 50, [24], [48])  # 320 a window for one /24 or /48, k = 10
    assert share.lease == 10
    allowed = [(await share.take(WINDOW_START, f"198.51.100.{i % 250}")).allowed for i in range(400)]
    assert allowed.count(True) == 320 and allowed[320:] == [False] * 80
    assert (await share.take(WINDOW_START, "203.0.113.9")).allowed  # another /24
    assert (await share.take(WINDOW_START, "2001:db8:1::1")).allowed
    assert store.counts["issue@198.51.100.0/24:180000000"] == 320


async def test_the_prefix_leases_one_replica_keeps_are_bounded_and_dropping_them_only_under_uses() -> None:
    store = Counters()
    share = PrefixShareLimit(store, 3840, 50, [24], [48], max_prefixes=8)
    for round_ in range(3):
        for i in range(40):
            assert (await share.take(WINDOW_START + round_, f"10.0.{i}.1")).allowed
    assert share.leases_held <= 8
    # Leases dropped with their leftovers are counted in Mongo all the same: never more than allowed.
    assert all(count <= 320 for count in store.counts.values())
    assert (await share.take(WINDOW_START + 10, "10.0.0.1")).allowed  # a new window: past leases go
    assert share.leases_held <= 8


async def test_the_hourly_budgets_stay_exact_and_a_given_back_use_serves_another_replica_at_once() -> None:
    store = Counters()
    here = WindowBudget(store, "code_misses", 3, window=3600)
    there = WindowBudget(store, "code_misses", 3, window=3600)
    assert [(await here.take(WINDOW_START)).allowed for _ in range(3)] == [True] * 3
    assert not (await there.take(WINDOW_START)).allowed
    await here.give_back(WINDOW_START)
    assert (await there.take(WINDOW_START)).allowed
    assert all(wanted == 1 for _, _, wanted in store.reserves)
