"""``/metrics`` of the qrcode service counts the lifecycle: issued, scanned, confirmed, cancelled,
expired, redeemed, the time from issue to confirm, and the pool size."""

from __future__ import annotations

from shared.mongo import EmbeddedMongo
from sim.phone import Phone
from tests.scenes import FakeClock, fetch_metrics, metric_value, start_stack_with, stop_stack
from tests.support import Browser, eventually


async def test_metrics_count_every_transition_and_the_time_to_confirm(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    clock = FakeClock(follow_real_time=True)
    stack = await start_stack_with(
        "memory", mongo_server, amqp_base_url, unique, clock=clock, code_pool_size=3, code_pool_refill_below=3
    )
    qrcode = stack.system.urls["qrcode"]
    try:

        async def pool_full() -> bool:
            return metric_value(await fetch_metrics(stack.http, qrcode), "wxlogin_scene_pool_size") == 3

        await eventually(pool_full, timeout=10)
        phone = Phone(stack.http, stack.gateway, stack.sim.url)
        confirmed, cancelled, expiring = (Browser(stack.http, stack.gateway) for _ in range(3))
        for browser in (confirmed, cancelled, expiring):
            await browser.issue()
        await phone.scan(confirmed.scene)
        clock.advance(7)  # the user takes 7 s to tap 确认登录
        await phone.confirm(confirmed.scene)
        assert (await confirmed.complete())[0] == 200
        await phone.scan(cancelled.scene)
        await phone.cancel(cancelled.scene)
        clock.advance(stack.settings.scene_ttl_seconds)

        async def swept() -> bool:
            return metric_value(await fetch_metrics(stack.http, qrcode), "wxlogin_scenes_expired_total") == 1

        await eventually(swept, timeout=5)
        text = await fetch_metrics(stack.http, qrcode)
        counts = {
            name: metric_value(text, f"wxlogin_scenes_{name}_total")
            for name in ("issued", "scanned", "confirmed", "cancelled", "expired", "redeemed")
        }
        assert counts == {
            "issued": 3,
            "scanned": 2,  # the confirmed one, and the cancelled one (a phone cancels what it scanned)
            "confirmed": 1,
            "cancelled": 1,
            "expired": 1,
            "redeemed": 1,
        }
        assert metric_value(text, "wxlogin_scenes_issued_total", source="pool") == 3
        assert metric_value(text, "wxlogin_scene_issue_to_confirm_seconds_count") == 1
        assert 7 <= metric_value(text, "wxlogin_scene_issue_to_confirm_seconds_sum") < 12
        assert metric_value(text, "wxlogin_scene_issue_to_confirm_seconds_bucket", le="5.0") == 0
        assert metric_value(text, "wxlogin_scene_issue_to_confirm_seconds_bucket", le="10.0") == 1
        assert metric_value(text, "wxlogin_code_renders_total", purpose="refill", outcome="ok") >= 3
        assert "wxlogin_scene_pool_size" in text
    finally:
        await stop_stack(stack)
