"""Limits every qrcode replica agrees on: fixed-window counters in Mongo (``scene_rates``).

A limit of ``per_minute`` allows ``per_minute / 6`` uses in each 10 s window. Any sliding minute
overlaps at most seven windows, so it sees at most ``7/6 * per_minute`` uses: 4200/min stays under
WeChat's 5000/min for getwxacodeunlimit even when traffic bunches at a window boundary. Issues are
also counted per address prefix, so no /24 or /48 can take the whole global budget.

The per-minute limits are leased: a replica counts a small batch of uses of the current window in
Mongo at once (:func:`lease_size`) and hands them out itself until they are spent or the window ends;
leftovers of a past window are dropped. The count in Mongo never exceeds the window's capacity, so
nothing is ever allowed beyond the limit; the price is under-use, at most ``(replicas - 1) * (k - 1)``
uses of a window that fills up (each other replica may hold at most ``k - 1`` unspent uses).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Protocol

from shared.prefixes import widest_prefix

WINDOW_SECONDS = 10.0
# Counters outlive their window a little, so a slow replica's late increment still finds its window.
KEEP_SECONDS = 120.0
# The largest batch a replica leases, and the share of a window one batch may be at most (1/32): with
# four replicas a full window goes under-used by at most 3 * 15 uses, under 10 % of it.
MAX_LEASE = 16
LEASE_SHARE = 32
# Prefixes whose leases one replica keeps; beyond, the oldest lease is dropped (its leftovers unused).
MAX_PREFIX_LEASES = 4096


class WindowCounts(Protocol):
    """Fixed-window counters every replica shares (:class:`services.qrcode.store.RateWindowStore`)."""

    async def reserve(self, name: str, window: int, limit: int, wanted: int, *, purge_at: float) -> int:
        """Count up to ``wanted`` uses of the window, never past ``limit``; how many were counted."""
        ...

    async def take(self, name: str, window: int, limit: int, *, purge_at: float) -> bool:
        """Count one use of the window if fewer than ``limit`` were counted."""
        ...

    async def give_back(self, name: str, window: int) -> None:
        """Uncount one use of the window."""
        ...


def lease_size(capacity: int) -> int:
    """How many uses of a window of ``capacity`` a replica counts in Mongo at once: at most
    ``capacity // 32`` (so replicas cannot starve each other) and 16, at least one (exact counting)."""
    return max(1, min(MAX_LEASE, capacity // LEASE_SHARE))


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether one use is allowed, and otherwise how many whole seconds until the next window opens."""

    allowed: bool
    retry_after: float = 0.0


def _refusal(now: float, window: float) -> Decision:
    # Whole seconds, rounded up: a client that waits Retry-After is not refused again.
    window_end = (math.floor(now / window) + 1) * window
    return Decision(False, float(max(1, math.ceil(window_end - now))))


def _purge_at(index: int, window: float) -> float:
    """When the counter of window ``index`` may go: a while after the window ends."""
    return (index + 1) * window + KEEP_SECONDS


@dataclass(slots=True)
class _Lease:
    """Uses of window ``index`` counted in Mongo by this replica and not yet handed out."""

    index: int
    left: int = 0
    spent: bool = False  # Mongo had no more for this window: refuse without asking again
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def restart(self, index: int) -> None:
        """Move to window ``index``: the leftovers of the past one are dropped."""
        self.index, self.left, self.spent = index, 0, False


class _Leases:
    """Leases of fixed windows of ``capacity`` uses, one per name; one Mongo request at a time per name.

    Takers of one name that find the lease empty queue on its lock: the first asks Mongo for a batch,
    the others are then served from it (or ask for the next batch), so concurrent takers cost one
    Mongo operation per batch, not one each. A Mongo error reaches the taker that asked, as unleased.
    """

    def __init__(
        self, store: WindowCounts, capacity: int, window: float, *, max_names: int = MAX_PREFIX_LEASES
    ) -> None:
        self._store = store
        self.capacity = capacity
        self.window = window
        self.batch = lease_size(capacity)
        self._max_names = max_names
        self._leases: dict[str, _Lease] = {}

    def __len__(self) -> int:
        return len(self._leases)

    async def take(self, name: str, now: float, wanted: int = 1) -> int:
        """Hand out up to ``wanted`` uses of ``name``'s window at ``now``; returns how many (0: full)."""
        index = math.floor(now / self.window)
        lease = self._lease(name, index)
        if lease.index == index and lease.left >= wanted:  # the common case: no lock, no Mongo
            lease.left -= wanted
            return wanted
        async with lease.lock:
            if lease.index != index:  # the window changed while this taker waited: leftovers go
                lease.restart(index)
            got = min(wanted, lease.left)
            lease.left -= got
            if got == wanted or lease.spent:
                return got
            # At least a batch, and what this taker still needs: what is left over stays under a batch.
            asked = max(self.batch, wanted - got)
            purge_at = _purge_at(index, self.window)
            try:
                counted = await self._store.reserve(name, index, self.capacity, asked, purge_at=purge_at)
            except BaseException:
                lease.left += got  # handed back: this taker was refused nothing it can use
                raise
            if counted < asked:  # Mongo gave all that was left: nobody gets more in this window
                lease.spent = True
            more = min(wanted - got, counted)
            lease.left += counted - more
            return got + more

    def _lease(self, name: str, index: int) -> _Lease:
        lease = self._leases.get(name)
        if lease is None:
            if len(self._leases) >= self._max_names:
                self._prune(index)
            lease = self._leases[name] = _Lease(index)
        elif lease.index != index and not lease.lock.locked():
            lease.restart(index)
        return lease

    def _prune(self, index: int) -> None:
        """Drop idle leases of past windows, then, while more than three quarters of ``max_names``
        are left, the oldest idle ones (their leftovers go unused: under-use, never over-use)."""
        idle = [name for name, lease in self._leases.items() if not lease.lock.locked()]
        for name in [name for name in idle if self._leases[name].index != index]:
            del self._leases[name]
        excess = len(self._leases) - self._max_names * 3 // 4
        for name in [name for name in idle if name in self._leases][: max(0, excess)]:
            del self._leases[name]


class SharedRateLimit:
    """At most ``per_minute / 6`` uses per 10 s window, counted in Mongo by every replica (leased)."""

    def __init__(
        self, store: WindowCounts, name: str, per_minute: int, *, window: float = WINDOW_SECONDS
    ) -> None:
        self.name = name
        self.window = window
        # Limits under 6/min round up to one use per window.
        self.capacity = max(1, math.floor(per_minute * window / 60.0))
        self._leases = _Leases(store, self.capacity, window, max_names=1)

    @property
    def lease(self) -> int:
        """How many uses this replica counts in Mongo at once."""
        return self._leases.batch

    async def take(self, now: float) -> Decision:
        """Count one use at ``now`` if the current window has room."""
        if await self._leases.take(self.name, now):
            return Decision(True)
        return _refusal(now, self.window)

    async def take_up_to(self, now: float, wanted: int) -> int:
        """Count up to ``wanted`` uses at ``now`` at once; returns how many the window had room for."""
        return await self._leases.take(self.name, now, wanted) if wanted > 0 else 0


class PrefixShareLimit:
    """No address prefix (with the defaults a /24 or /48) may take more than ``share_percent`` of the
    global issue limit's window (security M2), counted in Mongo by every replica under ``issue@<net>``
    (leased per prefix, like :class:`SharedRateLimit`).

    Checked before the global limit, so a prefix over its share spends nothing of what others get.
    """

    def __init__(
        self,
        store: WindowCounts,
        global_per_minute: int,
        share_percent: int,
        ipv4: list[int],
        ipv6: list[int],
        *,
        window: float = WINDOW_SECONDS,
        max_prefixes: int = MAX_PREFIX_LEASES,
    ) -> None:
        self._ipv4, self._ipv6 = ipv4, ipv6
        self.window = window
        per_minute = global_per_minute * share_percent // 100
        self.capacity = max(1, math.floor(per_minute * window / 60.0))
        self._leases = _Leases(store, self.capacity, window, max_names=max_prefixes)

    @property
    def lease(self) -> int:
        """How many uses of one prefix's share this replica counts in Mongo at once."""
        return self._leases.batch

    @property
    def leases_held(self) -> int:
        """How many prefixes' leases this replica keeps (bounded by ``max_prefixes``)."""
        return len(self._leases)

    async def take(self, now: float, ip: str) -> Decision:
        """Count one issue of ``ip``'s widest prefix at ``now`` if its share of the window has room."""
        name = f"issue@{widest_prefix(ip, self._ipv4, self._ipv6)}"
        if await self._leases.take(name, now):
            return Decision(True)
        return _refusal(now, self.window)


class WindowBudget:
    """``capacity`` uses per fixed window of ``window`` seconds under ``name`` (and, with a key, one
    budget per key), counted in Mongo by every replica; a use that turns out not to count is given
    back. The typed login codes' hourly budgets (per WeChat user; misses of all users together).

    Not leased: the budgets are small and a given-back use must be usable by any replica at once.
    """

    def __init__(self, store: WindowCounts, name: str, capacity: int, *, window: float) -> None:
        self._store = store
        self.name = name
        self.capacity = capacity
        self.window = window

    async def take(self, now: float, key: str = "") -> Decision:
        """Count one use at ``now`` (of ``key``'s budget) if its window has room."""
        if self.capacity <= 0:  # nothing is allowed: say when the next window opens all the same
            return _refusal(now, self.window)
        index = math.floor(now / self.window)
        purge_at = _purge_at(index, self.window)
        if await self._store.take(self._name(key), index, self.capacity, purge_at=purge_at):
            return Decision(True)
        return _refusal(now, self.window)

    async def give_back(self, now: float, key: str = "") -> None:
        """Uncount one use taken at ``now`` (of ``key``'s budget)."""
        await self._store.give_back(self._name(key), math.floor(now / self.window))

    def _name(self, key: str) -> str:
        return f"{self.name}@{key}" if key else self.name
