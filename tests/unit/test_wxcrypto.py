"""Open-data crypto against WeChat's official vectors (copied into tests/data), and its refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.wxcrypto import (
    DecryptionFailed,
    WatermarkMismatch,
    decrypt_encrypted_data,
    encrypt_data,
    rawdata_signature,
    session_signature,
    verify_rawdata_signature,
    verify_session_signature,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return data


ENCRYPTED = vector("encrypteddata_official_vector.json")
RAWDATA = vector("rawdata_signature_official_vector.json")
SESSION = vector("session_signature_official_vector.json")


def test_official_encrypted_data_vector_decrypts_to_the_published_user_info() -> None:
    data = decrypt_encrypted_data(
        ENCRYPTED["session_key"], ENCRYPTED["encryptedData"], ENCRYPTED["iv"], appid=ENCRYPTED["appid"]
    )
    assert data == json.loads(ENCRYPTED["expected_plaintext"])
    assert data["watermark"]["appid"] == "wx4f4bc4dec97d474b"


def test_official_vector_with_another_appid_in_mind_is_rejected_by_its_watermark() -> None:
    with pytest.raises(WatermarkMismatch):
        decrypt_encrypted_data(
            ENCRYPTED["session_key"], ENCRYPTED["encryptedData"], ENCRYPTED["iv"], appid="wx0000000000000000"
        )


def test_official_vector_with_a_stale_session_key_fails_to_decrypt() -> None:
    other_key = base64.b64encode(b"\x01" * 16).decode()
    with pytest.raises(DecryptionFailed):
        decrypt_encrypted_data(
            other_key, ENCRYPTED["encryptedData"], ENCRYPTED["iv"], appid=ENCRYPTED["appid"]
        )


@pytest.mark.parametrize(
    ("session_key", "encrypted_data", "iv", "why"),
    [
        ("not base64!", ENCRYPTED["encryptedData"], ENCRYPTED["iv"], "session_key is not valid base64"),
        (base64.b64encode(b"k" * 24).decode(), ENCRYPTED["encryptedData"], ENCRYPTED["iv"], "16 bytes"),
        (
            ENCRYPTED["session_key"],
            ENCRYPTED["encryptedData"],
            base64.b64encode(b"i" * 8).decode(),
            "16 bytes",
        ),
        (ENCRYPTED["session_key"], ENCRYPTED["encryptedData"][:-4], ENCRYPTED["iv"], "AES blocks"),
        (ENCRYPTED["session_key"], "", ENCRYPTED["iv"], "AES blocks"),
    ],
    ids=["key-not-base64", "key-24-bytes", "iv-8-bytes", "truncated-ciphertext", "empty-ciphertext"],
)
def test_malformed_inputs_are_refused_without_echoing_the_key(
    session_key: str, encrypted_data: str, iv: str, why: str
) -> None:
    with pytest.raises(DecryptionFailed, match=why) as refused:
        decrypt_encrypted_data(session_key, encrypted_data, iv, appid=ENCRYPTED["appid"])
    assert ENCRYPTED["session_key"] not in str(refused.value)


def test_encrypt_data_pads_to_16_byte_blocks_and_round_trips_with_a_watermark() -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    iv = bytes(range(16, 32))
    encrypted, iv_b64 = encrypt_data(
        key, {"phoneNumber": "13800138000"}, appid="wxabc", timestamp=1700000000, iv=iv
    )
    plaintext_len = len(b'{"phoneNumber":"13800138000","watermark":{"timestamp":1700000000,"appid":"wxabc"}}')
    assert len(base64.b64decode(encrypted)) == (plaintext_len // 16 + 1) * 16  # PKCS#7 on 16-byte blocks
    assert base64.b64decode(iv_b64) == iv
    assert decrypt_encrypted_data(key, encrypted, iv_b64, appid="wxabc") == {
        "phoneNumber": "13800138000",
        "watermark": {"timestamp": 1700000000, "appid": "wxabc"},
    }


def test_data_without_a_watermark_is_rejected() -> None:
    key = base64.b64encode(bytes(16)).decode()
    # Built by hand: what encrypt_data makes, minus the watermark.
    padder = padding.PKCS7(128).padder()
    padded = padder.update(b'{"openId":"o1"}') + padder.finalize()
    enc = Cipher(algorithms.AES(bytes(16)), modes.CBC(bytes(16))).encryptor()
    ciphertext = base64.b64encode(enc.update(padded) + enc.finalize()).decode()
    with pytest.raises(WatermarkMismatch):
        decrypt_encrypted_data(key, ciphertext, base64.b64encode(bytes(16)).decode(), appid="wxabc")


def test_official_rawdata_signature_vector() -> None:
    assert rawdata_signature(RAWDATA["rawData"], RAWDATA["session_key"]) == RAWDATA["signature"]
    assert verify_rawdata_signature(RAWDATA["rawData"], RAWDATA["session_key"], RAWDATA["signature"].upper())


def test_rawdata_signature_changes_when_one_character_of_raw_data_changes() -> None:
    tampered = RAWDATA["rawData"].replace("Band", "Bond")
    assert not verify_rawdata_signature(tampered, RAWDATA["session_key"], RAWDATA["signature"])


def test_official_session_signature_vector_is_keyed_with_the_session_key_text() -> None:
    assert session_signature(SESSION["session_key"], SESSION["post_data"]) == SESSION["signature"]
    assert verify_session_signature(
        SESSION["session_key"], SESSION["post_data"].encode(), SESSION["signature"]
    )
    # The vector pins the reading "key = the base64 text": with the decoded bytes it does not match.
    decoded = hmac.new(
        base64.b64decode(SESSION["session_key"]), SESSION["post_data"].encode(), hashlib.sha256
    )
    assert decoded.hexdigest() != SESSION["signature"]


def test_session_signature_of_the_empty_message_is_what_checksession_expects() -> None:
    key = SESSION["session_key"]
    assert session_signature(key) == hmac.new(key.encode(), b"", hashlib.sha256).hexdigest()
    assert not verify_session_signature(key, b"", "0" * 64)
