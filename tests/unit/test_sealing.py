"""Sealing with key ids: the first key seals, every listed key opens, earlier ``v1.`` values still open."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.sealing import Sealer, SealError, decode_key, generate_key, key_id


def test_a_sealed_value_names_the_key_that_sealed_it() -> None:
    key = generate_key()
    sealed = Sealer.from_text(key).seal("secret", purpose="p")
    assert sealed.startswith(f"v2.{key_id(decode_key(key))}.")
    assert "secret" not in sealed


def test_data_sealed_with_the_old_key_opens_after_the_data_key_rotates() -> None:
    old, new = generate_key(), generate_key()
    stored = Sealer.from_text(old).seal("session-key", purpose="session-key:o1")
    rotated = Sealer.from_text(f"{new}, {old}")
    assert rotated.open(stored, purpose="session-key:o1") == "session-key"
    assert rotated.seal("x").startswith(f"v2.{key_id(decode_key(new))}.")
    with pytest.raises(SealError, match="not configured"):
        Sealer.from_text(new).open(stored, purpose="session-key:o1")


def test_values_sealed_by_an_earlier_version_open_with_any_listed_key() -> None:
    old, new = generate_key(), generate_key()
    nonce = os.urandom(12)
    blob = nonce + AESGCM(decode_key(old)).encrypt(nonce, b"pem", b"signing-key:k1")
    legacy = "v1." + base64.urlsafe_b64encode(blob).decode().rstrip("=")
    assert Sealer.from_text(f"{new},{old}").open(legacy, purpose="signing-key:k1") == "pem"
    with pytest.raises(SealError):
        Sealer.from_text(new).open(legacy, purpose="signing-key:k1")


def test_the_purpose_is_bound() -> None:
    sealer = Sealer.from_text(generate_key())
    with pytest.raises(SealError):
        sealer.open(sealer.seal("x", purpose="a"), purpose="b")


@pytest.mark.parametrize("text", ["", " , ", "bm90IGEga2V5", "not base64!"])
def test_a_setting_without_a_usable_key_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="key"):
        Sealer.from_text(text)
