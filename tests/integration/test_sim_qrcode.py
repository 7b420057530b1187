"""The simulator's ``wxa/getwxacodeunlimit`` over real HTTP: its checks, its image, its 5000/min limit."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from sim.phone import decode_scene
from sim.wechat.testing import Answer, RunningSim, running_sim

APPID = "wx5f3a9c2e81d04b76"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
RID = re.compile(r" rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$")
PUNCTUATION_SCENE = "aZ09!#$&'()*+,/:;=?@-._~xyzABCDE"  # every allowed punctuation mark, 32 chars


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    async with running_sim(appid=APPID, secret=SECRET) as running:
        yield running


@pytest.fixture
async def token(sim: RunningSim) -> str:
    return await sim.access_token()


async def code(sim: RunningSim, token: str, body: Any = None, *, data: bytes | None = None) -> Answer:
    return await sim.wechat(
        "POST", "wxa/getwxacodeunlimit", params={"access_token": token}, json_body=body, data=data
    )


@pytest.mark.parametrize(
    ("body", "errcode", "wording"),
    [
        (b"", 44002, "empty post data"),
        (b"scene=abc", 40169, "invalid length for scene, or the data is not json string"),
        ({}, 40169, "invalid length for scene, or the data is not json string"),
        ({"scene": ""}, 40169, "invalid length for scene"),
        ({"scene": 12345}, 40169, "invalid length for scene"),
        ({"scene": "a" * 33}, 40169, "invalid length for scene"),
        ({"scene": "登录"}, 40129, "invalid scene"),
        ({"scene": "a%20b"}, 40129, "invalid scene"),
        ({"scene": "a b"}, 40129, "invalid scene"),
        ({"scene": "abc", "page": "/pages/login/index"}, 41030, "invalid page"),
        ({"scene": "abc", "page": "pages/login/index?x=1"}, 41030, "invalid page"),
        ({"scene": "abc", "page": "pages/unpublished/index"}, 41030, "invalid page"),
        ({"scene": "abc", "page": "pages/unpublished/index", "check_path": True, "env_version": "develop"},
         41030, "invalid page"),
        ({"scene": "abc", "page": "pages/login/index?scancode_time=1"}, 85096,
         "not allow include scancode_time field"),
        ({"scene": "abc", "scancode_time": 1}, 85096, "not allow include scancode_time field"),
        ({"scene": "abc", "env_version": "release_error"}, 40097, "invalid args"),
        ({"scene": "abc", "width": 279}, 40097, "invalid args"),
        ({"scene": "abc", "width": 1281}, 40097, "invalid args"),
        ({"scene": "abc", "width": "430"}, 40097, "invalid args"),
        ({"scene": "abc", "line_color": {"r": 256, "g": 0, "b": 0}}, 40097, "invalid args"),
    ],
    ids=["empty-44002", "form-40169", "no-scene-40169", "empty-scene-40169", "number-scene-40169",
         "33-chars-40169", "chinese-40129", "percent-40129", "space-40129", "leading-slash-41030",
         "query-41030", "unpublished-41030", "unpublished-develop-41030", "page-scancode_time-85096",
         "field-scancode_time-85096", "env-40097", "width-279-40097", "width-1281-40097",
         "width-string-40097", "line-color-40097"],
)  # fmt: skip
async def test_getwxacodeunlimit_errcodes(
    sim: RunningSim, token: str, body: bytes | dict[str, Any], errcode: int, wording: str
) -> None:
    answer = await (code(sim, token, data=body) if isinstance(body, bytes) else code(sim, token, body))
    assert answer.status == 200
    assert answer.content_type == "application/json; encoding=utf-8"
    assert answer.json["errcode"] == errcode
    assert answer.json["errmsg"].startswith(wording)
    assert RID.search(answer.json["errmsg"])


@pytest.mark.parametrize(
    ("params", "errcode"),
    [({}, 41001), ({"access_token": "abc"}, 40014), ({"access_token": "80_" + "x" * 130}, 40001)],
    ids=["missing-41001", "malformed-40014", "unknown-40001"],
)
async def test_getwxacodeunlimit_token_errcodes(
    sim: RunningSim, params: dict[str, str], errcode: int
) -> None:
    answer = await sim.wechat("POST", "wxa/getwxacodeunlimit", params=params, json_body={"scene": "abc"})
    assert answer.errcode == errcode


async def test_getwxacodeunlimit_requires_post(sim: RunningSim, token: str) -> None:
    answer = await sim.wechat("GET", "wxa/getwxacodeunlimit", params={"access_token": token})
    assert answer.errcode == 43002


async def test_code_is_a_png_labelled_image_jpeg_that_decodes_to_exactly_the_scene(
    sim: RunningSim, token: str
) -> None:
    answer = await code(sim, token, {"scene": PUNCTUATION_SCENE, "page": "pages/login/index"})
    assert answer.status == 200
    assert answer.content_type == "image/jpeg"  # the header real WeChat sends
    assert answer.body.startswith(b"\x89PNG\r\n\x1a\n")  # and bytes a client must sniff
    assert decode_scene(answer.body) == PUNCTUATION_SCENE


@pytest.mark.parametrize("width", [280, 430, 1280])
async def test_code_image_is_exactly_the_requested_width(sim: RunningSim, token: str, width: int) -> None:
    answer = await code(sim, token, {"scene": "k=AbC123", "width": width})
    image = Image.open(io.BytesIO(answer.body))
    assert image.size == (width, width)
    assert decode_scene(answer.body) == "k=AbC123"


async def test_default_width_is_430(sim: RunningSim, token: str) -> None:
    answer = await code(sim, token, {"scene": "abc"})
    assert Image.open(io.BytesIO(answer.body)).size == (430, 430)


async def test_hyaline_code_has_a_transparent_background_and_line_color_as_strings(
    sim: RunningSim, token: str
) -> None:
    answer = await code(
        sim,
        token,
        {"scene": "abc", "is_hyaline": True, "line_color": {"r": "200", "g": "0", "b": "0"}},
    )
    image = Image.open(io.BytesIO(answer.body)).convert("RGBA")
    assert image.getpixel((0, 0))[3] == 0  # the corner (quiet zone) is transparent
    dark = {color[:3] for _, color in image.getcolors() or [] if color[3] == 255}
    assert dark == {(200, 0, 0)}
    assert decode_scene(answer.body) == "abc"


@pytest.mark.parametrize("env_version", ["release", "trial", "develop"])
async def test_every_documented_env_version_is_accepted(
    sim: RunningSim, token: str, env_version: str
) -> None:
    answer = await code(sim, token, {"scene": "abc", "env_version": env_version})
    assert answer.content_type == "image/jpeg"


async def test_check_path_false_accepts_an_unpublished_page(sim: RunningSim, token: str) -> None:
    answer = await code(sim, token, {"scene": "abc", "page": "pages/new/index", "check_path": False})
    assert answer.content_type == "image/jpeg"


async def test_an_unpublished_mini_program_needs_check_path_false(sim: RunningSim, token: str) -> None:
    await sim.control.configure(published_pages=[])
    assert (await code(sim, token, {"scene": "abc"})).errcode == 41030
    answer = await code(sim, token, {"scene": "abc", "check_path": False, "env_version": "develop"})
    assert answer.content_type == "image/jpeg"


async def test_more_than_the_per_minute_limit_gets_45009_until_the_next_minute(
    sim: RunningSim, token: str
) -> None:
    assert (await sim.control.configure())["limits"]["qrcode_per_minute"] == 5000  # the real limit
    await sim.control.configure(limits={"qrcode_per_minute": 3})
    await sim.control.advance(60 - sim.state.now() % 60 + 0.01)  # a burst inside one minute
    for _ in range(3):
        assert (await code(sim, token, {"scene": "abc"})).content_type == "image/jpeg"
    refused = await code(sim, token, {"scene": "abc"})
    assert refused.errcode == 45009
    assert refused.json["errmsg"].startswith("api freq out of limit")
    await sim.control.advance(60)
    assert (await code(sim, token, {"scene": "abc"})).content_type == "image/jpeg"
