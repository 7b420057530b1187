"""The pool of pre-rendered codes on the real store (nx-27017), with a fake WeChat renderer: issuing
takes pooled codes, replicas do not over-fill or render twice, the render budget holds, and codes of
another configuration are never handed out."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from services.qrcode.errors import CodeQuotaExhausted, CodeUnavailable, IssueRateLimited
from services.qrcode.handlers import SceneHandlers
from services.qrcode.limits import SharedRateLimit
from services.qrcode.pool import (
    LEASE_RENEW_AFTER,
    LEASE_TTL,
    PURGE_BATCH,
    PURGE_EVERY,
    CodePool,
    PoolSettings,
    RenderSettings,
)
from services.qrcode.store import PooledCode, PoolStore, RateWindowStore, SceneStore
from shared.messages import IssuedScene, IssueScene
from shared.mongo import EmbeddedMongo
from shared.runtime import Database
from shared.wechat import CodeImage
from sim.phone import decode_scene
from tests.scenes import (
    FakeClock,
    FakeRenderer,
    RecordingPublisher,
    fetch_metrics,
    metric_value,
    new_ticket,
    scene_database,
    scene_handlers,
    start_stack_with,
    stop_stack,
    ticket_hash,
)
from tests.support import Browser, eventually

RENDER = RenderSettings(
    page="pages/login/index", env_version="release", check_path=True, width=430, appid="wx1"
)


@pytest.fixture
async def db(mongo_server: EmbeddedMongo) -> AsyncIterator[Database]:
    async with scene_database(mongo_server) as database:
        yield database


def make_pool(
    db: Database,
    renderer: FakeRenderer,
    clock: FakeClock,
    *,
    size: int = 5,
    refill_below: int = 5,
    renders_per_minute: int = 4200,
    render: RenderSettings = RENDER,
    holder: str | None = None,
) -> CodePool:
    return CodePool(
        PoolStore(db),
        renderer,
        SharedRateLimit(RateWindowStore(db), "renders", renders_per_minute),
        render,
        PoolSettings(size=size, refill_below=refill_below, concurrency=4),
        clock=clock,
        holder=holder,
    )


def at_a_window_start() -> FakeClock:
    """A clock at the start of a 10 s window of the shared limits (the next one from now)."""
    return FakeClock(start=math.ceil(time.time() / 10) * 10 + 10)


def issuing_from(db: Database, clock: FakeClock, pool: CodePool, issues_per_minute: int) -> SceneHandlers:
    """qrcode's handlers issuing with ``pool`` under a global issue limit of ``issues_per_minute``."""
    issue_limit = SharedRateLimit(RateWindowStore(db), "issue", issues_per_minute)
    return scene_handlers(db, clock, RecordingPublisher(), codes=pool, issue_limit=issue_limit)


async def issue_one(handlers: SceneHandlers) -> IssuedScene:
    """One browser's issue, with a fresh ticket, from one address."""
    return await handlers.issue(IssueScene(ticket_hash=ticket_hash(new_ticket()), ip="198.51.100.1"))


async def test_issuing_from_a_warm_pool_does_not_call_wechat(db: Database) -> None:
    renderer, clock = FakeRenderer(), FakeClock()
    pool = make_pool(db, renderer, clock, size=5)
    assert await pool.refill_once() == 5
    assert len(renderer.rendered) == 5

    taken = [await pool.take() for _ in range(5)]
    assert [code.source for code in taken] == ["pool"] * 5
    assert len(renderer.rendered) == 5  # no render while the pool had codes
    assert sorted(code.scene for code in taken) == sorted(renderer.rendered)
    assert all(code.image.data.endswith(code.scene.encode()) for code in taken)  # each scene its own image

    sixth = await pool.take()
    assert sixth.source == "render"
    assert len(renderer.rendered) == 6


async def test_codes_of_another_configuration_are_never_handed_out(db: Database) -> None:
    clock = FakeClock()
    old = make_pool(db, FakeRenderer(), clock, size=3)
    await old.refill_once()
    changed = RenderSettings(
        page="pages/other/index", env_version="release", check_path=True, width=430, appid="wx1"
    )
    for render in (
        changed,
        RenderSettings(page=RENDER.page, env_version="trial", check_path=True, width=430),
        RenderSettings(page=RENDER.page, env_version="release", check_path=True, width=600, appid="wx1"),
    ):
        new = make_pool(db, FakeRenderer(), clock, size=3, render=render)
        assert new.variant != old.variant
        assert (await new.take()).source == "render"
    assert await PoolStore(db).count_ready(old.variant, up_to=10) == 3


