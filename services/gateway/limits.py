"""Per-client rate limits of this gateway instance: token buckets in memory, keyed by client IP.

Each limit allows ``burst`` requests at once and ``per_minute`` sustained. They live in this process
only: behind N gateways a client gets up to N times a limit when the balancer spreads its requests
(exactly the limit with IP affinity). The limit that protects WeChat's quota is global and lives in
the qrcode service, where every replica counts in Mongo.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from services.gateway.clientip import limit_key
from services.gateway.errors import RateLimited
from shared.config import Settings

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


class GatewayLimits:
    """The named per-IP limits of the gateway: ``issue``, ``mp``, ``ws``, ``poll``."""

    def __init__(self, limits: list[KeyedRateLimit], registry: CollectorRegistry | None = None) -> None:
        self._limits = {limit.name: limit for limit in limits}
        self.refused = Counter(
            "wxlogin_gateway_rate_limited",
            "Requests refused by a per-IP limit",
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
        return cls(
            [
                KeyedRateLimit(
                    "issue", s.limit_issue_per_ip_per_minute, s.limit_issue_per_ip_burst, clock=clock
                ),
                KeyedRateLimit("mp", s.limit_mp_per_ip_per_minute, s.limit_mp_per_ip_burst, clock=clock),
                KeyedRateLimit("ws", s.limit_ws_per_ip_per_minute, s.limit_ws_per_ip_burst, clock=clock),
                KeyedRateLimit(
                    "poll", s.limit_poll_per_ip_per_minute, s.limit_poll_per_ip_burst, clock=clock
                ),
            ],
            registry,
        )

    def check(self, name: str, ip: str) -> None:
        """Count a request of ``ip`` against limit ``name``; raises :class:`RateLimited` (429)."""
        wait = self._limits[name].hit(limit_key(ip))
        if wait is not None:
            self.refused.labels(name).inc()
            raise RateLimited(retry_after=float(math.ceil(wait)))
