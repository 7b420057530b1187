"""The simulator's ``wxa/generate_urllink`` over real HTTP: a link for a non-personal mini-program, the
real errcode 40002 for a personal one, its checks, and what opening the link does (``/sim/url-link``)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sim.wechat.testing import Answer, ControlCallFailed, RunningSim, running_sim

APPID = "wx5f3a9c2e81d04b76"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
LINK = re.compile(r"^https://wxaurl\.cn/[A-Za-z0-9]{11}$")
GOOD = {"path": "pages/login/index", "query": "scene=abc", "expire_type": 1, "expire_interval": 1}


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    async with running_sim(appid=APPID, secret=SECRET) as running:
        yield running


async def generate(sim: RunningSim, body: Any, token: str | None = None) -> Answer:
    token = token if token is not None else await sim.access_token()
    return await sim.wechat("POST", "wxa/generate_urllink", params={"access_token": token}, json_body=body)


async def test_a_link_opens_the_page_with_its_query_in_wechat(sim: RunningSim) -> None:
    answer = await generate(sim, GOOD)
    assert answer.json["errcode"] == 0 and answer.json["errmsg"] == "ok"
    link = answer.json["url_link"]
    assert LINK.match(link)
    opened = await sim.control.call("GET", f"/sim/url-link?url={link}")
    assert (opened["path"], opened["query"]) == ("pages/login/index", "scene=abc")
    assert opened["launch_scene"] == 1194
    # The documentation's own example writes the path with a leading "/".
    assert (await generate(sim, {**GOOD, "path": "/pages/login/index"})).json["errcode"] == 0


async def test_a_personal_mini_program_gets_40002_and_no_link(sim: RunningSim) -> None:
    config = await sim.control.configure(personal=True)
    assert config["personal"] is True
    answer = await generate(sim, GOOD)
    assert answer.errcode == 40002 and "url_link" not in answer.json
    assert "personal" in answer.json["errmsg"]
    await sim.control.configure(personal=False)
    assert (await generate(sim, GOOD)).errcode == 0


@pytest.mark.parametrize(
    ("change", "errcode"),
    [
        ({"path": "pages/nowhere/index"}, 40165),  # not a published page
        ({"path": "pages/login/index?scene=abc"}, 40165),  # the query goes in its own field
        ({"query": "scene=<b>"}, 40212),  # outside the allowed characters
        ({"query": "a" * 1025}, 40212),
        ({"expire_interval": 31}, 85402),  # at most 30 days
        ({"expire_interval": 0}, 85402),
        ({"expire_type": 0, "expire_time": 1}, 85401),  # in the past
        ({"expire_type": None}, 40097),
        ({"env_version": "beta"}, 40097),
    ],
)
async def test_malformed_requests_get_their_errcodes(
    sim: RunningSim, change: dict[str, Any], errcode: int
) -> None:
    body = {key: value for key, value in {**GOOD, **change}.items() if value is not None}
    assert (await generate(sim, body)).errcode == errcode


async def test_a_link_needs_a_valid_token_and_unknown_links_do_not_open(sim: RunningSim) -> None:
    assert (await generate(sim, GOOD, token="")).errcode == 41001
    assert (await generate(sim, GOOD, token="12_" + "x" * 60)).errcode == 40001
    with pytest.raises(ControlCallFailed) as refused:
        await sim.control.call("GET", "/sim/url-link?url=https://wxaurl.cn/AAAAAAAAAAA")
    assert refused.value.status == 404
