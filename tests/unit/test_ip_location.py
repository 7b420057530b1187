"""The coarse places the phone's confirm screen shows (security review M4, L2): real public addresses
through the shipped offline database, this machine and private networks as the local network, and the
rule that says two places differ."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.qrcode.location import (
    LOCAL,
    UNKNOWN,
    Database,
    IpLocator,
    default_database,
    differ,
    load_database,
    parse_region,
    place_of,
)
from shared.config import InvalidSettings, Settings
from shared.messages import Place


@pytest.fixture(scope="module")
def locator() -> IpLocator:
    return IpLocator.from_paths([])  # the database `make install` brings


def test_the_shipped_database_is_installed_and_loads_as_ipv4(locator: IpLocator) -> None:
    path = default_database()
    assert path is not None and path.endswith("ip2region.xdb")
    assert set(locator.databases) == {4}
    assert locator.databases[4].created_at > 1_700_000_000  # a 2024 build at least


@pytest.mark.parametrize(
    ("ip", "province", "city", "isp", "label"),
    [
        ("183.2.172.185", "广东省", "广州市", "电信", "广东省广州市 · 电信"),
        ("110.242.68.66", "河北省", "保定市", "联通", "河北省保定市 · 联通"),
        ("36.110.0.1", "北京", "北京市", "电信", "北京市 · 电信"),  # 北京 + 北京市: said once
        ("223.5.5.5", "浙江省", "杭州市", "阿里云", "浙江省杭州市 · 阿里云"),
        ("::ffff:223.5.5.5", "浙江省", "杭州市", "阿里云", "浙江省杭州市 · 阿里云"),  # IPv4-mapped
    ],
)
def test_public_addresses_are_placed_by_province_city_and_carrier(
    locator: IpLocator, ip: str, province: str, city: str, isp: str, label: str
) -> None:
    place = locator.locate(ip)
    assert (place.kind, place.country, place.province, place.city, place.isp) == (
        "public",
        "中国",
        province,
        city,
        isp,
    )
    assert place.label == label
    assert ip.rsplit(":", 1)[-1] not in place.label  # the address itself is never part of it


def test_an_address_abroad_is_named_by_its_country(locator: IpLocator) -> None:
    place = locator.locate("8.8.8.8")
    assert (place.kind, place.country) == ("public", "美国")
    assert place.label.startswith("美国")


@pytest.mark.parametrize(
    "ip", ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.20", "169.254.1.1", "::1", "fd00::5", "fe80::1"]
)
def test_this_machine_and_private_networks_are_the_local_network(locator: IpLocator, ip: str) -> None:
    assert locator.locate(ip) == LOCAL
    assert LOCAL.label == "本机/内网 (local network)"


@pytest.mark.parametrize("ip", ["", "not an address", "240e:3b7::1"])  # IPv6: no IPv6 database shipped
def test_what_the_database_cannot_place_is_unknown(locator: IpLocator, ip: str) -> None:
    assert locator.locate(ip) == UNKNOWN
    assert UNKNOWN.kind == "unknown" and "unknown" in UNKNOWN.label


def test_without_any_database_only_local_addresses_are_placed() -> None:
    bare = IpLocator()
    assert bare.locate("127.0.0.1") == LOCAL
    assert bare.locate("183.2.172.185") == UNKNOWN


class BrokenSearcher:
    def search(self, ip: bytes | str) -> str:
        raise ValueError("damaged file")


def test_a_failing_lookup_is_unknown_not_an_error() -> None:
    broken = IpLocator([Database(4, BrokenSearcher(), "broken.xdb")])
    assert broken.locate("183.2.172.185") == UNKNOWN


def test_both_region_layouts_are_read() -> None:
    # xdb 2.0 (the shipped file): 国家|区域|省份|城市|ISP; ip2region 3.x: 国家|省份|城市|ISP|ISO code.
    assert parse_region("中国|0|广东省|深圳市|电信") == ("中国", "广东省", "深圳市", "电信")
    assert parse_region("中国|广东省|深圳市|电信|CN") == ("中国", "广东省", "深圳市", "电信")
    assert parse_region("美国|0|0|0|Level3") == ("美国", "", "", "Level3")
    assert place_of("中国|广东省|深圳市|电信|CN").label == "广东省深圳市 · 电信"
    assert place_of("0|0|0|内网IP|内网IP") == LOCAL
    assert place_of("0|0|0|0|0") == UNKNOWN


def _public(country: str, province: str = "", city: str = "") -> Place:
    return Place(kind="public", label="x", country=country, province=province, city=city)


def test_places_differ_by_country_or_province_not_by_city_or_carrier() -> None:
    guangzhou = _public("中国", "广东省", "广州市")
    shenzhen = _public("中国", "广东省", "深圳市")  # a phone on 4G is often placed in the capital
    beijing = _public("中国", "北京", "北京市")
    abroad = _public("美国")
    assert differ(guangzhou, beijing) and differ(beijing, guangzhou)
    assert differ(guangzhou, abroad)
    assert not differ(guangzhou, shenzhen)
    assert not differ(guangzhou, guangzhou.model_copy(update={"isp": "移动"}))
    # Nothing to compare with the local network or an unknown place.
    assert not differ(LOCAL, guangzhou) and not differ(guangzhou, UNKNOWN) and not differ(LOCAL, LOCAL)


def test_a_file_that_is_not_a_database_is_refused_with_its_name(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.xdb"
    bogus.write_bytes(b"\x07\x00" + b"\x00" * 300)
    with pytest.raises(ValueError, match=r"bogus\.xdb"):
        load_database(str(bogus))


def test_a_configured_database_that_does_not_exist_is_a_clear_settings_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in list(os.environ):
        if key.startswith("WXLOGIN_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env
    missing = tmp_path / "ip2region_v6.xdb"
    monkeypatch.setenv("WXLOGIN_IP2REGION_DB", str(missing))
    with pytest.raises(InvalidSettings) as invalid:
        Settings.from_environment()
    assert invalid.value.problems == [f"WXLOGIN_IP2REGION_DB={missing}: no such file: {missing}"]


def test_a_lookup_takes_microseconds(locator: IpLocator) -> None:
    addresses = ["183.2.172.185", "110.242.68.66", "8.8.8.8", "223.5.5.5"] * 2500
    started = time.perf_counter()
    for ip in addresses:
        locator.locate(ip)
    per_call = (time.perf_counter() - started) / len(addresses)
    assert per_call < 200e-6, f"{per_call * 1e6:.1f} µs per lookup"  # ~10 µs here; no I/O per call
