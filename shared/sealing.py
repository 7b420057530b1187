"""AES-256-GCM sealing of small secrets: session keys at rest and secret fields of bus messages.

A sealed value is text: ``v1.<base64url(nonce | ciphertext | tag)>``. The associated data binds a
value to its purpose (a field name, a user id) so a sealed value cannot be replayed elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "v1."


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


class Sealer:
    """Seals and opens text with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    @classmethod
    def from_text(cls, text: str) -> Sealer:
        """Build from the base64 text kept in settings."""
        return cls(decode_key(text))

    def seal(self, plaintext: str, *, purpose: str = "") -> str:
        """Encrypt ``plaintext``; ``purpose`` must be given again to open it."""
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return _PREFIX + base64.urlsafe_b64encode(blob).decode().rstrip("=")

    def open(self, sealed: str, *, purpose: str = "") -> str:
        """Decrypt a value made by :meth:`seal` with the same key and purpose."""
        if not isinstance(sealed, str) or not sealed.startswith(_PREFIX):
            raise SealError("not a sealed value")
        body = sealed[len(_PREFIX) :]
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise SealError("sealed value is not base64") from exc
        if len(blob) < 12 + 16:
            raise SealError("sealed value is too short")
        try:
            return self._aead.decrypt(blob[:12], blob[12:], purpose.encode()).decode()
        except InvalidTag as exc:
            raise SealError("sealed value does not verify") from exc
