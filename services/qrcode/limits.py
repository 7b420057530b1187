"""Limits every qrcode replica agrees on: fixed-window counters in Mongo (``scene_rates``).

A limit of ``per_minute`` allows ``per_minute / 6`` uses in each 10 s window. Any sliding minute
overlaps at most seven windows, so it sees at most ``7/6 * per_minute`` uses: 4200/min stays under
WeChat's 5000/min for getwxacodeunlimit even when traffic bunches at a window boundary. Issues are
also counted per address prefix, so no /24 or /48 can take the whole global budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.qrcode.store import RateWindowStore
from shared.prefixes import widest_prefix

WINDOW_SECONDS = 10.0
# Counters outlive their window a little, so a slow replica's late increment still finds its window.
KEEP_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether one use is allowed, and otherwise how many whole seconds until the next window opens."""

    allowed: bool
    retry_after: float = 0.0


class SharedRateLimit:
    """At most ``per_minute / 6`` uses per 10 s window, counted in Mongo by every replica."""

    def __init__(
        self, store: RateWindowStore, name: str, per_minute: int, *, window: float = WINDOW_SECONDS
    ) -> None:
        self._store = store
        self.name = name
        self.window = window
        # Limits under 6/min round up to one use per window.
        self.capacity = max(1, math.floor(per_minute * window / 60.0))

    async def take(self, now: float) -> Decision:
        """Count one use at ``now`` if the current window has room."""
        return await _take(self._store, self.name, self.capacity, self.window, now)


async def _take(store: RateWindowStore, name: str, capacity: int, window: float, now: float) -> Decision:
    index = math.floor(now / window)
    window_end = (index + 1) * window
    allowed = await store.take(name, index, capacity, purge_at=window_end + KEEP_SECONDS)
    # Whole seconds, rounded up: a client that waits Retry-After is not refused again.
    return Decision(True) if allowed else Decision(False, float(max(1, math.ceil(window_end - now))))


class PrefixShareLimit:
    """No address prefix (with the defaults a /24 or /48) may take more than ``share_percent`` of the
    global issue limit's window (security M2), counted in Mongo by every replica under ``issue@<net>``.

    Checked before the global limit, so a prefix over its share spends nothing of what others get.
    """

    def __init__(
        self,
        store: RateWindowStore,
        global_per_minute: int,
        share_percent: int,
        ipv4: list[int],
        ipv6: list[int],
        *,
        window: float = WINDOW_SECONDS,
    ) -> None:
        self._store = store
        self._ipv4, self._ipv6 = ipv4, ipv6
        self.window = window
        per_minute = global_per_minute * share_percent // 100
        self.capacity = max(1, math.floor(per_minute * window / 60.0))

    async def take(self, now: float, ip: str) -> Decision:
        """Count one issue of ``ip``'s widest prefix at ``now`` if its share of the window has room."""
        name = f"issue@{widest_prefix(ip, self._ipv4, self._ipv6)}"
        return await _take(self._store, name, self.capacity, self.window, now)


class WindowBudget:
    """``capacity`` uses per fixed window of ``window`` seconds under ``name`` (and, with a key, one
    budget per key), counted in Mongo by every replica; a use that turns out not to count is given
    back. The typed login codes' hourly budgets (per WeChat user; misses of all users together)."""

    def __init__(self, store: RateWindowStore, name: str, capacity: int, *, window: float) -> None:
        self._store = store
        self.name = name
        self.capacity = capacity
        self.window = window

    async def take(self, now: float, key: str = "") -> Decision:
        """Count one use at ``now`` (of ``key``'s budget) if its window has room."""
        if self.capacity <= 0:  # nothing is allowed: say when the next window opens all the same
            window_end = (math.floor(now / self.window) + 1) * self.window
            return Decision(False, float(max(1, math.ceil(window_end - now))))
        return await _take(self._store, self._name(key), self.capacity, self.window, now)

    async def give_back(self, now: float, key: str = "") -> None:
        """Uncount one use taken at ``now`` (of ``key``'s budget)."""
        await self._store.give_back(self._name(key), math.floor(now / self.window))

    def _name(self, key: str) -> str:
        return f"{self.name}@{key}" if key else self.name
