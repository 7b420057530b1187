"""Per-IP token buckets of the gateway: a burst at once, then ``per_minute``, Retry-After rounded up."""

from __future__ import annotations

import pytest

from services.gateway.errors import RateLimited
from services.gateway.limits import GatewayLimits, KeyedRateLimit
from shared.prefixes import prefix_keys
from tests.support import ManualClock, make_settings


def test_a_burst_is_allowed_then_one_request_per_interval() -> None:
    clock = ManualClock(100.0)
    limit = KeyedRateLimit("issue", per_minute=6, burst=3, clock=clock)
    assert [limit.hit("a") for _ in range(3)] == [None, None, None]
    assert limit.hit("a") == pytest.approx(10.0)
    clock.now += 4
    assert limit.hit("a") == pytest.approx(6.0)
    clock.now += 6
    assert limit.hit("a") is None
    assert limit.hit("b") is None  # each key its own bucket


def test_an_idle_client_gets_its_burst_back_but_no_more() -> None:
    clock = ManualClock(100.0)
    limit = KeyedRateLimit("mp", per_minute=60, burst=2, clock=clock)
    limit.hit("a")
    limit.hit("a")
    clock.now += 3600
    assert [limit.hit("a") for _ in range(3)] == [None, None, pytest.approx(1.0)]


def test_zero_per_minute_disables_a_limit() -> None:
    limit = KeyedRateLimit("ws", per_minute=0, burst=1)
    assert not limit.enabled
    assert all(limit.hit("a") is None for _ in range(1000))


def test_memory_is_bounded_by_forgetting_the_least_recent_clients() -> None:
    limit = KeyedRateLimit("issue", per_minute=6, burst=1, clock=ManualClock(100.0), max_keys=3)
    for key in ("a", "b", "c", "a", "d"):
        limit.hit(key)
    assert len(limit) == 3
    assert limit.hit("a") is not None  # "a" was seen recently: still limited
    assert limit.hit("b") is None  # "b" was forgotten: starts with a full bucket


def test_the_gateway_refuses_with_rate_limited_and_a_whole_number_of_seconds() -> None:
    clock = ManualClock(100.0)
    limits = GatewayLimits.from_settings(
        make_settings(limit_issue_per_ip_per_minute=7, limit_issue_per_ip_burst=1), clock=clock
    )
    limits.check("issue", "203.0.113.5")
    with pytest.raises(RateLimited) as refused:
        limits.check("issue", "203.0.113.5")
    assert refused.value.error_code == "rate_limited"
    assert refused.value.retry_after == 9.0  # 60/7 = 8.57 s, rounded up so a retry is not refused again
    limits.check("issue", "203.0.113.6")


def test_a_client_is_counted_under_its_address_and_each_wider_prefix() -> None:
    assert prefix_keys("2001:db8:0:ab12::1", [32, 24], [64, 56, 48]) == [
        "2001:db8:0:ab12::/64",
        "2001:db8:0:ab00::/56",
        "2001:db8::/48",
    ]
    assert prefix_keys("::ffff:198.51.100.7", [32, 24], [64]) == ["198.51.100.7/32", "198.51.100.0/24"]
    assert prefix_keys("not an address", [32, 24], [64]) == ["not an address"]


def test_a_refusal_by_a_wider_prefix_spends_nothing_of_the_address_itself() -> None:
    clock = ManualClock(100.0)
    limits = GatewayLimits.from_settings(
        make_settings(limit_issue_per_ip_per_minute=6, limit_issue_per_ip_burst=1, limit_prefix_factor=2),
        clock=clock,
    )
    limits.check("issue", "198.51.100.1")
    limits.check("issue", "198.51.100.2")  # the /24 allows 2 at once
    with pytest.raises(RateLimited):
        limits.check("issue", "198.51.100.3")
    clock.now += 10  # the /24 has one token again; .3 never spent its own
    limits.check("issue", "198.51.100.3")


def test_the_per_user_limit_counts_a_user_wherever_the_requests_come_from() -> None:
    limits = GatewayLimits.from_settings(
        make_settings(limit_user_per_minute=6, limit_user_burst=2), clock=ManualClock(100.0)
    )
    limits.check_user("user", "u1")
    limits.check_user("user", "u1")
    with pytest.raises(RateLimited):
        limits.check_user("user", "u1")
    limits.check_user("user", "u2")


@pytest.mark.parametrize("value", ["24,32", "33", "64,0", ""])
def test_prefix_lengths_must_be_valid_and_narrowest_first(value: str) -> None:
    with pytest.raises(ValueError, match="limit_ipv4_prefixes"):
        make_settings(limit_ipv4_prefixes=value)
