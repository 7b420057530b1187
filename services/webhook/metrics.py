"""Prometheus metrics of the webhook service: attempts by outcome, the outbox's age, disabled endpoints.

Counters are per replica (Prometheus sums them); the gauges are what this replica last read from
MongoDB, so every replica reports the same values (take ``max`` across replicas, not ``sum``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0, 36000.0)


class WebhookMetrics:
    """The webhook service's metrics, registered in one registry (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.recorded = Counter(
            "wxlogin_webhook_messages", "Messages recorded in the outbox, by event type", ["type"], registry=r
        )
        self.attempts = Counter(
            "wxlogin_webhook_deliveries",
            "Delivery attempts by outcome: delivered, failed (retried), failed_final, gone (410), refused",
            ["outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "wxlogin_webhook_delivery_seconds",
            "Time the receiver took to answer one attempt",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "wxlogin_webhook_queue_seconds",
            "Time from recording a message to its delivery",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.oldest_due = Gauge(
            "wxlogin_webhook_outbox_oldest_due_seconds",
            "Age of the oldest message that is due and not delivered (0: none), disabled endpoints aside",
            registry=r,
        )
        self.pending = Gauge("wxlogin_webhook_outbox_pending", "Messages waiting for delivery", registry=r)
        self.disabled = Gauge(
            "wxlogin_webhook_endpoint_disabled",
            "1 while the service has disabled the endpoint (410, or a message ran out of attempts)",
            ["client_id", "endpoint"],
            registry=r,
        )
