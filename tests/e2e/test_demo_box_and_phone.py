"""The demo page's details a person notices: the login box sits in the middle of its panel and stays put
from state to state in either language, the code image is scaled the way its kind needs, the simulated
phone offers Scan only while the code can be scanned and speaks both languages, and a rate limit reads
"busy, retrying" on the box and on the phone, not as an error."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

from playwright.async_api import Browser, Page, Route, expect

from tests.e2e.conftest import Demo, demo_url, expect_state, open_demo, scene_on_screen

# Where the box is: its panel, the box and the code image, as the browser lays them out.
MEASURE = """() => {
  const r = (sel) => { const b = document.querySelector(sel).getBoundingClientRect();
                       return {x: b.x, y: b.y, w: b.width, h: b.height}; };
  return {panel: r('#site'), box: r('.wxl'), code: r('.wxl-code')};
}"""

BUSY_PHONE = "网络繁忙，正在重试… · Busy, retrying…"  # noqa: RUF001


async def measure(page: Page) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = await page.evaluate(MEASURE)
    return result


def centre_x(rect: dict[str, float]) -> float:
    return rect["x"] + rect["w"] / 2


def round_code_png(size: int = 96) -> bytes:
    """A stand-in for WeChat's real code: an 8-bit greyscale PNG of a disc with soft (grey) edges."""
    rows = []
    mid = (size - 1) / 2
    for y in range(size):
        row = bytearray([0])  # filter: none
        for x in range(size):
            d = ((x - mid) ** 2 + (y - mid) ** 2) ** 0.5
            row.append(max(0, min(255, int((d - size * 0.38) * 64 + 128))))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


async def answer_429_once(page: Page, path: str) -> list[int]:
    """The next request to ``path`` is answered 429 rate_limited (Retry-After: 1); later ones pass."""
    refused: list[int] = []

    async def handle(route: Route) -> None:
        if not refused:
            refused.append(1)
            await route.fulfill(
                status=429,
                headers={"Retry-After": "1", "Content-Type": "application/json"},
                body=json.dumps({"error": {"code": "rate_limited", "message": "too many requests"}}),
            )
        else:
            await route.continue_()

    await page.route(f"**{path}", handle)
    return refused


async def test_the_login_box_sits_in_the_middle_of_its_panel_and_does_not_move_between_states(
    browser: Browser, demo: Demo
) -> None:
    boxes: dict[str, dict[str, Any]] = {}
    for lang in ("zh", "en"):
        locale = "en-US" if lang == "en" else "zh-CN"
        page = await open_demo(browser, demo, locale=locale, query=f"?lang={lang}")
        await expect_state(page, "pending")
        scene = await scene_on_screen(page)
        pending = await measure(page)
        await demo.phone().scan(scene)
        await expect_state(page, "scanned")
        scanned = await measure(page)
        for state, at in (("pending", pending), ("scanned", scanned)):
            offset = abs(centre_x(at["box"]) - centre_x(at["panel"]))
            assert offset <= 2, f"{lang} {state}: the box is {offset:.1f} px off the panel's centre"
            assert abs(centre_x(at["code"]) - centre_x(at["panel"])) <= 2, (lang, state, at)
        for part in ("box", "code"):
            for key in ("x", "y", "w"):
                assert abs(pending[part][key] - scanned[part][key]) <= 0.5, (lang, part, pending, scanned)
        boxes[lang] = pending
        await page.context.close()
    # And the language does not move it either.
    for key in ("x", "y", "w"):
        assert abs(boxes["zh"]["code"][key] - boxes["en"]["code"][key]) <= 0.5, boxes


