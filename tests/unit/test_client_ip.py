"""Which address is the client: the socket peer, or the right-most untrusted X-Forwarded-For hop
when the peer is a trusted proxy; and the key rate limits count under."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from services.gateway.clientip import ClientIpResolver, parse_hop
from shared.prefixes import prefix_keys

PROXIES = ClientIpResolver([ip_network("10.0.0.0/8"), ip_network("127.0.0.1/32"), ip_network("fd00::/8")])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        ("127.0.0.1", ["6.6.6.6, 203.0.113.5"], "203.0.113.5"),  # the client's own claim is ignored
        ("127.0.0.1", ["6.6.6.6, 203.0.113.5, 10.1.2.3"], "203.0.113.5"),  # through two of our proxies
        ("127.0.0.1", ["6.6.6.6", "203.0.113.5, 10.1.2.3"], "203.0.113.5"),  # several header lines
        ("127.0.0.1", ["garbage, 10.1.2.3"], "10.1.2.3"),  # nothing believable left of our proxy
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.5:4711"], "203.0.113.5"),  # a port appended by the proxy
        ("127.0.0.1", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("127.0.0.1", ["2001:db8::7"], "2001:db8::7"),
        ("127.0.0.1", ['"203.0.113.5"'], "203.0.113.5"),
        ("198.51.100.9", ["203.0.113.5"], "198.51.100.9"),  # not our proxy: header not believed
        ("::ffff:198.51.100.9", ["203.0.113.5"], "198.51.100.9"),  # dual-stack socket
        ("fd00::1", ["203.0.113.5"], "203.0.113.5"),
        ("", ["203.0.113.5"], ""),  # no peer (a Unix socket)
    ],
)
def test_the_client_is_the_right_most_untrusted_hop(peer: str, forwarded: list[str], client: str) -> None:
    assert PROXIES.resolve(peer, forwarded) == client


def test_without_trusted_proxies_forwarded_for_is_ignored() -> None:
    assert ClientIpResolver().resolve("127.0.0.1", ["203.0.113.5"]) == "127.0.0.1"


def test_a_chain_of_only_trusted_hops_ends_at_the_left_most() -> None:
    assert PROXIES.resolve("127.0.0.1", ["10.0.0.9, 10.0.0.8"]) == "10.0.0.9"


@pytest.mark.parametrize("text", ["", "unknown", "1.2.3", "[::1", "300.1.1.1", "example.com"])
def test_garbage_is_not_an_address(text: str) -> None:
    assert parse_hop(text) is None


def test_ipv6_clients_are_limited_per_64_and_ipv4_per_address_first() -> None:
    v4, v6 = [32, 24], [64, 56, 48]
    assert prefix_keys("2001:db8:1:2::1", v4, v6)[0] == "2001:db8:1:2::/64"
    assert prefix_keys("2001:db8:1:2:ffff::9", v4, v6)[0] == "2001:db8:1:2::/64"
    assert prefix_keys("2001:db8:1:3::1", v4, v6)[0] != "2001:db8:1:2::/64"
    assert prefix_keys("203.0.113.5", v4, v6)[0] == "203.0.113.5/32"
    assert prefix_keys("", v4, v6) == ["unknown"]
