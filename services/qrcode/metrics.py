"""Prometheus metrics of the qrcode service: scene transitions, issue-to-confirm time, the pool.

Counters are per replica; Prometheus sums them. Each transition is counted by the replica whose
conditional update won, so the sums are exact (an expiry is never counted twice).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CONFIRM_BUCKETS = (2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)
RENDER_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class SceneMetrics:
    """The qrcode service's metrics, registered in one registry (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.issued = Counter(
            "wxlogin_scenes_issued", "Scenes issued, by where the code came from", ["source"], registry=r
        )
        self.scanned = Counter("wxlogin_scenes_scanned", "Scenes scanned by a phone", registry=r)
        self.confirmed = Counter("wxlogin_scenes_confirmed", "Scenes confirmed by a phone", registry=r)
        self.cancelled = Counter("wxlogin_scenes_cancelled", "Scenes cancelled", registry=r)
        self.expired = Counter("wxlogin_scenes_expired", "Scenes moved to expired by the sweeper", registry=r)
        self.redeemed = Counter(
            "wxlogin_scenes_redeemed", "Confirmed scenes collected by their browser", registry=r
        )
        self.refused = Counter(
            "wxlogin_scene_refusals", "Refused scene requests", ["action", "code"], registry=r
        )
        self.issue_to_confirm = Histogram(
            "wxlogin_scene_issue_to_confirm_seconds",
            "Time from issuing a scene to its confirmation",
            buckets=CONFIRM_BUCKETS,
            registry=r,
        )
        self.pool_size = Gauge(
            "wxlogin_scene_pool_size", "Ready pre-rendered codes, as last counted by this replica", registry=r
        )
        self.renders = Counter(
            "wxlogin_code_renders", "getwxacodeunlimit calls", ["purpose", "outcome"], registry=r
        )
        self.render_seconds = Histogram(
            "wxlogin_code_render_seconds", "getwxacodeunlimit latency", buckets=RENDER_BUCKETS, registry=r
        )
