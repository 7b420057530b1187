"""Logins continue when one node of a private 3-node RabbitMQ cluster stops in the middle of them
(the services get the three nodes' URLs, comma-separated, in WXLOGIN_AMQP_URL)."""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos import plans, report
from tests.chaos.report import none_of
from tests.chaos.scenario import Run, run

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster_run() -> Run:
    """One run on a fresh 3-node cluster, shared by the assertions below."""
    result = asyncio.run(run(plans.cluster(long=False)))
    print(f"\n{report.table(result)}\n{report.outcomes(result)}")
    return result


def test_the_cluster_forms_and_a_node_can_be_stopped(cluster_run: Run) -> None:
    assert len(cluster_run.node_start_s) == 3
    none_of(cluster_run.errors)


def test_the_stopped_node_held_connections_and_quorum_queues(cluster_run: Run) -> None:
    detail = cluster_run.faults[0].detail
    assert detail["connections"], "no service was connected to the node that was stopped"
    types = detail["queue_types"]
    assert isinstance(types, dict)
    durable = {name: kind for name, kind in types.items() if name.endswith(".rpc")}
    assert durable, f"no RPC queue on the cluster: {types}"
    assert set(durable.values()) == {"quorum"}, durable


def test_no_confirmed_login_is_lost_or_completed_twice_when_a_node_stops(cluster_run: Run) -> None:
    none_of(report.lost_or_doubled(cluster_run), cluster_run.warnings)


def test_logins_continue_after_a_node_stops(cluster_run: Run) -> None:
    none_of(report.late_logins_complete(cluster_run), cluster_run.warnings)


def test_no_request_gets_500_or_hangs_when_a_node_stops(cluster_run: Run) -> None:
    none_of(report.no_500_no_hang(cluster_run), cluster_run.warnings)
