"""WeChat open-data cryptography: ``encryptedData`` (AES-128-CBC), the rawData and session signatures.

Verified against WeChat's official vectors (``tests/data/``):

* ``encryptedData``: AES-128-CBC, PKCS#7 padding to 16-byte blocks, key = base64-decoded session_key,
  plaintext = UTF-8 JSON whose ``watermark.appid`` must be ours;
* rawData signature: ``sha1(rawData + session_key)``, lowercase hex, session_key as its base64 text;
* session signature (``wxa/checksession``, user login-state signatures): HMAC-SHA256 keyed with the
  session_key *text* (not decoded), lowercase hex.

Errors never carry key material or plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK_BITS = 128  # AES block; WeChat pads to 16 bytes (the official vector ends with seven 0x07)
KEY_BYTES = 16
IV_BYTES = 16


class WxCryptoError(ValueError):
    """Open data that cannot be trusted: undecodable, wrongly padded, or not for this app."""


class DecryptionFailed(WxCryptoError):
    """The key, iv or ciphertext is malformed, or the plaintext is not the JSON WeChat sends.

    A stale session_key (the user called ``wx.login`` again) usually ends here.
    """


class WatermarkMismatch(WxCryptoError):
    """The data decrypted, but its ``watermark.appid`` is not ours (or it has no watermark)."""


def _b64(value: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise DecryptionFailed(f"{what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise DecryptionFailed(f"{what} must decode to {size} bytes, not {len(raw)}")
    return raw


def decrypt_encrypted_data(session_key: str, encrypted_data: str, iv: str, *, appid: str) -> dict[str, Any]:
    """The JSON object inside ``encrypted_data``, after checking that its watermark names ``appid``."""
    key = _b64(session_key, "session_key", KEY_BYTES)
    vector = _b64(iv, "iv", IV_BYTES)
    ciphertext = _b64(encrypted_data, "encrypted_data")
    if not ciphertext or len(ciphertext) % (BLOCK_BITS // 8):
        raise DecryptionFailed("encrypted_data is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(vector)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(BLOCK_BITS).unpadder()
    try:
        plaintext = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        # Wrong key or iv: the last block decrypts to noise whose padding is invalid.
        raise DecryptionFailed("bad padding (wrong session_key or iv?)") from None
    try:
        data = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DecryptionFailed("plaintext is not UTF-8 JSON (wrong session_key or iv?)") from None
    if not isinstance(data, dict):
        raise DecryptionFailed("plaintext is not a JSON object")
    watermark = data.get("watermark")
    if not isinstance(watermark, dict) or watermark.get("appid") != appid:
        raise WatermarkMismatch("the data was not issued for this appid")
    return data


def encrypt_data(
    session_key: str,
    data: Mapping[str, Any],
    *,
    appid: str,
    timestamp: int,
    iv: bytes | None = None,
) -> tuple[str, str]:
    """``(encrypted_data, iv)`` in base64, as WeChat makes them: ``data`` plus a watermark.

    Used by the simulator; ``iv`` is random unless given (tests pin it).
    """
    key = _b64(session_key, "session_key", KEY_BYTES)
    vector = iv if iv is not None else os.urandom(IV_BYTES)
    if len(vector) != IV_BYTES:
        raise WxCryptoError(f"iv must be {IV_BYTES} bytes")
    body = {**data, "watermark": {"timestamp": timestamp, "appid": appid}}
    plaintext = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    padder = padding.PKCS7(BLOCK_BITS).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(vector)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(ciphertext).decode(), base64.b64encode(vector).decode()


def rawdata_signature(raw_data: str, session_key: str) -> str:
    """``sha1(rawData + session_key)`` in lowercase hex (the ``signature`` next to ``rawData``)."""
    return hashlib.sha1((raw_data + session_key).encode("utf-8"), usedforsecurity=False).hexdigest()


def verify_rawdata_signature(raw_data: str, session_key: str, signature: str) -> bool:
    """True when ``signature`` is rawData's signature under ``session_key`` (constant time)."""
    return hmac.compare_digest(rawdata_signature(raw_data, session_key), signature.lower())


def session_signature(session_key: str, message: str | bytes = b"") -> str:
    """HMAC-SHA256 of ``message`` keyed with the session_key text, lowercase hex.

    With the empty message it is the ``signature`` of ``GET /wxa/checksession``.
    """
    msg = message.encode("utf-8") if isinstance(message, str) else message
    return hmac.new(session_key.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def verify_session_signature(session_key: str, message: str | bytes, signature: str) -> bool:
    """True when ``signature`` is ``message``'s session signature under ``session_key`` (constant time)."""
    return hmac.compare_digest(session_signature(session_key, message), signature.lower())
