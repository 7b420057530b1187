"""``make demo`` (one process): the simulator it starts is the one the services call."""

from __future__ import annotations

import pytest

from services.__main__ import embedded_settings, local_sim
from shared.config import Settings


def test_a_moved_simulator_port_moves_the_wechat_base_url_with_it() -> None:
    settings = embedded_settings(Settings(_env_file=None, sim_port=19100))  # type: ignore[call-arg]
    assert settings.wechat_api_base == "http://127.0.0.1:19100"
    assert local_sim(settings)


def test_an_explicit_wechat_base_url_is_kept_and_no_simulator_is_started() -> None:
    given = Settings(_env_file=None, sim_port=19100, wechat_api_base="https://api.weixin.qq.com")  # type: ignore[call-arg]
    settings = embedded_settings(given)
    assert settings.wechat_api_base == "https://api.weixin.qq.com"
    assert not local_sim(settings)


def test_the_demo_generates_the_keys_it_needs() -> None:
    settings = embedded_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert settings.bus_key.get_secret_value() and settings.data_key.get_secret_value()
    assert local_sim(settings)


def test_the_demo_page_on_a_moved_gateway_port_is_an_allowed_origin() -> None:
    settings = embedded_settings(Settings(_env_file=None, gateway_port=18080))  # type: ignore[call-arg]
    assert settings.allowed_origins == ["http://127.0.0.1:18080", "http://localhost:18080"]



def test_adding_a_site_to_the_allowed_origins_keeps_the_demo_page_working(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen = Settings(_env_file=None, gateway_port=18080, allowed_origins="https://example.com")  # type: ignore[call-arg]
    assert embedded_settings(chosen).allowed_origins == [
        "https://example.com",
        "http://127.0.0.1:18080",
        "http://localhost:18080",
    ]
    monkeypatch.setenv("WXLOGIN_DEMO", "false")  # no demo page: exactly the origins given
    plain = Settings(_env_file=None, gateway_port=18080, allowed_origins="https://example.com")  # type: ignore[call-arg]
    assert embedded_settings(plain).allowed_origins == ["https://example.com"]


def test_the_demo_registers_its_openid_connect_client_on_the_port_it_runs_on() -> None:
    from shared.clients import ClientRegistry

    for port in (8080, 18080):
        settings = embedded_settings(Settings(_env_file=None, gateway_port=port))  # type: ignore[call-arg]
        demo = ClientRegistry.from_settings(settings).require("wxlogin-demo")
        assert demo.public  # PKCE in the browser, no secret
        assert demo.redirect_uris == [
            f"http://127.0.0.1:{port}/demo/callback",
            f"http://localhost:{port}/demo/callback",
        ]
        assert demo.web_origins == [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


def test_a_clients_file_of_ones_own_replaces_the_demos() -> None:
    own = Settings(_env_file=None, clients_file="/etc/wxlogin/clients.yaml")  # type: ignore[call-arg]
    assert embedded_settings(own).clients_file == "/etc/wxlogin/clients.yaml"