async def claimed_entries(db: Database) -> int:
    """Claimed entries not yet deleted."""
    return await db["scene_pool"].count_documents({"kind": "code", "state": "claimed"})


async def none_claimed(db: Database) -> bool:
    return await claimed_entries(db) == 0


async def test_a_claimed_code_is_never_handed_out_again_and_is_deleted_a_few_seconds_later(
    db: Database,
) -> None:
    renderer, clock = FakeRenderer(), FakeClock()
    pool = make_pool(db, renderer, clock, size=3, refill_below=1)
    assert await pool.refill_once() == 3
    taken = [(await pool.take()).scene for _ in range(3)]
    assert len(set(taken)) == 3
    assert (await pool.take()).source == "render"  # the claimed entries are not ready any more
    assert await pool.refill_once() == 3
    assert await claimed_entries(db) == 3  # fewer than PURGE_BATCH, too soon: kept, marked claimed
    clock.advance(PURGE_EVERY)
    await pool.refill_once()
    assert await claimed_entries(db) == 0  # deleted with one delete, off the issue path
    assert await PoolStore(db).purge_claimed(taken) == 0


async def test_claimed_entries_are_deleted_as_soon_as_a_batch_of_them_waits(db: Database) -> None:
    clock = FakeClock()
    pool = make_pool(db, FakeRenderer(), clock, size=PURGE_BATCH + 2, refill_below=1)
    assert await pool.refill_once() == PURGE_BATCH + 2
    for _ in range(PURGE_BATCH):
        await pool.take()
    await pool.refill_once()
    assert await claimed_entries(db) == 0


async def test_a_replica_without_the_refill_lease_still_deletes_what_it_claimed(db: Database) -> None:
    clock = FakeClock()
    holder = make_pool(db, FakeRenderer(), clock, size=3, refill_below=1, holder="holder")
    other = make_pool(db, FakeRenderer(), clock, size=3, refill_below=1, holder="other")
    assert await holder.refill_once() == 3
    taken = [(await other.take()).scene for _ in range(2)]
    clock.advance(PURGE_EVERY)
    assert await other.refill_once() == 0  # the holder's lease still runs
    assert await PoolStore(db).purge_claimed(taken) == 0  # but other deleted its own claims


async def test_two_replicas_refilling_at_once_fill_the_pool_exactly_once(db: Database) -> None:
    clock = FakeClock()
    renderers = [FakeRenderer(delay=0.01), FakeRenderer(delay=0.01)]
    replicas = [make_pool(db, r, clock, size=12, holder=f"replica-{i}") for i, r in enumerate(renderers)]
    for _ in range(3):
        await asyncio.gather(*(replica.refill_once() for replica in replicas))
    rendered = renderers[0].rendered + renderers[1].rendered
    assert len(rendered) == 12  # nothing rendered beyond the pool size
    assert len(set(rendered)) == 12  # and no scene twice
    assert await PoolStore(db).count_ready(RENDER.variant, up_to=100) == 12
    assert [len(r.rendered) for r in renderers].count(0) == 1  # one holder of the lease did it all


async def test_the_refill_lease_passes_on_when_its_holder_goes_quiet(db: Database) -> None:
    clock = FakeClock()
    first = make_pool(db, FakeRenderer(), clock, size=4, refill_below=4, holder="first")
    second_renderer = FakeRenderer()
    second = make_pool(db, second_renderer, clock, size=4, refill_below=4, holder="second")
    assert await first.refill_once() == 4
    for _ in range(4):
        await second.take()
    assert await second.refill_once() == 0  # "first" holds the lease
    clock.advance(LEASE_TTL + 1)
    assert await second.refill_once() == 4
    assert len(second_renderer.rendered) == 4


async def test_refill_starts_below_the_threshold_and_fills_up_to_the_size(db: Database) -> None:
    renderer, clock = FakeRenderer(), FakeClock()
    pool = make_pool(db, renderer, clock, size=10, refill_below=4)
    assert await pool.refill_once() == 10
    for _ in range(6):
        await pool.take()
    assert await pool.refill_once() == 0  # 4 left: not below the threshold
    await pool.take()
    assert await pool.refill_once() == 7  # 3 left: back to 10
    assert await PoolStore(db).count_ready(RENDER.variant, up_to=100) == 10


