"""Prometheus metrics of one bus instance, and the set of deliveries being handled (for shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BusMetrics:
    """Prometheus metrics of one bus instance; every series carries the ``service`` label."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.inflight = Gauge(
            "wxlogin_bus_inflight", "Deliveries being handled now", ["service"], registry=registry
        ).labels(service)
        self.deliveries = Counter(
            "wxlogin_bus_deliveries",
            "Deliveries handled, by kind (event/rpc) and outcome (ack/reject/requeue/retry)",
            ["service", "kind", "outcome"],
            registry=registry,
        )
        self.calls = Counter(
            "wxlogin_bus_rpc_calls",
            "RPC calls made, by method and outcome (ok/error/timeout/unavailable)",
            ["service", "method", "outcome"],
            registry=registry,
        )
        self.call_seconds = Histogram(
            "wxlogin_bus_rpc_call_seconds",
            "RPC round trip as the caller sees it",
            ["service", "method"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.draining = Gauge(
            "wxlogin_bus_draining", "1 once this instance stopped consuming", ["service"], registry=registry
        ).labels(service)
        self.connected = Gauge(
            "wxlogin_bus_connected",
            "1 while the bus is usable (connection, channels and RPC reply path up), else 0",
            ["service"],
            registry=registry,
        ).labels(service)
        self.reconnects = Counter(
            "wxlogin_bus_reconnects",
            "Times the bus lost its broker connection and got it back",
            ["service"],
            registry=registry,
        ).labels(service)

    def delivered(self, kind: str, outcome: str) -> None:
        """Count one delivery's outcome."""
        self.deliveries.labels(self.service, kind, outcome).inc()

    def called(self, method: str, outcome: str, seconds: float) -> None:
        """Count one RPC call and its duration."""
        self.calls.labels(self.service, method, outcome).inc()
        self.call_seconds.labels(self.service, method).observe(seconds)


class InFlight:
    """The handler tasks of deliveries being handled, so shutdown can wait for them (or cancel them)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.gauge: Gauge | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count the current task as in flight for the duration of the block."""
        task = asyncio.current_task()
        assert task is not None, "track() runs inside a task"
        self._tasks.add(task)
        if self.gauge is not None:
            self.gauge.inc()
        try:
            yield
        finally:
            self._tasks.discard(task)
            if self.gauge is not None:
                self.gauge.dec()

    async def finish(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the tracked tasks; cancel the rest. Returns how many were cancelled."""
        pending = set(self._tasks)
        if pending and timeout > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            # Let the cancelled handlers run their clean-up (requeueing their message).
            await asyncio.wait(pending, timeout=2.0)
        return len(pending)
