"""The webhook service's pure rules: the retry schedule, Retry-After, the SSRF classifier and URL guard,
and how bus events become the events a site receives."""

from __future__ import annotations

import ipaddress
import json
import socket
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from standardwebhooks import Webhook

from services.webhook.events import from_bus, message_id, render
from services.webhook.handlers import RetryPolicy
from services.webhook.sender import parse_retry_after, signature_header
from services.webhook.ssrf import AddressRefused, GuardedResolver, UrlGuard, classify
from shared.clients import WEBHOOK_EVENTS, Client
from shared.config import Settings
from shared.messages import (
    LoginConfirmed,
    PhoneNumberBound,
    SceneCancelled,
    SceneExpired,
    SceneScanned,
    SessionRevoked,
    UserCreated,
)
from shared.subjects import subject

SCENE = "S" * 32
KEY = b"k" * 32
NOW = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)

# --- the retry schedule ---------------------------------------------------------------------------


def test_the_default_schedule_is_standard_webhooks_and_the_setting_says_so() -> None:
    spec = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)  # at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
    assert RetryPolicy().schedule == spec
    assert RetryPolicy.from_settings(Settings(_env_file=None)).schedule == spec  # type: ignore[call-arg]
    assert RetryPolicy().attempts == 8


@pytest.mark.parametrize("attempts", range(1, 8))
def test_each_retry_waits_its_scheduled_delay_within_ten_percent_jitter(attempts: int) -> None:
    policy = RetryPolicy()
    low = policy.delay_after(attempts, rng=lambda: 0.0)
    high = policy.delay_after(attempts, rng=lambda: 0.999999)
    middle = policy.delay_after(attempts, rng=lambda: 0.5)
    scheduled = policy.schedule[attempts]
    assert low == pytest.approx(scheduled * 0.9)
    assert high == pytest.approx(scheduled * 1.1, rel=1e-5)
    assert middle == pytest.approx(scheduled)


def test_after_the_eighth_failed_attempt_there_is_no_other() -> None:
    assert RetryPolicy().delay_after(8) is None
    assert RetryPolicy((0, 1)).delay_after(2) is None


def test_a_retry_after_hint_replaces_the_scheduled_delay() -> None:
    assert RetryPolicy().delay_after(2, retry_after=7.0) == 7.0  # instead of 5 minutes
    assert RetryPolicy().delay_after(8, retry_after=7.0) is None  # but adds no attempt


def test_retry_after_is_read_as_seconds_or_an_http_date_and_capped() -> None:
    now = NOW.timestamp()
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(format_datetime(datetime(2025, 5, 1, 8, 1, tzinfo=UTC), usegmt=True), now) == 60
    assert parse_retry_after("999999999", now) == 86400
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now) == 0


# --- signatures -------------------------------------------------------------------------------------


def test_every_secret_signs_and_the_reference_verifier_accepts_each_one() -> None:
    old, new = "whsec_" + "A" * 43 + "=", "whsec_" + "B" * 43 + "="
    body = b'{"type":"login.succeeded"}'
    header = signature_header([old, new], "msg_1", datetime.now(UTC), body)
    assert header.count("v1,") == 2 and len(header.split(" ")) == 2
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
        "webhook-signature": header,
    }
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"type": "login.succeeded"}


