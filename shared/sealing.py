"""AES-256-GCM sealing of small secrets: session keys at rest and secret fields of bus messages.

A sealed value is text: ``v2.<kid>.<base64url(nonce | ciphertext | tag)>``, where ``kid`` names the
key that sealed it (a short hash of the key), so keys rotate without downtime: a setting lists
several comma-separated keys, the first seals and every one opens. ``v1.<blob>`` values (no key id,
written by earlier versions) still open with any listed key. The associated data binds a value to
its purpose (a field name, a user id) so a sealed value cannot be replayed elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_V1 = "v1."
_V2 = "v2."
_KID_LENGTH = 8


class SealError(ValueError):
    """A sealed value is malformed, was sealed with another key, or was tampered with."""


def generate_key() -> str:
    """A fresh key, as the base64 text settings expect."""
    return base64.b64encode(os.urandom(32)).decode()


def decode_key(text: str) -> bytes:
    """Parse a base64 key of 32 bytes (raises ``ValueError`` with a clear message)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("key must be base64") from exc
    if len(raw) != 32:
        raise ValueError(f"key must be 32 bytes, got {len(raw)}")
    return raw


def decode_keys(text: str) -> list[bytes]:
    """Parse a setting of one or more comma-separated base64 keys, the sealing one first."""
    keys = [decode_key(item.strip()) for item in text.split(",") if item.strip()]
    if not keys:
        raise ValueError("no key given")
    return keys


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (8 hex digits of a labelled SHA-256: names it, reveals nothing)."""
    return hashlib.sha256(b"wxlogin sealing key id\x00" + key).hexdigest()[:_KID_LENGTH]


class Sealer:
    """Seals with the first of its AES-256-GCM keys and opens with any of them."""

    def __init__(self, key: bytes, *older: bytes) -> None:
        keys = [key, *older]
        if any(len(k) != 32 for k in keys):
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self.keys: tuple[bytes, ...] = tuple(keys)
        self._aeads: dict[str, AESGCM] = {}
        for k in keys:  # in order: the sealing key is tried first, and wins a (2^-32) kid clash
            self._aeads.setdefault(key_id(k), AESGCM(k))
        self.kid = key_id(key)

    @classmethod
    def from_text(cls, text: str) -> Sealer:
        """Build from the base64 text kept in settings: one key, or several comma-separated (the
        first seals; the others only open, during a rotation)."""
        return cls.from_keys(decode_keys(text))

    @classmethod
    def from_keys(cls, keys: Sequence[bytes]) -> Sealer:
        """Build from raw keys, the sealing one first."""
        return cls(keys[0], *keys[1:])

    def seal(self, plaintext: str, *, purpose: str = "") -> str:
        """Encrypt ``plaintext``; ``purpose`` must be given again to open it."""
        nonce = os.urandom(12)
        blob = nonce + self._aeads[self.kid].encrypt(nonce, plaintext.encode(), purpose.encode())
        return f"{_V2}{self.kid}.{_b64(blob)}"

    def open(self, sealed: str, *, purpose: str = "") -> str:
        """Decrypt a value made by :meth:`seal` with one of our keys and the same purpose."""
        if not isinstance(sealed, str):
            raise SealError("not a sealed value")
        if sealed.startswith(_V2):
            kid, _, body = sealed[len(_V2) :].partition(".")
            aead = self._aeads.get(kid)
            if aead is None:
                raise SealError(f"sealed with key {kid[:_KID_LENGTH]!r}, which is not configured")
            candidates = [aead]
        elif sealed.startswith(_V1):
            body, candidates = sealed[len(_V1) :], list(self._aeads.values())
        else:
            raise SealError("not a sealed value")
        blob = _unb64(body)
        for aead in candidates:
            try:
                return aead.decrypt(blob[:12], blob[12:], purpose.encode()).decode()
            except InvalidTag:
                continue
        raise SealError("sealed value does not verify")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(body: str) -> bytes:
    try:
        blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SealError("sealed value is not base64") from exc
    if len(blob) < 12 + 16:
        raise SealError("sealed value is too short")
    return blob
