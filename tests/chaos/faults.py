"""The faults a chaos run injects, each timed: when it was injected and when the component was back.
Broker operations go through ``rabbitmqctl -n <private node>`` or the private node's PID only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.chaos.stack import Stack


@dataclass
class Fault:
    """One injected fault. ``outage`` faults leave a component down for a while: requests then must
    get 503 and ``/readyz`` must turn 503 (``component`` says whose checks: ``bus`` or ``mongo``)."""

    name: str
    injected: float
    back: float
    outage: bool = False
    component: str = ""  # "bus", "mongo" or "" (nothing the services depend on went away)
    detail: dict[str, object] = field(default_factory=dict)  # what the fault found, e.g. on a node

    @property
    def down_s(self) -> float:
        """Seconds between the injection and the component being back."""
        return self.back - self.injected


Inject = Callable[[Stack], Awaitable[Fault]]


def close_connections(label: str) -> Inject:
    """``rabbitmqctl close_all_connections`` on the first node: every service loses its connection."""

    async def inject(stack: Stack) -> Fault:
        at = time.monotonic()
        await asyncio.to_thread(stack.nodes[0].close_all_connections, "chaos")
        return Fault(label, at, time.monotonic(), component="bus")

    return inject


def broker_down(label: str, seconds: float) -> Inject:
    """``stop_app``, ``seconds`` of no broker, ``start_app``: a broker restart (or a long outage)."""

    async def inject(stack: Stack) -> Fault:
        node = stack.nodes[0]
        at = time.monotonic()
        await asyncio.to_thread(node.stop_app)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - at)))
        await asyncio.to_thread(node.start_app)
        return Fault(label, at, time.monotonic(), outage=True, component="bus")

    return inject


def cluster_node_stopped(label: str, index: int = 0) -> Inject:
    """Stop one node of the cluster by PID (the first is where every service connected) and keep it
    stopped: the other two hold the quorum."""

    async def inject(stack: Stack) -> Fault:
        node = stack.nodes[index]
        # What the stop takes away: the services' connections there, and the queue types it holds.
        detail = {
            "connections": await asyncio.to_thread(node.connections),
            "queue_types": await asyncio.to_thread(node.queue_types),
        }
        at = time.monotonic()
        await asyncio.to_thread(node.stop)
        return Fault(label, at, time.monotonic(), component="bus", detail=detail)

    return inject


def mongo_killed(label: str, seconds: float) -> Inject:
    """``kill -9`` nx-27017, ``seconds`` later start it again on the same port and data."""

    async def inject(stack: Stack) -> Fault:
        at = time.monotonic()
        await asyncio.to_thread(stack.mongo.kill)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - at)))
        await asyncio.to_thread(stack.mongo.start)
        return Fault(label, at, time.monotonic(), outage=True, component="mongo")

    return inject


def gateway_killed(label: str) -> Inject:
    """``kill -9`` one of the two gateways; browsers move to the other; a replacement starts."""

    async def inject(stack: Stack) -> Fault:
        at = time.monotonic()
        await stack.kill_gateway()
        back = time.monotonic()  # the other gateway serves all along
        await stack.add_gateway()
        return Fault(label, at, back)

    return inject


def repeated(make: Callable[[str], Inject], name: str, times: int) -> list[Inject]:
    """``times`` faults of one kind, labelled ``name #1`` … ``name #n``."""
    return [make(f"{name} #{i}") for i in range(1, times + 1)]
