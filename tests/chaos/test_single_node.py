"""Logins ride out every fault on one private RabbitMQ node: gateway kill -9, Mongo killed and
restarted, connection close five times, broker restart five times, broker down (the short in-suite plan)."""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos import plans, report
from tests.chaos.report import none_of
from tests.chaos.scenario import Run, run

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def chaos_run() -> Run:
    """One run of the plan, shared by the assertions below (about two minutes)."""
    result = asyncio.run(run(plans.single_node(long=False)))
    print(f"\n{report.table(result)}\n{report.outcomes(result)}")
    return result


def test_every_fault_was_injected(chaos_run: Run) -> None:
    none_of(chaos_run.errors)


def test_no_confirmed_login_is_lost_or_completed_twice(chaos_run: Run) -> None:
    none_of(report.lost_or_doubled(chaos_run), chaos_run.warnings)


def test_every_login_started_5s_after_the_last_fault_completes(chaos_run: Run) -> None:
    none_of(report.late_logins_complete(chaos_run), chaos_run.warnings)


def test_no_request_gets_500_or_hangs(chaos_run: Run) -> None:
    none_of(report.no_500_no_hang(chaos_run), chaos_run.warnings)


def test_each_outage_answers_503(chaos_run: Run) -> None:
    none_of(report.outages_answer_503(chaos_run), chaos_run.warnings)


def test_readyz_turns_503_during_an_outage_and_200_after(chaos_run: Run) -> None:
    none_of(report.readiness_tracks(chaos_run), chaos_run.warnings)
