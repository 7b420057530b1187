"""What a client sees of a user: its subject (``sub``) and its ``preferred_username``.

A public client sees the user id; a pairwise client sees an id of its own (OpenID Connect Core
§8.1), so two sites cannot correlate one WeChat user. Both the pairwise ``sub`` and the
``preferred_username`` are keyed hashes (HMAC-SHA256 with the subject key): stable, and unguessable
without the key. The subject key must never change once clients have seen subjects: it is its own
setting (``WXLOGIN_SUBJECT_KEY``), not the data key, which rotates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.clients import Client
from shared.config import Settings
from shared.sealing import decode_key, decode_keys


def subject_key(settings: Settings) -> bytes:
    """The key of pairwise subjects and usernames: ``WXLOGIN_SUBJECT_KEY``, or (development only; the
    production start-up check asks for the setting) one derived from the current data key."""
    own = settings.subject_key.get_secret_value()
    if own:
        return decode_key(own)
    data_key = decode_keys(settings.data_key.get_secret_value())[0]
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"wxlogin subject key v1")
    return hkdf.derive(data_key)


def _keyed(key: bytes, label: str, *parts: str) -> bytes:
    message = "\x00".join((label, *parts)).encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def subject(client: Client, user_id: str, key: bytes) -> str:
    """The ``sub`` ``client`` sees for ``user_id``: the id itself, or a pairwise id (``p_`` + 32
    base32 characters, 160 bits)."""
    if client.subject_type == "public":
        return user_id
    digest = _keyed(key, "pairwise-sub", client.client_id, user_id)
    return "p_" + base64.b32encode(digest[:20]).decode().lower()


def preferred_username(client: Client, user_id: str, key: bytes) -> str:
    """``wx_`` + 16 base32 characters (80 bits): namespaced (never collides with a site's own
    usernames), unguessable, stable; per client for a pairwise client."""
    scope = client.client_id if client.subject_type == "pairwise" else ""
    digest = _keyed(key, "username", scope, user_id)
    return "wx_" + base64.b32encode(digest[:10]).decode().lower()
