"""Production mode (security review L7): ``run <service>`` without ``WXLOGIN_DEMO`` refuses the demo's
values, one line each naming the variable; the demo keeps them."""

from __future__ import annotations

import pytest

from services.startup import production_problems
from shared.config import DEV_APPID, DEV_SECRET
from tests.support import make_settings

REAL = {
    "appid": "wx1111222233334444",
    "secret": "a-real-app-secret",
    "wechat_api_base": "https://api.weixin.qq.com",
    "allowed_origins": "https://www.example.com",
    "site_name": "Example 示例",
    "subject_key": "A" * 43 + "=",
    "issuer_url": "https://login.example.com",
}


@pytest.mark.parametrize("service", ["token", "qrcode", "session", "gateway"])
def test_a_real_configuration_passes(service: str) -> None:
    assert production_problems(service, make_settings(**REAL)) == []


@pytest.mark.parametrize(
    ("change", "services", "variable"),
    [
        ({"appid": DEV_APPID}, {"token", "qrcode", "session"}, "WXLOGIN_APPID"),
        ({"secret": DEV_SECRET}, {"token", "qrcode", "session"}, "WXLOGIN_APPID/WXLOGIN_SECRET"),
        (
            {"wechat_api_base": "http://api.weixin.qq.com"},
            {"token", "qrcode", "session"},
            "WXLOGIN_WECHAT_API_BASE",
        ),
        ({"allowed_origins": "*"}, {"gateway"}, "WXLOGIN_ALLOWED_ORIGINS"),
        ({"site_name": "wxlogin demo"}, {"qrcode", "gateway"}, "WXLOGIN_SITE_NAME"),
        ({"subject_key": ""}, {"session"}, "WXLOGIN_SUBJECT_KEY"),
        ({"issuer_url": ""}, {"session", "gateway"}, "WXLOGIN_ISSUER_URL"),
        ({"issuer_url": "http://login.example.com"}, {"session", "gateway"}, "WXLOGIN_ISSUER_URL"),
    ],
)
def test_each_demo_value_is_refused_in_one_line_by_the_services_it_matters_to(
    change: dict[str, str], services: set[str], variable: str
) -> None:
    settings = make_settings(**{**REAL, **change})
    for service in ("token", "qrcode", "session", "gateway"):
        problems = production_problems(service, settings)
        if service in services:
            assert len(problems) == 1 and problems[0].startswith(variable), (service, problems)
            assert "\n" not in problems[0]
        else:
            assert problems == [], service


def test_the_defaults_are_the_demo_and_refused_outside_it() -> None:
    defaults = make_settings(wechat_api_base="https://api.weixin.qq.com")
    # the development AppID, no subject key, no https issuer
    assert len(production_problems("session", defaults)) == 3
    assert len(production_problems("qrcode", defaults)) == 2  # and the demo site name
    assert production_problems("gateway", make_settings(demo=True, allowed_origins="*")) == []


def test_a_simulator_on_this_machine_is_development() -> None:
    local = make_settings(**{**REAL, "appid": DEV_APPID, "wechat_api_base": "http://127.0.0.1:9100"})
    assert production_problems("token", local) == []
