"""Typed login codes: what a user whose browser runs on the phone itself types into the mini-program
instead of scanning (docs/embed.md, docs/security.md §"Typed login codes").

A code is 8 characters from an alphabet without look-alikes (no 0/O, no 1/I/L): 31**8 ≈ 8.5e11
codes. It opens its scene like a scan does; it is stored only as a keyed hash. This module also holds
the arithmetic that keeps guessing any live code below 10^-6 a day: how many codes can be live at
once, and how many entries that name no live code all replicas together may let through an hour.
"""

from __future__ import annotations

import math
import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
LENGTH = 8
SPACE = len(ALPHABET) ** LENGTH  # 852,891,037,441
# The bound: the chance that guessing finds any live code within a day.
TARGET_PER_DAY = 1e-6
# New codes are counted in the qrcode service's 10 s windows (services/qrcode/limits.py), misses in
# one-hour windows; any 24 hours overlap at most 25 of those.
MINT_WINDOW_SECONDS = 10.0
MISS_WINDOW_SECONDS = 3600.0
MISS_WINDOWS_PER_DAY = 25
_SEPARATORS = str.maketrans("", "", " -\t")


def new_login_code() -> str:
    """A fresh code: 8 characters drawn uniformly from :data:`ALPHABET` (39.6 random bits)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalize(text: str) -> str | None:
    """The code as typed (any case, spaces or dashes between groups) in its stored form, or None when
    it cannot be a code (wrong length, a character outside the alphabet)."""
    code = text.translate(_SEPARATORS).upper()
    if len(code) != LENGTH or any(ch not in ALPHABET for ch in code):
        return None
    return code


def display(code: str) -> str:
    """How a page shows a code: two groups of four, ``ABCD-EFGH``."""
    return f"{code[:4]}-{code[4:]}"


def mint_window_capacity(per_minute: int) -> int:
    """New codes one 10 s window allows (as the qrcode service's shared windows count them)."""
    return max(1, math.floor(per_minute * MINT_WINDOW_SECONDS / 60.0))


def live_codes_at_most(per_minute: int, ttl_seconds: float) -> int:
    """The most codes that can be live at once: a code lives with its scene (``ttl_seconds``), and
    the last ``ttl_seconds`` overlap at most ``ceil(ttl / 10) + 1`` windows of new codes."""
    if per_minute <= 0:
        return 0
    windows = math.ceil(ttl_seconds / MINT_WINDOW_SECONDS) + 1
    return mint_window_capacity(per_minute) * windows


def misses_per_hour_allowed(per_minute: int, ttl_seconds: float) -> int:
    """The most misses an hour that keep the chance of finding any live code within a day below
    :data:`TARGET_PER_DAY`: ``25 * misses * live / SPACE <= 10^-6``."""
    live = live_codes_at_most(per_minute, ttl_seconds)
    if live == 0:
        return 0
    return math.floor(TARGET_PER_DAY * SPACE / (MISS_WINDOWS_PER_DAY * live))


def guess_chance_per_day(misses_per_hour: int, per_minute: int, ttl_seconds: float) -> float:
    """The chance that guessing, at the limits, finds any live code within a day."""
    live = live_codes_at_most(per_minute, ttl_seconds)
    return MISS_WINDOWS_PER_DAY * misses_per_hour * live / SPACE
