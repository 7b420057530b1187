"""The fault plans: a short one for the suite (CI) and a long one for ``make chaos``; each a
single-node run and a 3-node cluster run."""

from __future__ import annotations

from tests.chaos.faults import (
    broker_down,
    close_connections,
    cluster_node_stopped,
    gateway_killed,
    mongo_killed,
    repeated,
)
from tests.chaos.scenario import Plan

RESTART_HOLD = 2.0  # seconds between stop_app and start_app in a "broker restart"


def single_node(*, long: bool) -> Plan:
    """Gateway kill -9, Mongo killed, connection close five times, broker restart five times, broker down."""
    return Plan(
        faults=[
            gateway_killed("gateway kill -9"),
            mongo_killed("mongo killed", 20.0 if long else 5.0),
            *repeated(close_connections, "connection close", 5),
            *repeated(lambda label: broker_down(label, RESTART_HOLD), "broker restart", 5),
            broker_down("broker down", 60.0 if long else 12.0),
        ],
        rate=3.0 if long else 2.0,
        warmup=10.0 if long else 5.0,
        gap=10.0 if long else 5.0,
        settle=20.0 if long else 12.0,
        scene_ttl=120 if long else 45,
    )


def cluster(*, long: bool) -> Plan:
    """A 3-node cluster, one node (the first, where the services connected) stopped mid-logins."""
    return Plan(
        faults=[cluster_node_stopped("cluster node stopped")],
        nodes=3,
        rate=3.0 if long else 2.0,
        warmup=10.0 if long else 6.0,
        gap=20.0 if long else 10.0,
        settle=20.0 if long else 12.0,
        scene_ttl=120 if long else 45,
    )
