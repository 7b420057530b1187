"""The demo page's simulated phone shows the confirm screen of security review M4 and L2 (where the
computer and the phone are, never an address; the browser and system as the browser reported them),
and its 不是我 reaches the login box, which says why the login ended."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from tests.e2e.conftest import Demo, expect_state, open_demo, scene_on_screen, screenshot

NOT_ME_ZH = "手机上选择了“不是我”：如果不是你本人在扫码，请不要把二维码发给别人"  # noqa: RUF001


async def test_the_phone_shows_places_not_addresses_and_not_me_tells_the_box_why(
    browser: Browser, demo: Demo
) -> None:
    errors: list[str] = []
    page = await open_demo(browser, demo, errors=errors)
    await expect_state(page, "pending")
    await page.click("#phone-scan")
    await expect(page.locator("#phone-approve")).to_be_visible()
    computer = page.locator("#phone-place")
    await expect(computer).to_have_text("电脑所在地 · Computer: 本机/内网 (local network)")
    await expect(page.locator("#phone-own-place")).to_contain_text("本机/内网 (local network)")
    await expect(page.locator("#phone-browser")).to_contain_text("浏览器自报 · Reported by the browser: ")
    await expect(page.locator("#phone-approve")).not_to_contain_text("127.0.0.1")
    await expect(page.locator("#phone-warning")).to_be_hidden()  # one machine: nothing to warn about
    await expect_state(page, "scanned")
    await screenshot(page, "not-me-1-confirm-screen")

    await page.click("#phone-not-me")
    await expect_state(page, "cancelled")
    await expect(page.locator(".wxl")).to_have_attribute("data-reason", "not_me")
    await expect(page.locator(".wxl-status")).to_have_text(NOT_ME_ZH)
    await expect(page.locator("#phone-result")).to_contain_text("不是我")
    await screenshot(page, "not-me-2-box")

    # A new code: the box forgets the reason; a plain 取消 reads as before, in English too.
    await page.locator(".wxl-refresh").click()
    await expect_state(page, "pending")
    await expect(page.locator(".wxl")).not_to_have_attribute("data-reason", "not_me")
    await page.context.close()
    english = await open_demo(browser, demo, locale="en-US", query="?lang=en")
    await expect_state(english, "pending")
    scene = await scene_on_screen(english)
    phone = demo.phone()
    await phone.scan(scene)
    await expect_state(english, "scanned")
    await phone.cancel(scene, reason="not_me")
    await expect_state(english, "cancelled")
    await expect(english.locator(".wxl-status")).to_have_text(
        'The phone said "not me": if it was not you scanning, do not send the code to anyone'
    )
    await english.context.close()
    assert errors == []
