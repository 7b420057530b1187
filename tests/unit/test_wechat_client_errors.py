"""The client's error groups, rate-limit delays and token retry, with hand-written fakes (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.wechat import (
    WeChatBadRequest,
    WeChatError,
    WeChatRateLimited,
    WeChatRetryLater,
    WeChatTokenInvalid,
    call_with_token,
    classify,
    image_is_complete,
    rate_limit_delay,
    sniff_image_type,
)

# 2026-03-01 23:00 in Beijing (UTC+8) is 15:00 UTC: one hour before the daily quotas reset.
BEIJING_23H = datetime(2026, 3, 1, 15, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("errcode", "group"),
    [
        (-1, WeChatRetryLater),
        (40001, WeChatTokenInvalid),
        (40014, WeChatTokenInvalid),
        (42001, WeChatTokenInvalid),
        (45009, WeChatRateLimited),
        (45011, WeChatRateLimited),
        (40029, WeChatBadRequest),
        (40163, WeChatBadRequest),
        (40226, WeChatBadRequest),
        (40129, WeChatBadRequest),
        (41030, WeChatBadRequest),
        (47001, WeChatBadRequest),
        (87009, WeChatBadRequest),
    ],
)
def test_each_errcode_falls_in_the_group_that_says_what_to_do(errcode: int, group: type[WeChatError]) -> None:
    error = classify("sns/jscode2session", errcode, "msg")
    assert type(error) is group
    assert (error.endpoint, error.errcode, error.errmsg) == ("sns/jscode2session", errcode, "msg")


@pytest.mark.parametrize(
    ("endpoint", "errcode", "seconds"),
    [
        ("sns/jscode2session", 45011, 60.0),
        ("cgi-bin/stable_token", 45011, 60.0),
        ("wxa/getwxacodeunlimit", 45009, 60.0),  # its 45009 is the 5000/minute limit
        ("cgi-bin/token", 45009, 3600.0),  # a daily quota: until Beijing midnight
        ("cgi-bin/stable_token", 45009, 3600.0),
    ],
)
def test_rate_limited_carries_how_long_to_wait(endpoint: str, errcode: int, seconds: float) -> None:
    error = classify(endpoint, errcode, "limit", now=BEIJING_23H)
    assert isinstance(error, WeChatRateLimited)
    assert error.retry_after == pytest.approx(seconds)


def test_daily_quota_at_beijing_midnight_waits_a_whole_day() -> None:
    midnight = datetime(2026, 3, 1, 16, 0, tzinfo=UTC).timestamp()  # 00:00 on 2 March in Beijing
    assert rate_limit_delay("cgi-bin/token", 45009, now=midnight) == pytest.approx(86400)


class FakeTokens:
    """A TokenProvider that hands out t1, t2, ... and records what it was told."""

    def __init__(self) -> None:
        self.issued = 1
        self.invalidations: list[tuple[str, int]] = []

    async def get(self) -> str:
        return f"t{self.issued}"

    async def invalidated(self, token: str, errcode: int, *, deadline: float | None = None) -> str:
        self.invalidations.append((token, errcode))
        self.issued += 1
        return f"t{self.issued}"


class ScriptedCall:
    """A WeChat call that raises the scripted errors in turn, then returns the token it got."""

    def __init__(self, *errors: WeChatError) -> None:
        self.errors = list(errors)
        self.tokens: list[str] = []

    async def __call__(self, token: str) -> str:
        self.tokens.append(token)
        if self.errors:
            raise self.errors.pop(0)
        return f"done with {token}"


async def test_call_with_token_makes_one_call_when_the_token_is_good() -> None:
    tokens, call = FakeTokens(), ScriptedCall()
    assert await call_with_token(tokens, call) == "done with t1"
    assert tokens.invalidations == []


@pytest.mark.parametrize("errcode", [40001, 40014, 42001])
async def test_a_token_error_invalidates_once_and_retries_once_with_the_new_token(errcode: int) -> None:
    tokens, call = FakeTokens(), ScriptedCall(WeChatTokenInvalid("wxa/getwxacodeunlimit", errcode, "bad"))
    assert await call_with_token(tokens, call) == "done with t2"
    assert tokens.invalidations == [("t1", errcode)]
    assert call.tokens == ["t1", "t2"]


async def test_a_second_token_error_is_raised_without_another_invalidation() -> None:
    tokens = FakeTokens()
    call = ScriptedCall(
        WeChatTokenInvalid("wxa/getwxacodeunlimit", 40001, "bad"),
        WeChatTokenInvalid("wxa/getwxacodeunlimit", 40001, "bad again"),
    )
    with pytest.raises(WeChatTokenInvalid, match="bad again"):
        await call_with_token(tokens, call)
    assert tokens.invalidations == [("t1", 40001)]
    assert call.tokens == ["t1", "t2"]


@pytest.mark.parametrize(
    "error",
    [
        WeChatRateLimited("wxa/getwxacodeunlimit", 45009, "limit", retry_after=60),
        WeChatRetryLater("wxa/getwxacodeunlimit", -1, "system error"),
        WeChatBadRequest("wxa/getwxacodeunlimit", 40129, "invalid scene"),
    ],
    ids=["rate-limited", "retry-later", "bad-request"],
)
async def test_other_errors_do_not_touch_the_token(error: WeChatError) -> None:
    tokens, call = FakeTokens(), ScriptedCall(error)
    with pytest.raises(type(error)):
        await call_with_token(tokens, call)
    assert tokens.invalidations == []
    assert call.tokens == ["t1"]


@pytest.mark.parametrize(
    ("data", "kind", "complete"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40 + b"IEND\xaeB`\x82", "image/png", True),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "image/png", False),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40 + b"\xff\xd9", "image/jpeg", True),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40 + b"\xff\xd9\x00\x00", "image/jpeg", True),  # trailing padding
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200, "image/jpeg", False),
    ],
    ids=["png", "png-cut", "jpeg", "jpeg-padded", "jpeg-cut"],
)
def test_images_are_sniffed_and_a_cut_short_one_is_noticed(data: bytes, kind: str, complete: bool) -> None:
    assert sniff_image_type(data) == kind
    assert image_is_complete(data, kind) is complete


def test_a_json_error_is_not_mistaken_for_an_image() -> None:
    assert sniff_image_type(b'{"errcode":40129,"errmsg":"invalid scene"}') is None