# --- the SSRF classifier ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("100.100.100.200", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link_local"),
        ("fe80::1", "link_local"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("192.0.2.1", "private"),  # documentation
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_internal_addresses_are_refused_and_public_ones_are_not(address: str, reason: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == reason


def test_https_is_required_unless_the_host_is_allowed_plain_http() -> None:
    guard = UrlGuard(http_hosts=["127.0.0.1"], allowed=["127.0.0.1"])
    guard.check_url("http://127.0.0.1:9/hook")
    guard.check_url("https://hooks.example.com/wx")  # a name: checked when it resolves
    with pytest.raises(AddressRefused) as refused:
        guard.check_url("http://hooks.example.com/wx")
    assert refused.value.reason == "https_required"
    with pytest.raises(AddressRefused):
        guard.check_url("ftp://hooks.example.com/")


def test_an_ip_literal_is_refused_before_any_connection_unless_its_network_is_allowed() -> None:
    strict = UrlGuard()
    for url, reason in [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://10.0.0.8:8443/", "private"),
    ]:
        with pytest.raises(AddressRefused) as refused:
            strict.check_url(url)
        assert refused.value.reason == reason
    UrlGuard(allowed=["10.0.0.0/8"]).check_url("https://10.0.0.8:8443/")
    UrlGuard(allowed=["10.0.0.8"]).check_url("https://10.0.0.8/")
    with pytest.raises(AddressRefused):
        UrlGuard(allowed=["10.0.0.0/8"]).check_url("https://169.254.169.254/")


class FakeResolver:
    """What DNS answers, by host (a hand-written fake of aiohttp's resolver)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        return [
            {"hostname": host, "host": ip, "port": port, "family": family, "proto": 0, "flags": 0}
            for ip in self.answers[host]
        ]

    async def close(self) -> None:
        pass


async def test_the_resolver_returns_only_permitted_addresses_so_only_they_are_connected_to() -> None:
    answers = {
        "mixed.example": ["10.0.0.5", "93.184.216.34"],
        "rebound.example": ["127.0.0.1"],
        "metadata.example": ["169.254.169.254"],
        "internal.corp": ["10.1.1.1"],
    }
    resolver = GuardedResolver(UrlGuard(allowed=["internal.corp"]), FakeResolver(answers))  # type: ignore[arg-type]
    assert [r["host"] for r in await resolver.resolve("mixed.example", 443)] == ["93.184.216.34"]
    for host, reason in [("rebound.example", "loopback"), ("metadata.example", "metadata")]:
        with pytest.raises(AddressRefused) as refused:
            await resolver.resolve(host, 443)
        assert refused.value.reason == reason
    assert [r["host"] for r in await resolver.resolve("internal.corp", 443)] == [
        "10.1.1.1"
    ]  # allowed by name


# --- the event mapping ------------------------------------------------------------------------------


def test_the_catalogue_is_the_one_endpoint_filters_are_checked_against() -> None:
    assert set(WEBHOOK_EVENTS) == {
        "login.succeeded",
        "login.failed",
        "user.created",
        "identity.linked",
        "identity.unlinked",
        "phone.bound",
        "session.revoked",
    }


def test_each_bus_event_maps_to_its_webhook_event() -> None:
    confirmed = from_bus(LoginConfirmed(scene=SCENE, user_id="u_1", client_id="shop"), "m1")
    assert confirmed is not None
    assert (confirmed.type, confirmed.client_id, confirmed.user_id) == ("login.succeeded", "shop", "u_1")
    assert confirmed.data == {"scene": SCENE}
    cancelled = from_bus(SceneCancelled(scene=SCENE, reason="not_me"), "m2")
    assert cancelled is not None and cancelled.type == "login.failed" and cancelled.client_id is None
    assert cancelled.data == {"scene": SCENE, "reason": "cancelled", "detail": "not_me"}
    expired = from_bus(SceneExpired(scene=SCENE, client_id="shop", scanned=True), "m3")
    assert expired is not None and expired.data == {"scene": SCENE, "reason": "expired"}
    created = from_bus(UserCreated(user_id="u_1", openid="o" * 28, client_id="shop"), "m4")
    assert created is not None and (created.type, created.user_id, created.data) == (
        "user.created",
        "u_1",
        {},
    )
    phone = from_bus(PhoneNumberBound(user_id="u_1"), "m5")
    assert phone is not None and phone.type == "phone.bound" and phone.data == {}
    revoked = from_bus(SessionRevoked(user_id="u_1", sid="fam-0001", reason="reuse_detected"), "m6")
    assert revoked is not None and revoked.type == "session.revoked"
    assert revoked.data == {"sid": "fam-0001", "reason": "reuse_detected"}


def test_a_code_nobody_scanned_is_no_failed_login_and_other_events_are_ignored() -> None:
    assert from_bus(SceneExpired(scene=SCENE, scanned=False), "m") is None
    assert from_bus(SceneExpired(scene=SCENE), "m") is None  # a version that did not say
    assert from_bus(SceneScanned(scene=SCENE), "m") is None


def test_the_same_happening_announced_twice_keeps_its_source_and_so_its_message_id() -> None:
    first = from_bus(LoginConfirmed(scene=SCENE, user_id="u_1"), "bus-message-1")
    again = from_bus(LoginConfirmed(scene=SCENE, user_id="u_1"), "bus-message-2")  # announced again
    assert first is not None and again is not None and first.source == again.source
    revoked = from_bus(SessionRevoked(user_id="u_1", sid="fam-0001", reason="logout"), "bus-message-3")
    assert revoked is not None and revoked.source == "session.revoked:bus-message-3"  # a redelivery keeps it
    mid = message_id("shop", "main", first.source)
    assert mid == message_id("shop", "main", again.source)
    assert mid != message_id("shop", "other", first.source) != message_id("blog", "main", first.source)
    assert mid.startswith("msg_") and len(mid) == 30 and mid[4:].isalnum()


def test_a_pairwise_client_sees_its_own_sub_and_a_public_client_the_user_id() -> None:
    event = from_bus(LoginConfirmed(scene=SCENE, user_id="u_1"), "m")
    assert event is not None
    public = Client(client_id="shop", site_name="Shop")
    pairwise = Client(client_id="blog", site_name="Blog", subject_type="pairwise")
    asked: list[str] = []

    def key() -> bytes:
        asked.append("key")
        return KEY

    public_body = json.loads(render(event, public, NOW, key))
    assert public_body == {
        "type": "login.succeeded",
        "timestamp": "2025-05-01T08:00:00Z",
        "data": {"client_id": "shop", "sub": "u_1", "scene": SCENE},
    }
    assert asked == []  # the key is needed only for pairwise clients
    pairwise_body = json.loads(render(event, pairwise, NOW, key))
    assert pairwise_body["data"]["sub"] == subject(pairwise, "u_1", KEY) != "u_1"
    assert "u_1" not in json.dumps(pairwise_body)


def test_payloads_are_thin_no_openid_no_unionid() -> None:
    event = from_bus(
        UserCreated(user_id="u_1", openid="oOPENID" + "x" * 21, unionid="oUNION" + "y" * 22), "m"
    )
    assert event is not None
    body = render(event, Client(client_id="shop", site_name="Shop"), NOW, lambda: KEY).decode()
    assert "oOPENID" not in body and "oUNION" not in body
    assert json.loads(body)["data"] == {"client_id": "shop", "sub": "u_1"}
