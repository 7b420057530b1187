"""Secret redaction in logs: by key, in free text and URLs, by registered value, for stdlib loggers too."""

from __future__ import annotations

import io
import json
import logging

import pytest
from structlog.testing import capture_logs

from shared.logging import configure_logging, get_logger, register_secret


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    configure_logging(service="test", fmt="json", level="INFO", stream=stream, cache_loggers=False)
    yield stream
    configure_logging(service="tests", fmt="json", level="WARNING", cache_loggers=False)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_secret_keys_are_redacted(captured: io.StringIO) -> None:
    get_logger("t").info(
        "login",
        js_code="0716AVll20uHk94SLDml27etM946AVlq",
        session_key="tiihtNczf5v6AKRyjwEUhQ==",
        ticket="TICKET-123456",
        openid="o123",
    )
    (line,) = lines(captured)
    assert line["js_code"] == line["session_key"] == line["ticket"] == "[redacted]"
    assert line["openid"] == "o123"


def test_query_string_secrets_inside_text_are_redacted(captured: io.StringIO) -> None:
    get_logger("t").warning(
        "failed",
        detail="GET https://api.weixin.qq.com/sns/jscode2session?appid=wx1&secret=S3CR3T&js_code=C0DE1234",
    )
    text = captured.getvalue()
    assert "S3CR3T" not in text and "C0DE1234" not in text
    assert "appid=wx1" in text


def test_nested_secret_keys_are_redacted(captured: io.StringIO) -> None:
    get_logger("t").info("body", payload={"outer": {"refresh_token": "r-very-secret", "ok": 1}})
    assert "r-very-secret" not in captured.getvalue()


def test_a_link_token_is_redacted_as_a_key_and_in_a_query(captured: io.StringIO) -> None:
    get_logger("t").info("link", link_token="LT-very-secret", detail="GET /x?link_token=LT-in-a-url&a=1")
    text = captured.getvalue()
    assert "LT-very-secret" not in text and "LT-in-a-url" not in text and "a=1" in text


def test_openid_connect_secrets_are_redacted_as_keys_and_in_a_query(captured: io.StringIO) -> None:
    get_logger("t").info(
        "oidc",
        client_secret="CS-secret",
        code_verifier="CV-secret",
        id_token="IT-secret",
        login_code="LC-secret",
        op_session="OP-secret",
        detail="GET /oidc/logout?id_token_hint=HINT-secret&state=s "
        "POST client_secret=CS2-secret&code_verifier=CV2-x",
    )
    out = captured.getvalue()
    secrets = ("CS-secret", "CV-secret", "IT-secret", "LC-secret", "OP-secret", "HINT-secret", "CS2-secret")
    for secret in (*secrets, "CV2-x"):
        assert secret not in out
    assert "state=s" in out


def test_registered_secret_values_are_scrubbed_anywhere(captured: io.StringIO) -> None:
    register_secret("86_RegisteredAccessTokenValue")
    get_logger("t").info("oops", note="token was 86_RegisteredAccessTokenValue in a message")
    assert "86_RegisteredAccessTokenValue" not in captured.getvalue()


def test_bearer_tokens_are_scrubbed(captured: io.StringIO) -> None:
    get_logger("t").info("header", note="Authorization: Bearer eyJhbGciOiJFZERTQSJ9.payload.sig")
    assert "eyJhbGciOiJFZERTQSJ9" not in captured.getvalue()


def test_standard_library_loggers_go_through_the_same_redaction(captured: io.StringIO) -> None:
    logging.getLogger("aiohttp.client").error("GET /cgi-bin/token?grant_type=x&secret=STDLIB-SECRET failed")
    text = captured.getvalue()
    assert "STDLIB-SECRET" not in text
    assert "aiohttp.client" in text


def test_exception_text_is_redacted(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("connect failed for https://x/y?access_token=EXC-TOKEN-1")
    except RuntimeError:
        get_logger("t").exception("crashed")
    text = captured.getvalue()
    assert "EXC-TOKEN-1" not in text and "RuntimeError" in text


def test_the_appsecret_stays_redacted_however_many_tokens_come_after_it(captured: io.StringIO) -> None:
    register_secret("pinned-app-secret-value", pin=True)
    for i in range(100):
        register_secret(f"86_rotating_access_token_{i:04d}")
    get_logger("t").info("oops", note="pinned-app-secret-value and 86_rotating_access_token_0099")
    text = captured.getvalue()
    assert "pinned-app-secret-value" not in text
    assert "86_rotating_access_token_0099" not in text


def test_a_broker_outage_is_not_a_flood_of_client_library_tracebacks(captured: io.StringIO) -> None:
    # What aiormq logs for every failed reconnect attempt and every closed connection.
    logging.getLogger("aiormq.connection").error("error when creating transport: %r", ConnectionError(111))
    logging.getLogger("aio_pika.robust_connection").warning("Unexpected connection close from remote")
    assert "creating transport" not in captured.getvalue()
    assert "Unexpected connection close" not in captured.getvalue()


def test_short_and_odd_cased_secrets_are_still_scrubbed(captured: io.StringIO) -> None:
    # The patterns run only on text that could hold a match: "=" or "%" for a query parameter, eight
    # characters and the word "bearer" in any case for a bearer token.
    get_logger("t").info("short", detail="code=ab", header="bEaReR tok", encoded="x?js_code%3Dq1")
    (line,) = lines(captured)
    assert line["detail"] == "code=[redacted]"
    assert line["header"] == "Bearer [redacted]"
    assert line["encoded"] == "x?js_code%3D[redacted]"


def test_a_logger_kept_across_a_level_change_follows_the_new_level() -> None:
    # A service's loggers are cached on first use; what they drop below the level must follow the
    # level set now.
    log = get_logger("kept")
    stream = io.StringIO()
    try:
        configure_logging(service="test", fmt="json", level="WARNING", stream=stream)
        log.info("dropped")
        log.debug("dropped too")
        log.warning("kept_warning")
        configure_logging(service="test", fmt="json", level="DEBUG", stream=stream)
        log.debug("now_kept", a=1)
        log.info("also_kept")
    finally:
        configure_logging(service="tests", fmt="json", level="WARNING", cache_loggers=False)
    assert [line["event"] for line in lines(stream)] == ["kept_warning", "now_kept", "also_kept"]


def test_captured_logs_see_info_lines_below_the_level() -> None:
    # capture_logs replaces the processors (no filter_by_level first): the early drop of a line below
    # the level must not hide it from a test that captures everything.
    log = get_logger("captured")
    log.info("warm")  # below WARNING, dropped early
    with capture_logs() as captured:
        log.info("seen", a=1)
        log.debug("seen_too")
    assert [entry["event"] for entry in captured] == ["seen", "seen_too"]
