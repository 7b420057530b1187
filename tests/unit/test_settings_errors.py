"""What a user sees for unusable settings: one line per variable naming it, and the demo's handling of
the empty WeChat credentials of a copied .env.example."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.startup import credentials_problem, demo_credentials
from shared.config import DEV_APPID, DEV_SECRET, InvalidSettings, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No WXLOGIN_ variable of the caller, and no .env (the working directory is empty)."""
    for key in list(os.environ):
        if key.startswith("WXLOGIN_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InvalidSettings) as caught:
        Settings.from_environment()
    return caught.value.problems


def test_an_out_of_range_setting_is_one_line_with_its_variable_value_and_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = problems(monkeypatch, WXLOGIN_SCENE_TTL_SECONDS="5")
    assert lines == ["WXLOGIN_SCENE_TTL_SECONDS=5: must be ≥ 10"]


def test_every_invalid_variable_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = problems(
        monkeypatch,
        WXLOGIN_GATEWAY_PORT="eighty",
        WXLOGIN_RPC_TIMEOUT_SECONDS="0",
        WXLOGIN_MINIPROGRAM_ENV_VERSION="beta",
        WXLOGIN_DEMO="maybe",
        WXLOGIN_TRUSTED_PROXIES="10.0.0.x",
    )
    assert sorted(lines) == [
        "WXLOGIN_DEMO=maybe: must be true or false",
        "WXLOGIN_GATEWAY_PORT=eighty: must be a whole number",
        "WXLOGIN_MINIPROGRAM_ENV_VERSION=beta: must be 'release', 'trial' or 'develop'",
        "WXLOGIN_RPC_TIMEOUT_SECONDS=0: must be > 0",
        "WXLOGIN_TRUSTED_PROXIES=10.0.0.x: must be IP addresses or CIDRs: "
        "'10.0.0.x' does not appear to be an IPv4 or IPv6 network",
    ]


def test_a_rule_between_settings_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(monkeypatch, WXLOGIN_TOKEN_LEASE_SECONDS="6") == [
        "WXLOGIN_TOKEN_LEASE_SECONDS must be at least twice WXLOGIN_TOKEN_TICK_SECONDS"
    ]


def test_a_bad_setting_in_dotenv_is_reported_the_same_way(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WXLOGIN_SIM_PORT=70000\n")
    with pytest.raises(InvalidSettings, match=r"^WXLOGIN_SIM_PORT=70000: must be ≤ 65535$"):
        Settings.from_environment()


def test_the_copied_env_example_falls_back_to_the_simulator_credentials_in_the_demo(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WXLOGIN_APPID=\nWXLOGIN_SECRET=\n")
    settings = Settings.from_environment()
    assert settings.empty_wechat_credentials == ["WXLOGIN_APPID", "WXLOGIN_SECRET"]
    demo = demo_credentials(settings)
    assert (demo.appid, demo.secret.get_secret_value()) == (DEV_APPID, DEV_SECRET)


def test_empty_credentials_against_wechat_are_one_line_naming_what_to_fill(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WXLOGIN_APPID=wx1234\nWXLOGIN_SECRET=\n")
    problem = credentials_problem(Settings.from_environment())
    assert problem is not None
    assert problem.startswith("WXLOGIN_SECRET is empty: fill in the mini-program's AppSecret (")
    assert credentials_problem(Settings(_env_file=None)) is None  # type: ignore[call-arg]
