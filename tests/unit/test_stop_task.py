"""``stop_task``: shutdown must end a background loop even when a library swallowed a cancellation."""

from __future__ import annotations

import asyncio

from shared.runtime import stop_task


async def test_a_loop_that_swallowed_its_first_cancel_still_stops() -> None:
    swallowed = asyncio.Event()

    async def loop_forever() -> None:
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                # What Python 3.11's wait_for does when its inner future completes as the cancel lands.
                swallowed.set()

            await asyncio.sleep(30)  # back to sleep, as reload_keys_forever did

    task = asyncio.ensure_future(loop_forever())
    await asyncio.sleep(0)
    assert await stop_task(task, timeout=3.0)
    assert swallowed.is_set()
    assert task.cancelled()


async def test_a_task_that_never_stops_is_given_up_on_after_the_timeout() -> None:
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                continue

    task = asyncio.ensure_future(immortal())
    await asyncio.sleep(0)
    assert not await stop_task(task, timeout=0.6)
    assert not task.done()
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    assert task.done()


async def test_a_crash_is_retrieved_not_raised() -> None:
    async def crash() -> None:
        raise ValueError("boom")

    task = asyncio.ensure_future(crash())
    await asyncio.sleep(0)
    assert await stop_task(task)
    assert isinstance(task.exception(), ValueError)
