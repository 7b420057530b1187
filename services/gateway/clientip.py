"""Who the client is: the socket peer, or, behind proxies we trust, the right-most untrusted
``X-Forwarded-For`` hop.

Anyone can write ``X-Forwarded-For``; only the hops appended by our own proxies are true. So the list
is read from the right, skipping addresses of trusted proxies (``WXLOGIN_TRUSTED_PROXIES``), and the
first address that is not one of ours is the client. Without trusted proxies the header is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import web

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

MAX_HOPS = 32  # a longer chain is not ours; stop reading


def parse_hop(text: str) -> Address | None:
    """One hop as an address (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``), or None."""
    value = text.strip().strip('"')
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        value = value.split(":", 1)[0]
    try:
        addr = ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:1.2.3.4 is 1.2.3.4 (dual-stack sockets)
    return addr


class ClientIpResolver:
    """Resolves the client address of a request given the proxies we trust."""

    def __init__(self, trusted: Sequence[Network] = ()) -> None:
        self._trusted = tuple(trusted)

    def is_trusted(self, addr: Address) -> bool:
        """True when ``addr`` is one of our proxies."""
        return any(addr.version == net.version and addr in net for net in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The client address, from the socket peer and the ``X-Forwarded-For`` header values."""
        addr = parse_hop(peer or "")
        if addr is None:
            return (peer or "")[:64]
        if not self._trusted or not self.is_trusted(addr):
            return str(addr)
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        client = addr
        for raw in reversed(hops[-MAX_HOPS:]):
            hop = parse_hop(raw)
            if hop is None:
                break  # garbage written by someone left of our proxies: keep the last true hop
            client = hop
            if not self.is_trusted(hop):
                break
        return str(client)

    def for_request(self, request: web.BaseRequest) -> str:
        """The client address of ``request``."""
        return self.resolve(request.remote, request.headers.getall("X-Forwarded-For", []))
