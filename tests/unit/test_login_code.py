"""Typed login codes: their alphabet and form, and the arithmetic that keeps guessing any live code below
10^-6 a day at the limits (docs/security.md shows the same numbers)."""

from __future__ import annotations

import itertools

import pytest
from pydantic import SecretStr

from services.qrcode.app import login_codes
from services.qrcode.store import RateWindowStore, SceneStore
from shared import logincode as lc
from shared import messages as m
from shared.config import Settings
from shared.sealing import Sealer, generate_key

SCENE = "A" * 32
HASH = "0" * 64


def test_the_alphabet_has_no_look_alikes_and_the_space_is_31_to_the_8th() -> None:
    assert len(lc.ALPHABET) == len(set(lc.ALPHABET)) == 31
    assert not set("01ILO") & set(lc.ALPHABET)
    assert lc.SPACE == 31**8 == 852_891_037_441


def test_codes_are_drawn_from_the_alphabet_and_read_back_however_they_are_typed() -> None:
    codes = {lc.new_login_code() for _ in range(200)}
    assert len(codes) == 200 and all(len(c) == 8 and set(c) <= set(lc.ALPHABET) for c in codes)
    assert lc.normalize("k7qx-m2pa") == lc.normalize(" K7QX M2PA ") == "K7QXM2PA"
    assert lc.display("K7QXM2PA") == "K7QX-M2PA"
    for wrong in ("K7QX-M2P", "K7QX-M2PAA", "K7QX-M2P0", "O7QXM2PA", "K7QX_M2PA", ""):
        assert lc.normalize(wrong) is None, wrong


def test_at_the_default_limits_guessing_any_live_code_stays_below_one_in_a_million_a_day() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    per_minute, ttl = defaults.login_code_per_minute, defaults.scene_ttl_seconds
    # 60 new codes a minute = 10 per 10 s window; a code lives 120 s: at most 13 windows are live.
    assert lc.live_codes_at_most(per_minute, ttl) == 10 * 13 == 130
    assert lc.misses_per_hour_allowed(per_minute, ttl) == 262
    chance = lc.guess_chance_per_day(defaults.login_code_misses_per_hour, per_minute, ttl)
    assert chance == 25 * 250 * 130 / 31**8 < 1e-6
    # Were every scene at the global issue limit to get a code, 8 characters alone would allow five.
    assert lc.live_codes_at_most(defaults.limit_issue_global_per_minute, ttl) == 500 * 13
    assert lc.misses_per_hour_allowed(defaults.limit_issue_global_per_minute, ttl) == 5


SETTINGS_GRID = list(itertools.product([1, 6, 60, 600, 4285], [10, 120, 3600]))


@pytest.mark.parametrize(("per_minute", "ttl"), SETTINGS_GRID)
def test_the_ceiling_of_misses_keeps_the_bound_for_any_settings(per_minute: int, ttl: int) -> None:
    ceiling = lc.misses_per_hour_allowed(per_minute, ttl)
    assert lc.guess_chance_per_day(ceiling, per_minute, ttl) <= lc.TARGET_PER_DAY
    assert lc.guess_chance_per_day(ceiling + 1, per_minute, ttl) > lc.TARGET_PER_DAY


def test_the_service_uses_no_more_misses_than_the_bound_allows_whatever_is_configured() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_key=generate_key(), scene_ttl_seconds=3600, login_code_misses_per_hour=250
    )
    collections: dict[str, object] = {"scenes": None, "scene_rates": None}  # never touched here
    codes = login_codes(settings, SceneStore(collections), RateWindowStore(collections))  # type: ignore[arg-type]
    assert codes is not None
    assert codes._limits.misses.capacity == lc.misses_per_hour_allowed(60, 3600) == 9  # type: ignore[attr-defined]
    off = settings.model_copy(update={"login_code_per_minute": 0})
    assert login_codes(off, SceneStore(collections), RateWindowStore(collections)) is None  # type: ignore[arg-type]


def test_a_login_code_is_sealed_on_the_bus() -> None:
    sealer = Sealer.from_text(generate_key())
    for message in (
        m.IssuedScene(scene=SCENE, image="data:,", expires_at=m.utcnow(), login_code=SecretStr("K7QXM2PA")),
        m.ScanLoginCode(login_code=SecretStr("K7QXM2PA"), scan_hash=HASH, entrant="0" * 32),
        m.EnterLoginCode(login_code=SecretStr("K7QXM2PA"), code=SecretStr("wx-code"), scan_hash=HASH),
    ):
        body = m.encode(message, sealer)
        assert b"K7QXM2PA" not in body and b"wx-code" not in body
        assert m.decode(message.TYPE, message.VERSION, body, sealer) == message
        assert "K7QXM2PA" not in repr(message)
