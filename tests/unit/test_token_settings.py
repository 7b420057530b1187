"""The token service's settings: the timing rules that keep one refresh per window and a safe takeover."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_defaults_refresh_240_s_early_with_a_30_s_lease_renewed_every_5_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("REFRESH_MARGIN", "LEASE", "TICK"):
        monkeypatch.delenv(f"WXLOGIN_TOKEN_{name}_SECONDS", raising=False)
    s = settings()
    assert (s.token_refresh_margin_seconds, s.token_lease_seconds, s.token_tick_seconds) == (240, 30, 5)


def test_the_environment_sets_the_token_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXLOGIN_TOKEN_REFRESH_MARGIN_SECONDS", "200")
    monkeypatch.setenv("WXLOGIN_TOKEN_LEASE_SECONDS", "20")
    monkeypatch.setenv("WXLOGIN_TOKEN_TICK_SECONDS", "2")
    s = settings()
    assert (s.token_refresh_margin_seconds, s.token_lease_seconds, s.token_tick_seconds) == (200, 20, 2)


def test_a_margin_of_300_s_or_more_is_refused_because_wechat_would_hand_back_the_same_token() -> None:
    with pytest.raises(ValidationError, match="token_refresh_margin_seconds"):
        settings(token_refresh_margin_seconds=300)


def test_a_lease_shorter_than_two_ticks_is_refused() -> None:
    with pytest.raises(ValidationError, match="twice"):
        settings(token_lease_seconds=9, token_tick_seconds=5)


def test_a_margin_that_a_takeover_could_eat_is_refused() -> None:
    with pytest.raises(ValidationError, match="exceed"):
        settings(token_refresh_margin_seconds=100, token_lease_seconds=90, token_tick_seconds=20)
