"""The demo page in a real browser: the code as rendered is scanned by a simulated phone."""

from __future__ import annotations

import base64

from playwright.async_api import Browser

from sim.phone import Phone, decode_scene
from tests.e2e.conftest import Demo, screenshot


async def test_a_person_logs_in_by_scanning_the_code_shown_in_the_page(browser: Browser, demo: Demo) -> None:
    page = await browser.new_page(locale="zh-CN")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(demo.url + "/")

    code = page.locator(".wxl-code")
    await code.wait_for(state="visible")
    await page.wait_for_function("document.querySelector('.wxl').dataset.state === 'pending'")
    await screenshot(page, "demo-1-pending")

    # The phone's camera sees what the page rendered: decode the element's screenshot.
    scene = decode_scene(await code.screenshot())
    src = await code.get_attribute("src")
    assert src is not None
    assert decode_scene(base64.b64decode(src.split(",", 1)[1])) == scene

    phone = Phone(demo.http, demo.url, demo.sim.url)
    scan = await phone.scan(scene)
    assert "Chrome" in scan["requester"]["browser"]
    await page.wait_for_function("document.querySelector('.wxl').dataset.state === 'scanned'")
    assert "确认" in (await page.locator(".wxl-status").text_content() or "")
    await screenshot(page, "demo-2-scanned")

    openid = await phone.register()
    await phone.confirm(scene)
    await page.locator("#account").wait_for(state="visible")
    assert openid in (await page.locator("#profile").text_content() or "")
    await screenshot(page, "demo-3-logged-in")
    assert errors == []


async def test_the_simulated_phone_panel_logs_the_page_in(browser: Browser, demo: Demo) -> None:
    page = await browser.new_page(locale="en-US")
    await page.goto(demo.url + "/")
    await page.locator(".wxl-code").wait_for(state="visible")
    await page.click("#phone-scan")
    await page.locator("#phone-approve").wait_for(state="visible")
    assert "wxlogin demo" in (await page.locator("#phone-site").text_content() or "")
    await page.wait_for_function("document.querySelector('.wxl').dataset.state === 'scanned'")
    await page.click("#phone-confirm")
    await page.locator("#account").wait_for(state="visible")
    assert "openid" in (await page.locator("#profile").text_content() or "")


async def test_pages_forbid_framing_and_referrers(browser: Browser, demo: Demo) -> None:
    page = await browser.new_page()
    response = await page.goto(demo.url + "/")
    assert response is not None
    headers = response.headers
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
