"""Per-client rate limits of this gateway instance: token buckets in memory, keyed by client address
and by each wider prefix of it (an IPv4 /24; an IPv6 /56 and /48), and per user for bearer calls.

Each limit allows ``burst`` requests at once and ``per_minute`` sustained; each wider prefix allows
``limit_prefix_factor`` times the one before it, so one holder of many addresses (a /56 has 256 /64s)
counts as one client. They live in this process only: behind N gateways a client gets up to N times a
limit when the balancer spreads its requests (exactly the limit with IP affinity). The limits that
protect WeChat's quota are global and live in the qrcode service, where every replica counts in Mongo
(and no /24 or /48 may take more than a share of the issue budget).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter

from services.gateway.errors import RateLimited
from shared.config import Settings
from shared.prefixes import prefix_keys

MAX_KEYS = 100_000  # memory bound; the least recently seen keys are forgotten first


class KeyedRateLimit:
    """A token bucket per key: ``per_minute`` sustained (0 disables), ``burst`` at once."""

    def __init__(
        self,
        name: str,
        per_minute: int,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.name = name
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at); insertion = recency

    @property
    def enabled(self) -> bool:
        """False when configured with 0 per minute."""
        return self.rate > 0

    def wait(self, key: str) -> float | None:
        """What :meth:`hit` would answer for ``key``, counting nothing."""
        if not self.enabled:
            return None
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def hit(self, key: str) -> float | None:
        """Count one request of ``key``: None when allowed, else the seconds until one is."""
        if not self.enabled:
            return None
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait: float | None = None
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            # A forgotten bucket starts full again, which only ever favours that client.
            del self._buckets[next(iter(self._buckets))]
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class PrefixRateLimit:
    """One named limit counted under a client's address and each wider prefix of it.

    Level ``i`` (the ``i``-th prefix length of the address's family) allows ``factor ** i`` times the
    address's own limit. A request is counted at every level or at none: a refusal by the /24 spends
    nothing of the address's own bucket.
    """

    def __init__(
        self,
        name: str,
        per_minute: int,
        burst: int,
        *,
        ipv4: list[int],
        ipv6: list[int],
        factor: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._ipv4, self._ipv6 = ipv4, ipv6
        levels = max(len(ipv4), len(ipv6))
        self._levels = [
            KeyedRateLimit(name, per_minute * factor**i, burst * factor**i, clock=clock)
            for i in range(levels)
        ]

    def hit(self, ip: str) -> float | None:
        """Count one request of ``ip`` at every level: None when allowed, else the longest wait."""
        keyed = list(zip(self._levels, prefix_keys(ip, self._ipv4, self._ipv6), strict=False))
        waits = [w for limit, key in keyed if (w := limit.wait(key)) is not None]
        if waits:
            return max(waits)
        for limit, key in keyed:
            limit.hit(key)
        return None


class GatewayLimits:
    """The named limits of the gateway: per client address and prefix ``issue``, ``mp``, ``ws``,
    ``poll``, ``login`` (``/api/mp/login``), ``session`` (refresh, logout, phone, decrypt),
    ``code_entry`` (typed login codes); per user ``user`` (phone, decrypt, bearer logout)."""

    def __init__(
        self,
        limits: list[PrefixRateLimit],
        registry: CollectorRegistry | None = None,
        *,
        per_user: Sequence[KeyedRateLimit] = (),
    ) -> None:
        self._limits = {limit.name: limit for limit in limits}
        self._per_user = {limit.name: limit for limit in per_user}
        self.refused = Counter(
            "wxlogin_gateway_rate_limited",
            "Requests refused by a per-client or per-user limit",
            ["limit"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> GatewayLimits:
        """The limits configured by ``WXLOGIN_LIMIT_*``."""
        s = settings

        def per_ip(name: str, per_minute: int, burst: int) -> PrefixRateLimit:
            return PrefixRateLimit(
                name,
                per_minute,
                burst,
                ipv4=s.limit_ipv4_prefixes,
                ipv6=s.limit_ipv6_prefixes,
                factor=s.limit_prefix_factor,
                clock=clock,
            )

        return cls(
            [
                per_ip("issue", s.limit_issue_per_ip_per_minute, s.limit_issue_per_ip_burst),
                per_ip("mp", s.limit_mp_per_ip_per_minute, s.limit_mp_per_ip_burst),
                per_ip("ws", s.limit_ws_per_ip_per_minute, s.limit_ws_per_ip_burst),
                per_ip("poll", s.limit_poll_per_ip_per_minute, s.limit_poll_per_ip_burst),
                per_ip("login", s.limit_login_per_ip_per_minute, s.limit_login_per_ip_burst),
                per_ip("session", s.limit_session_per_ip_per_minute, s.limit_session_per_ip_burst),
                per_ip(
                    "code_entry", s.limit_code_entry_per_ip_per_minute, s.limit_code_entry_per_ip_burst
                ),
            ],
            registry,
            per_user=[KeyedRateLimit("user", s.limit_user_per_minute, s.limit_user_burst, clock=clock)],
        )

    def check(self, name: str, ip: str) -> None:
        """Count a request of ``ip`` against limit ``name``; raises :class:`RateLimited` (429)."""
        self._refuse_if(name, self._limits[name].hit(ip))

    def check_user(self, name: str, user_id: str) -> None:
        """Count a request of user ``user_id`` against per-user limit ``name`` (429 when over)."""
        self._refuse_if(name, self._per_user[name].hit(user_id))

    def _refuse_if(self, name: str, wait: float | None) -> None:
        if wait is not None:
            self.refused.labels(name).inc()
            raise RateLimited(retry_after=float(math.ceil(wait)))