async def test_refill_stays_within_the_shared_render_budget(db: Database) -> None:
    renderer = FakeRenderer()
    clock = at_a_window_start()
    pool = make_pool(db, renderer, clock, size=30, refill_below=30, renders_per_minute=60)  # 10 per 10 s
    assert await pool.refill_once() == 10
    assert await pool.refill_once() == 0  # this window is spent
    clock.advance(10)
    assert await pool.refill_once() == 10
    assert len(renderer.rendered) == 20


async def test_an_empty_pool_with_the_render_budget_spent_refuses_with_a_retry_after(db: Database) -> None:
    clock = FakeClock()
    pool = make_pool(db, FakeRenderer(), clock, size=0, renders_per_minute=6)  # 1 per 10 s window
    assert (await pool.take()).source == "render"
    with pytest.raises(CodeQuotaExhausted) as refused:
        await pool.take()
    assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 10


async def test_an_issue_limit_above_the_render_budget_serves_a_burst_from_the_pool_and_renders_stay_within_it(
    db: Database,
) -> None:
    # The issue limit guards load, the render budget WeChat's quota: issues beyond the budget's rate
    # are served from the pool while it lasts, then refused until a render fits the budget.
    renderer = FakeRenderer()
    clock = at_a_window_start()
    pool = make_pool(db, renderer, clock, size=30, refill_below=30, renders_per_minute=60)  # 10 per 10 s
    for _ in range(3):
        assert await pool.refill_once() == 10
        clock.advance(10)
    handlers = issuing_from(db, clock, pool, 600)  # 100 issues per window: ten times the render budget

    issued, refused = [], []
    for _ in range(45):
        try:
            issued.append(await issue_one(handlers))
        except CodeQuotaExhausted as exc:
            refused.append(exc)
    rendered_now = renderer.rendered[30:]
    assert len(rendered_now) == 10  # this window's whole render budget, and no more
    assert len(issued) == 40 and len({scene.scene for scene in issued}) == 40  # the pool's 30, 10 rendered
    assert len(refused) == 5 and all(0 < (exc.retry_after or 0) <= 10 for exc in refused)

    clock.advance(10)  # the next window: renders fit the budget again
    again = await issue_one(handlers)
    assert again.scene == renderer.rendered[-1]


async def test_fifty_concurrent_issues_never_share_a_code(db: Database) -> None:
    renderer, clock = FakeRenderer(), FakeClock()
    pool = make_pool(db, renderer, clock, size=20, refill_below=20)
    await pool.refill_once()
    taken = await asyncio.gather(*(pool.take() for _ in range(50)))
    assert len({code.scene for code in taken}) == 50
    assert Counter(code.source for code in taken) == {"pool": 20, "render": 30}


async def test_a_warm_pool_keeps_issuing_while_wechat_is_down(db: Database) -> None:
    renderer, clock = FakeRenderer(), FakeClock()
    pool = make_pool(db, renderer, clock, size=3, refill_below=1)
    await pool.refill_once()
    renderer.error = CodeUnavailable(retry_after=2)
    assert [(await pool.take()).source for _ in range(3)] == ["pool"] * 3
    with pytest.raises(CodeUnavailable):
        await pool.take()
    with pytest.raises(CodeUnavailable):
        await pool.refill_once()  # the refill loop backs off on this


