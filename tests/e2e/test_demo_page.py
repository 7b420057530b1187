"""The demo page in a real browser: the code as rendered is scanned by a simulated phone, the page shows
each state a person sees, and every ending (logged in, cancelled, expired) behaves."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from tests.e2e.conftest import Demo, expect_state, open_demo, scene_on_screen, screenshot


async def test_a_person_logs_in_by_scanning_the_code_shown_in_the_page(browser: Browser, demo: Demo) -> None:
    errors: list[str] = []
    page = await open_demo(browser, demo, errors=errors)
    await expect_state(page, "pending")
    status = page.locator(".wxl-status")
    await expect(status).to_have_text("请使用微信扫一扫登录")
    await expect(status).to_have_attribute("aria-live", "polite")
    await expect(page.locator(".wxl-countdown")).to_contain_text("秒后过期")
    # The SDK's default styles apply under the page's strict CSP (no inline styles allowed there).
    await expect(page.locator(".wxl-countdown")).to_have_css("font-size", "12px")
    await screenshot(page, "1-pending")

    scene = await scene_on_screen(page)
    phone = demo.phone()
    openid = await phone.register()
    scan = await phone.scan(scene)
    assert "Chrome" in scan["requester"]["browser"]
    await expect_state(page, "scanned")
    await expect(status).to_have_text("扫码成功，请在手机上确认")  # noqa: RUF001
    await screenshot(page, "2-scanned")

    async with page.expect_response("**/api/login/complete") as completed:
        await phone.confirm(scene)
    tokens = await (await completed.value).json()
    await expect(page.locator("#account")).to_be_visible()
    await expect(page.locator("#profile")).to_contain_text(openid)
    await expect_state(page, "done")
    await screenshot(page, "3-logged-in")

    # Log out: the login box is back with a new code, and the session's refresh token is dead.
    await page.locator("#logout").click()
    await expect(page.locator("#account")).to_be_hidden()
    await expect_state(page, "pending")
    await expect(page.locator(".wxl")).not_to_have_attribute("data-scene", scene)
    async with demo.http.post(
        f"{demo.url}/api/token/refresh", json={"refresh_token": tokens["refresh_token"]}
    ) as resp:
        assert resp.status == 401, await resp.text()
    assert errors == []


async def test_the_simulated_phone_panel_logs_the_page_in(browser: Browser, demo: Demo) -> None:
    page = await open_demo(browser, demo, locale="en-US")
    await expect_state(page, "pending")
    await expect(page.locator(".wxl-status")).to_have_text("Scan with WeChat to log in")
    await page.click("#phone-scan")
    await expect(page.locator("#phone-approve")).to_be_visible()
    await expect(page.locator("#phone-site")).to_contain_text("wxlogin demo")
    await expect_state(page, "scanned")
    await page.click("#phone-confirm")
    await expect(page.locator("#account")).to_be_visible()
    await expect(page.locator("#profile")).to_contain_text("openid")


async def test_a_cancel_on_the_phone_shows_cancelled_and_the_refresh_key_brings_a_new_code(
    browser: Browser, demo: Demo
) -> None:
    page = await open_demo(browser, demo, locale="en-US", query="?lang=en")
    await expect_state(page, "pending")
    scene = await scene_on_screen(page)
    phone = demo.phone()
    await phone.scan(scene)
    await expect_state(page, "scanned")
    await phone.cancel(scene)

    await expect_state(page, "cancelled")
    await expect(page.locator(".wxl-status")).to_have_text("Login cancelled on the phone")
    refresh = page.locator(".wxl-refresh")
    await expect(refresh).to_be_visible()
    await expect(refresh).to_have_text("Refresh the code")
    await expect(page.locator(".wxl-countdown")).to_be_hidden()
    await screenshot(page, "4-cancelled")

    # Keyboard only: focus the button and press Enter.
    await refresh.focus()
    await page.keyboard.press("Enter")
    await expect_state(page, "pending")
    await expect(refresh).to_be_hidden()
    fresh = await scene_on_screen(page)
    assert fresh != scene
    await phone.scan(fresh)
    await expect_state(page, "scanned")


async def test_an_expired_code_offers_a_refresh_that_shows_a_new_different_code(
    browser: Browser, demo: Demo
) -> None:
    page = await open_demo(browser, demo)
    await expect_state(page, "pending")
    scene = await scene_on_screen(page)

    demo.clock.advance(demo.settings.scene_ttl_seconds + 1)  # the sweeper expires it on its next pass
    await expect_state(page, "expired")
    await expect(page.locator(".wxl-status")).to_have_text("二维码已过期")
    await expect(page.locator("#phone-result")).to_contain_text("Expired")
    await screenshot(page, "5-expired")
    # Nobody can use the old code any more.
    phone = demo.phone()
    scan = await demo.http.post(f"{demo.url}/api/mp/scan", json={"scene": scene})
    assert scan.status == 410
    scan.release()

    await page.locator(".wxl-refresh").click()
    await expect_state(page, "pending")
    fresh = await scene_on_screen(page)
    assert fresh != scene
    await expect(page.locator(".wxl")).to_have_attribute("data-scene", fresh)
    await phone.scan(fresh)
    await expect_state(page, "scanned")


async def test_pages_forbid_framing_and_referrers(browser: Browser, demo: Demo) -> None:
    page = await browser.new_page()
    response = await page.goto(demo.url + "/")
    assert response is not None
    headers = response.headers
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


async def test_the_sdk_loads_as_a_script_and_as_an_es_module(browser: Browser, demo: Demo) -> None:
    page = await open_demo(browser, demo)
    await expect_state(page, "pending")
    kinds = await page.evaluate(
        """async () => {
            const mod = await import('/sdk/wxlogin.mjs');
            return [typeof window.WxLogin.mount, typeof mod.default.mount, typeof mod.mount];
        }"""
    )
    assert kinds == ["function", "function", "function"]
