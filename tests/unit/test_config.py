"""Settings: the WXLOGIN_ prefix, .env files, list parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import DEV_SECRET, Settings


def test_defaults_select_the_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("WXLOGIN_"):
            monkeypatch.delenv(key)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.embedded_bus
    assert settings.mongo_url == ""
    assert settings.scene_ttl_seconds == 120
    assert settings.uses_dev_credentials


def test_environment_variables_with_the_prefix_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXLOGIN_APPID", "wxabc")
    monkeypatch.setenv("WXLOGIN_SCENE_TTL_SECONDS", "300")
    monkeypatch.setenv("WXLOGIN_AMQP_URL", "amqp://u:p@rabbit:5672/")
    monkeypatch.setenv("APPID", "not-ours")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.appid == "wxabc"
    assert settings.scene_ttl_seconds == 300
    assert not settings.embedded_bus


def test_a_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text("WXLOGIN_SITE_NAME=示例网站\nWXLOGIN_SECRET=real-secret\n", encoding="utf-8")
    monkeypatch.delenv("WXLOGIN_SITE_NAME", raising=False)
    monkeypatch.delenv("WXLOGIN_SECRET", raising=False)
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    assert settings.site_name == "示例网站"
    assert settings.secret.get_secret_value() == "real-secret"
    assert not settings.uses_dev_credentials
    assert "real-secret" not in repr(settings)


def test_allowed_origins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXLOGIN_ALLOWED_ORIGINS", "https://a.example, https://b.example:8443")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.allowed_origins == ["https://a.example", "https://b.example:8443"]


@pytest.mark.parametrize("origin", ["a.example", "https://a.example/", "https://a.example/login"])
def test_an_origin_with_a_path_or_without_a_scheme_is_refused(origin: str) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, allowed_origins=origin)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("amqp_url", "redis://localhost"),
        ("scene_ttl_seconds", "5"),
        ("miniprogram_env_version", "beta"),
        ("miniprogram_code_width", "2000"),
        ("gateway_port", "70000"),
    ],
)
def test_invalid_values_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **{key: value})  # type: ignore[arg-type]


def test_the_development_secret_is_recognised() -> None:
    assert Settings(_env_file=None, secret=DEV_SECRET).uses_dev_credentials  # type: ignore[call-arg]