async def test_the_browser_gets_a_pooled_code_that_encodes_its_own_scene(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    stack = await start_stack_with(
        "memory", mongo_server, amqp_base_url, unique, code_pool_size=4, code_pool_refill_below=1
    )
    try:

        async def rendered() -> int:
            async with stack.http.get(f"{stack.sim.url}/sim/counters") as resp:
                return int((await resp.json()).get("wxa/getwxacodeunlimit", 0))

        async def pool_full() -> bool:
            return await rendered() == 4

        await eventually(pool_full, timeout=10)
        for _ in range(3):
            browser = Browser(stack.http, stack.gateway)
            issued = await browser.issue()
            assert decode_scene(issued["image"]) == issued["scene"]
        assert await rendered() == 4  # the three codes came from the pool
        text = await fetch_metrics(stack.http, stack.system.urls["qrcode"])
        assert metric_value(text, "wxlogin_scenes_issued_total", source="pool") == 3
    finally:
        await stop_stack(stack)


async def test_an_issue_refused_by_the_global_limit_gives_its_pooled_code_back(db: Database) -> None:
    renderer = FakeRenderer()
    clock = at_a_window_start()
    pool = make_pool(db, renderer, clock, size=3, refill_below=1)
    assert await pool.refill_once() == 3
    handlers = issuing_from(db, clock, pool, 6)  # 6/min: one issue per 10 s window

    first = await issue_one(handlers)
    with pytest.raises(IssueRateLimited):
        await issue_one(handlers)
    assert await PoolStore(db).count_ready(pool.variant, up_to=10) == 2  # the refused issue's code is back
    assert await SceneStore(db).get(first.scene) is not None

    clock.advance(10)
    again = await issue_one(handlers)
    assert again.scene in renderer.rendered and again.scene != first.scene
    assert len(renderer.rendered) == 3  # nothing was rendered on demand, nothing was lost


class CountingPoolStore(PoolStore):
    """The real pool store, noting when the refiller counts the pool (once a round, as the holder),
    the size of each insert and how often the lease is held."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.round_starts: list[float] = []
        self.inserts: list[int] = []
        self.lease_holds = 0

    async def count_ready(self, variant: str, *, up_to: int) -> int:
        self.round_starts.append(time.monotonic())
        return await super().count_ready(variant, up_to=up_to)

    async def add_many(self, codes: Sequence[PooledCode]) -> None:
        self.inserts.append(len(codes))
        await super().add_many(codes)

    async def hold_lease(self, holder: str, now: float, ttl: float) -> bool:
        self.lease_holds += 1
        return await super().hold_lease(holder, now, ttl)


def counting_pool(
    db: Database, size: int, refill_below: int, clock: FakeClock, *, holder: str | None = None
) -> tuple[CodePool, CountingPoolStore]:
    """A pool over a :class:`CountingPoolStore`, refilling in batches of 4."""
    store = CountingPoolStore(db)
    pool = CodePool(
        store,
        FakeRenderer(),
        SharedRateLimit(RateWindowStore(db), "renders", 4200),
        RENDER,
        PoolSettings(size=size, refill_below=refill_below, concurrency=4),
        clock=clock,
        holder=holder,
    )
    return pool, store


@asynccontextmanager
async def refilling(pool: CodePool, *, min_gap: float) -> AsyncIterator[None]:
    """The pool's refill loop in the background (its interval far beyond the test), then stopped."""
    task = asyncio.create_task(pool.run(interval=30.0, min_gap=min_gap))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class CountingRates(RateWindowStore):
    """The real ``scene_rates`` store, counting its reserve calls."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.reserves: list[int] = []

    async def reserve(self, name: str, window: int, limit: int, wanted: int, *, purge_at: float) -> int:
        self.reserves.append(wanted)
        return await super().reserve(name, window, limit, wanted, purge_at=purge_at)


class FlakyRenderer(FakeRenderer):
    """A renderer whose ``fail_at``-th renders (counting from 1) fail as WeChat would."""

    def __init__(self, fail_at: set[int]) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    async def render(self, scene_id: str) -> CodeImage:
        self.calls += 1
        if self.calls in self.fail_at:
            raise CodeUnavailable(retry_after=2)
        return await super().render(scene_id)


async def test_a_refill_stores_each_batch_with_one_insert_and_leases_the_render_budget(db: Database) -> None:
    store, rates = CountingPoolStore(db), CountingRates(db)
    pool = CodePool(
        store,
        FakeRenderer(),
        SharedRateLimit(rates, "renders", 4200),  # 700 a window, leased 16 at a time
        RENDER,
        PoolSettings(size=12, refill_below=12, concurrency=4),
        clock=FakeClock(),
    )
    assert await pool.refill_once() == 12
    assert store.inserts == [4, 4, 4]  # one insert per batch, not one per code
    assert rates.reserves == [16]  # one Mongo reserve for twelve renders
    assert store.lease_holds == 1  # at the start only: the holder's own lease is young between batches
    assert await PoolStore(db).count_ready(RENDER.variant, up_to=100) == 12


async def test_a_failed_render_does_not_lose_the_codes_of_its_batch_that_rendered(db: Database) -> None:
    renderer = FlakyRenderer(fail_at={2})
    store = CountingPoolStore(db)
    pool = CodePool(
        store,
        renderer,
        SharedRateLimit(RateWindowStore(db), "renders", 4200),
        RENDER,
        PoolSettings(size=8, refill_below=8, concurrency=4),
        clock=FakeClock(),
    )
    with pytest.raises(CodeUnavailable):
        await pool.refill_once()  # the refill loop backs off on this, as before
    assert store.inserts == [3]
    assert await PoolStore(db).count_ready(RENDER.variant, up_to=100) == 3
    taken = sorted([(await pool.take()).scene for _ in range(3)])
    assert taken == sorted(renderer.rendered)  # the three that rendered, each with its own image
    assert await pool.refill_once() == 8  # WeChat is back: the next round fills the pool


async def test_a_burst_of_issues_costs_a_few_refill_rounds_not_one_each_and_the_pool_fills_again(
    db: Database,
) -> None:
    pool, store = counting_pool(db, 30, 30, FakeClock(follow_real_time=True))
    assert await pool.refill_once() == 30
    async with refilling(pool, min_gap=0.1):
        await asyncio.sleep(0.05)  # the first round (the pool is full) is behind us
        started = time.monotonic()
        for _ in range(30):  # one issue every 10 ms, each claim waking the refiller
            assert (await pool.take()).source == "pool"
            await asyncio.sleep(0.01)
        ended = time.monotonic()
        await eventually(lambda: pool_holds(db, pool, 30), timeout=10)
        during = [t for t in store.round_starts if started <= t <= ended]
        assert len(during) <= (ended - started) / 0.1 + 1, (len(during), ended - started)  # ~30 without


async def test_the_holder_takes_its_lease_again_only_once_it_is_a_third_of_its_ttl_old(db: Database) -> None:
    clock = FakeClock()
    pool, store = counting_pool(db, 4, 4, clock)
    assert await pool.refill_once() == 4
    await pool.take()
    assert await pool.refill_once() == 1
    assert store.lease_holds == 1
    clock.advance(LEASE_RENEW_AFTER)
    await pool.take()
    assert await pool.refill_once() == 1
    assert store.lease_holds == 2  # extended: another replica cannot have taken it meanwhile


async def test_claims_that_leave_the_pool_above_its_threshold_start_no_round_and_the_refill_comes_below(
    db: Database,
) -> None:
    pool, store = counting_pool(db, 10, 4, FakeClock(follow_real_time=True))
    assert await pool.refill_once() == 10
    async with refilling(pool, min_gap=0.0):
        await eventually(lambda: len(store.round_starts) == 2, timeout=5)  # the loop's first round
        for _ in range(6):  # 4 left: not below the threshold
            assert (await pool.take()).source == "pool"
        await asyncio.sleep(0.3)
        assert len(store.round_starts) == 2  # six issues, no Mongo round
        await pool.take()  # 3 left: below it
        await eventually(lambda: pool_holds(db, pool, 10), timeout=10)
        assert len(store.round_starts) >= 3


async def test_claims_on_a_replica_without_the_lease_start_no_round_until_a_batch_waits_to_be_deleted(
    db: Database,
) -> None:
    clock = FakeClock(follow_real_time=True)
    holder = make_pool(db, FakeRenderer(), clock, size=PURGE_BATCH + 4, refill_below=1, holder="holder")
    assert await holder.refill_once() == PURGE_BATCH + 4
    other, store = counting_pool(db, PURGE_BATCH + 4, 1, clock, holder="other")
    async with refilling(other, min_gap=0.0):
        await eventually(lambda: store.lease_holds == 1, timeout=5)  # its first round: refused
        for _ in range(PURGE_BATCH - 1):
            await other.take()
        await asyncio.sleep(0.3)
        assert store.lease_holds == 1  # no round for these claims
        assert await claimed_entries(db) == PURGE_BATCH - 1
        await other.take()
        await eventually(lambda: none_claimed(db), timeout=5)  # a batch: deleted at once
        assert store.round_starts == []  # never counted: only the lease holder refills


async def pool_holds(db: Database, pool: CodePool, ready: int) -> bool:
    return await PoolStore(db).count_ready(pool.variant, up_to=100) == ready