async def test_the_simulators_square_code_stays_crisp_and_a_real_round_code_is_scaled_smoothly(
    browser: Browser, demo: Demo
) -> None:
    page = await open_demo(browser, demo)
    await expect_state(page, "pending")
    code = page.locator(".wxl-code")
    await expect(code).to_have_attribute("data-render", "crisp")
    await expect(code).to_have_css("image-rendering", "pixelated")
    await page.context.close()

    # WeChat's real codes are round with thin strokes (labelled image/jpeg whatever they are).
    page = await open_demo(browser, demo, navigate=False)
    real = "data:image/jpeg;base64," + base64.b64encode(round_code_png()).decode()

    async def swap_image(route: Route) -> None:
        response = await route.fetch()
        issued = await response.json()
        issued["image"] = real
        await route.fulfill(response=response, json=issued)

    await page.route("**/api/login/qrcode", swap_image)
    await page.goto(demo_url(demo))
    await expect_state(page, "pending")
    code = page.locator(".wxl-code")
    await expect(code).to_have_attribute("data-render", "smooth")
    await expect(code).to_have_css("image-rendering", "auto")
    assert await page.evaluate("() => document.querySelector('.wxl-code').naturalWidth") == 96


async def test_the_simulated_phone_offers_scan_only_while_the_code_can_be_scanned_and_says_why(
    browser: Browser, demo: Demo
) -> None:
    errors: list[str] = []
    page = await open_demo(browser, demo, errors=errors)
    await expect_state(page, "pending")
    scan, result = page.locator("#phone-scan"), page.locator("#phone-result")
    await expect(scan).to_be_enabled()

    # Cancelled on the phone: the code is over, Scan waits for a new one.
    await scan.click()
    await expect(page.locator("#phone-approve")).to_be_visible()
    await page.click("#phone-cancel")
    await expect_state(page, "cancelled")
    await expect(result).to_have_text("已取消 · Cancelled")
    await expect(scan).to_be_visible()
    await expect(scan).to_be_disabled()

    await page.locator(".wxl-refresh").click()
    await expect_state(page, "pending")
    await expect(scan).to_be_enabled()
    await expect(result).to_have_text("")

    # Another phone got there first: the gateway's already_scanned, in both languages, Scan off.
    await demo.phone().scan(await scene_on_screen(page))
    await expect_state(page, "scanned")
    await scan.click()
    await expect(result).to_have_text("该二维码已被其他微信扫描 · Another phone already scanned this code")
    await expect(scan).to_be_disabled()

    # Expired: Scan is off until the refreshed code is on screen.
    demo.clock.advance(demo.settings.scene_ttl_seconds + 1)
    await expect_state(page, "expired")
    await expect(result).to_have_text("二维码已过期 · Expired")
    await expect(scan).to_be_disabled()
    await page.locator(".wxl-refresh").click()
    await expect_state(page, "pending")
    await expect(scan).to_be_enabled()
    await scan.click()
    await expect(page.locator("#phone-approve")).to_be_visible()
    await page.click("#phone-confirm")
    await expect(page.locator("#account")).to_be_visible()
    # The 409 above is logged by the browser as a failed resource; nothing else went wrong.
    assert [e for e in errors if not e.startswith("Failed to load resource")] == []


async def test_a_rate_limited_answer_reads_busy_retrying_on_the_phone_and_on_the_box(
    browser: Browser, demo: Demo
) -> None:
    page = await open_demo(browser, demo, navigate=False)
    issue_refused = await answer_429_once(page, "/api/login/qrcode")
    await page.goto(demo_url(demo))
    net = page.locator(".wxl-net")
    await expect(net).to_have_text("请求太多，正在重试…")  # noqa: RUF001
    await expect(page.locator(".wxl")).to_have_attribute("data-transport", "reconnecting")
    await expect_state(page, "pending")  # after Retry-After, the code; never the error state
    await expect(net).to_be_hidden()
    assert issue_refused == [1]

    scan_refused = await answer_429_once(page, "/api/mp/scan")
    await page.click("#phone-scan")
    await expect(page.locator("#phone-result")).to_have_text(BUSY_PHONE)
    await expect(page.locator("#phone-approve")).to_be_visible()  # the retry went through
    await expect(page.locator("#phone-result")).to_have_text("")
    await expect_state(page, "scanned")
    assert scan_refused == [1]
