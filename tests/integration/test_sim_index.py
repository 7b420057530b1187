"""The simulator's ``GET /`` over real HTTP: a page for a browser, JSON when asked, the dev secret only."""

from __future__ import annotations

from shared.config import DEV_APPID, DEV_SECRET
from sim.wechat.app import ROUTES
from sim.wechat.testing import running_sim

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_a_browser_gets_a_page_naming_the_dev_appid_secret_and_every_endpoint() -> None:
    async with running_sim(appid=DEV_APPID, secret=DEV_SECRET) as sim:
        answer = await sim.wechat("GET", "", headers={"Accept": BROWSER_ACCEPT})
        assert answer.status == 200
        assert answer.content_type.startswith("text/html")
        page = answer.body.decode()
        assert "微信接口模拟器" in page and "WeChat API simulator" in page
        assert DEV_APPID in page and DEV_SECRET in page
        assert f"WXLOGIN_WECHAT_API_BASE={sim.url}" in page
        for endpoint in [*ROUTES, "sim/users", "sim/codes", "sim/faults", "sim/dev-user", "sim/reset"]:
            assert f"/{endpoint}" in page, endpoint
        assert "docs/simulator.md" in page


async def test_asked_for_json_it_lists_the_endpoints_with_their_methods() -> None:
    async with running_sim(appid=DEV_APPID, secret=DEV_SECRET) as sim:
        answer = await sim.wechat("GET", "", headers={"Accept": "application/json"})
        assert answer.status == 200 and answer.content_type.startswith("application/json")
        info = answer.json
        assert (info["appid"], info["secret"]) == (DEV_APPID, DEV_SECRET)
        assert info["base_url"] == sim.url and info["use"] == f"WXLOGIN_WECHAT_API_BASE={sim.url}"
        assert info["any_code"] == "off" and info["dev_user"] is None
        wechat = {(e["method"], e["path"]) for e in info["wechat_endpoints"]}
        assert wechat == {
            ("GET", "/cgi-bin/token"),
            ("POST", "/cgi-bin/stable_token"),
            ("POST", "/wxa/getwxacodeunlimit"),
            ("GET", "/sns/jscode2session"),
            ("POST", "/wxa/business/getuserphonenumber"),
            ("GET", "/wxa/checksession"),
            ("POST", "/wxa/generate_urllink"),
        }
        control = {(e["method"], e["path"]) for e in info["control_endpoints"]}
        expected = {("POST", "/sim/users"), ("PATCH", "/sim/users/{openid}"), ("DELETE", "/sim/faults")}
        assert expected <= control
        assert all(e["summary"] for e in info["control_endpoints"] + info["wechat_endpoints"])
        # ?format=json gives the same without a header (a link a browser can follow).
        same = await sim.wechat("GET", "", params={"format": "json"}, headers={"Accept": BROWSER_ACCEPT})
        assert same.json["appid"] == DEV_APPID


async def test_a_configured_secret_is_never_shown() -> None:
    secret = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    async with running_sim(appid="wx5f3a9c2e81d04b76", secret=secret) as sim:
        info = (await sim.wechat("GET", "", headers={"Accept": "application/json"})).json
        assert info["secret"] is None and "not shown" in info["secret_note"]
        page = (await sim.wechat("GET", "", headers={"Accept": BROWSER_ACCEPT})).body.decode()
        assert secret not in page and "wx5f3a9c2e81d04b76" in page


async def test_in_sticky_mode_the_index_names_the_developer_user() -> None:
    async with running_sim(appid=DEV_APPID, secret=DEV_SECRET, any_code="sticky") as sim:
        info = (await sim.wechat("GET", "", headers={"Accept": "application/json"})).json
        assert info["any_code"] == "sticky"
        assert info["dev_user"] == (await sim.control.dev_user())["openid"]
