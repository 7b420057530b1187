"""Where webhooks may go: https only (unless the operator allows http for a host), and never to an
address inside the deployment (loopback, private, link-local, CGNAT, multicast, reserved, cloud
metadata) unless the operator allows that host or network (SSRF guard).

The check happens where the connection is made: :class:`GuardedResolver` is the aiohttp resolver of
the webhook client, so the address that was checked is the address connected to (no window for DNS
rebinding between a check and the connect). URLs whose host is an IP literal never reach a resolver
and are checked by :meth:`UrlGuard.check_url`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services: named apart so the delivery log says so.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Tencent Cloud...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(OSError):
    """The webhook URL or the address it resolves to is not allowed; ``reason`` says which rule."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(ip: IPAddress) -> str | None:
    """Why a webhook may not be sent to ``ip`` (``metadata``, ``loopback``, ``private``…), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return classify(embedded)
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "cgnat"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not_global"
    return None


def _host(value: str) -> str:
    return value.strip().lower().rstrip(".").strip("[]")


class UrlGuard:
    """The operator's rules: which hosts may use http, which hosts and networks are exempt."""

    def __init__(self, http_hosts: Iterable[str] = (), allowed: Iterable[str] = ()) -> None:
        self.http_hosts = frozenset(_host(h) for h in http_hosts)
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in allowed:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(_host(entry))
        self.allowed_hosts = frozenset(hosts)
        self.allowed_networks = tuple(networks)

    def permits(self, host: str, address: str) -> str | None:
        """None when ``host`` may be reached at ``address``; otherwise the reason it may not."""
        if _host(host) in self.allowed_hosts:
            return None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "not_an_address"
        if any(ip in network for network in self.allowed_networks):
            return None
        return classify(ip)

    def check_url(self, url: str) -> None:
        """Raise :class:`AddressRefused` for a URL that may not be used before any connection:
        not http(s), http to a host not allowed for it, or an IP literal that is refused."""
        parts = urlsplit(url)
        host = _host(parts.hostname or "")
        if parts.scheme not in ("http", "https") or not host:
            raise AddressRefused("scheme", "not an http(s) URL")
        if parts.scheme == "http" and host not in self.http_hosts:
            raise AddressRefused(
                "https_required", f"http is allowed only for WXLOGIN_WEBHOOK_HTTP_HOSTS, not {host}"
            )
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return  # a name: checked at resolution by GuardedResolver
        reason = self.permits(host, host)
        if reason is not None:
            raise AddressRefused(reason, host)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that keeps only the addresses :class:`UrlGuard` permits.

    aiohttp connects to what its resolver returns, so a refused address is never connected to, and
    a name that resolves only to refused addresses fails with :class:`AddressRefused` (aiohttp wraps
    it in ``ClientConnectorDNSError``).
    """

    def __init__(self, guard: UrlGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        found = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        reasons: list[str] = []
        for result in found:
            reason = self._guard.permits(host, result["host"])
            if reason is None:
                kept.append(result)
            else:
                reasons.append(f"{result['host']} ({reason})")
        if not kept:
            first = self._guard.permits(host, found[0]["host"]) if found else "unresolved"
            raise AddressRefused(first or "refused", f"{_host(host)} resolves to {', '.join(reasons)}")
        return kept

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def refusal_of(exc: BaseException) -> AddressRefused | None:
    """The :class:`AddressRefused` behind an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressRefused):
            return current
        seen.add(id(current))
        current = getattr(current, "os_error", None) or current.__cause__ or current.__context__
    return None
