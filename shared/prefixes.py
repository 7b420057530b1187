"""Address prefixes that rate limits count a client under (security M2): its address, and the wider
networks one holder usually owns (an IPv4 /24, an IPv6 /56 or /48), so that many addresses of one
attacker count as one. Shared by the gateway's buckets and the qrcode service's issue share."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from ipaddress import IPv6Address, ip_address, ip_network


def prefix_keys(ip: str, ipv4: Sequence[int], ipv6: Sequence[int]) -> list[str]:
    """The networks of ``ip`` at each prefix length of its family, in the order given (``1.2.3.4/32``,
    ``1.2.3.0/24``); an unparsable ``ip`` is one key, itself (bounded)."""
    return list(_prefix_keys(ip, tuple(ipv4), tuple(ipv6)))


# Every request is counted under its client's prefixes, and clients come back: parsing an address and
# building its networks costs more than the rate limit itself, so the last few thousand are kept.
@functools.lru_cache(maxsize=4096)
def _prefix_keys(ip: str, ipv4: tuple[int, ...], ipv6: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(_networks(ip, ipv4, ipv6))


def _networks(ip: str, ipv4: Sequence[int], ipv6: Sequence[int]) -> list[str]:
    try:
        addr = ip_address(ip.strip())
    except ValueError:
        return [ip[:64] or "unknown"]
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:1.2.3.4 is 1.2.3.4 (dual-stack sockets)
    lengths = ipv4 if addr.version == 4 else ipv6
    return [str(ip_network(f"{addr}/{length}", strict=False)) for length in lengths] or [str(addr)]


def widest_prefix(ip: str, ipv4: Sequence[int], ipv6: Sequence[int]) -> str:
    """The widest configured network of ``ip`` (with the defaults its /24 or /48)."""
    return prefix_keys(ip, ipv4, ipv6)[-1]
