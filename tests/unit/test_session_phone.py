"""How a number from getuserphonenumber is stored: E.164, whatever shape WeChat sent."""

from __future__ import annotations

import pytest

from services.session.handlers import e164
from shared.wechat import PhoneInfo


@pytest.mark.parametrize(
    ("pure", "country", "stored"),
    [
        ("13800138000", "86", "+8613800138000"),
        ("2025550123", "1", "+12025550123"),
        ("13800138000", "", "+8613800138000"),  # no country code given: WeChat's default, China
        ("138 0013 8000", "+86", "+8613800138000"),
    ],
)
def test_numbers_are_stored_in_e164(pure: str, country: str, stored: str) -> None:
    assert e164(PhoneInfo(phone_number=pure, pure_phone_number=pure, country_code=country)) == stored


def test_a_foreign_number_cannot_collide_with_a_chinese_one() -> None:
    us = e164(PhoneInfo(phone_number="+12025550123", pure_phone_number="2025550123", country_code="1"))
    cn = e164(PhoneInfo(phone_number="12025550123", pure_phone_number="12025550123", country_code="86"))
    assert us != cn
