"""Mini-program codes: rendering them through WeChat, and the pool of pre-rendered ones.

Issuing takes a ready code from ``scene_pool`` (claim, then delete: a few at a time, off the issue
path) and renders on demand only when the pool is empty, so a browser does not wait for WeChat. One
replica at a time refills the pool (the holder of a lease in Mongo), so replicas neither over-fill it
nor render the same scene twice; every render, refill or on demand, takes a use of the shared render
budget first (leased: see services.qrcode.limits), and a refill stores each batch of rendered codes
with one insert. A round that finds nothing to do costs one count: the holder does not re-take a
young lease, claimed entries are deleted in batches, and a claim wakes the refiller early only when
the pool may have fallen below its threshold. Codes rendered for another configuration (appid, page,
env_version, check_path, width) carry another ``variant`` and are never handed out; the TTL index
collects them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from services.qrcode.errors import CodeQuotaExhausted, CodeUnavailable
from services.qrcode.limits import SharedRateLimit
from services.qrcode.metrics import SceneMetrics
from services.qrcode.store import PooledCode, PoolStore
from shared.errors import ServiceError
from shared.logging import get_logger
from shared.wechat import CodeImage, TokenProvider, WeChatClient, WeChatError, call_with_token

log = get_logger(__name__)

LEASE_TTL = 15.0  # a refiller that dies is replaced after at most this long
# A lease this replica took less than this long ago is not taken again (it has at least
# LEASE_TTL - LEASE_RENEW_AFTER seconds left, by this replica's clock): most rounds need no lease write.
LEASE_RENEW_AFTER = LEASE_TTL / 3
PURGE_BATCH = 8  # claimed entries are deleted once this many are waiting ...
PURGE_EVERY = 5.0  # ... or this many seconds after the last delete
REFILL_INTERVAL = 1.0  # how often a replica checks the pool (the lease holder) or the lease (others)
MAX_BACKOFF = 30.0
MIN_ROUND_GAP = 0.1  # the least time, in seconds, between the starts of two refill rounds

CodeSource = Literal["pool", "render"]


def new_scene_id() -> str:
    """32 URL-safe characters (192 random bits), inside WeChat's allowed scene alphabet."""
    return secrets.token_urlsafe(24)


def data_uri(image: CodeImage) -> str:
    """The image as a ``data:`` URI for the browser."""
    return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"


@dataclass(frozen=True)
class RenderSettings:
    """How codes are rendered (from configuration); any change makes pooled codes unusable."""

    page: str
    env_version: str
    check_path: bool
    width: int
    appid: str = ""

    @property
    def variant(self) -> str:
        """A short name for this configuration, stored with every pooled code."""
        text = "|".join([self.appid, self.page, self.env_version, str(self.check_path), str(self.width)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PoolSettings:
    """Pool size and refill behaviour (from configuration)."""

    size: int
    refill_below: int
    concurrency: int = 4

    @property
    def threshold(self) -> int:
        """Refill starts when fewer codes than this are ready (at least 1, at most ``size``)."""
        return max(1, min(self.refill_below, self.size))


class Renderer(Protocol):
    """Turns a scene id into its code image (WeChat, or a fake in tests)."""

    async def render(self, scene_id: str) -> CodeImage:
        """The code image for ``scene_id`` (raises a ServiceError when it cannot be had now)."""
        ...


class CodeRenderer:
    """Renders the mini-program code of a scene through WeChat's getwxacodeunlimit."""

    def __init__(self, wechat: WeChatClient, tokens: TokenProvider, settings: RenderSettings) -> None:
        self._wechat = wechat
        self._tokens = tokens
        self._settings = settings

    async def render(self, scene_id: str) -> CodeImage:
        """The code image for ``scene_id`` (raises :class:`CodeUnavailable`)."""
        s = self._settings
        try:
            return await call_with_token(
                self._tokens,
                lambda token: self._wechat.get_unlimited_qrcode(
                    token,
                    scene=scene_id,
                    page=s.page,
                    check_path=s.check_path,
                    env_version=s.env_version,
                    width=s.width,
                ),
            )
        except WeChatError as exc:
            log.warning("code_render_failed", errcode=exc.errcode)
            raise CodeUnavailable(retry_after=getattr(exc, "retry_after", 2)) from None


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """A code for a new scene, and whether it came from the pool or was rendered just now."""

    scene: str
    image: CodeImage
    source: CodeSource


class CodePool:
    """Hands out codes for new scenes and keeps the shared pool topped up."""

    def __init__(
        self,
        store: PoolStore,
        renderer: Renderer,
        budget: SharedRateLimit,
        render: RenderSettings,
        pool: PoolSettings,
        *,
        metrics: SceneMetrics | None = None,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
    ) -> None:
        self._store = store
        self._renderer = renderer
        self._budget = budget
        self._variant = render.variant
        self._pool = pool
        self._metrics = metrics or SceneMetrics()
        self._clock = clock
        self.holder = holder or uuid.uuid4().hex
        self._filling = False
        self._wake = asyncio.Event()
        self._claimed: list[str] = []  # taken from the pool since the last purge deleted them
        self._purged_at = clock()
        self._lease_taken_at: float | None = None  # when this replica last took or extended the lease
        # Ready codes as this replica last counted them, less its own claims since (None: not known,
        # or not the refiller); a claim wakes the refiller only when this falls below the threshold.
        self._ready_estimate: int | None = None

    @property
    def variant(self) -> str:
        """The configuration name of the codes this pool hands out."""
        return self._variant

    async def take(self) -> IssuedCode:
        """A code for a new scene: from the pool, or rendered now when the pool is empty."""
        return await self.claim() or await self.render_now()

    async def claim(self) -> IssuedCode | None:
        """A code from the pool (one round trip), or None when the pool is off or empty."""
        if self._pool.size == 0:
            return None
        pooled = await self._store.claim(self._variant, self._clock())
        if pooled is None:
            self._wake.set()
            return None
        self._claimed.append(pooled.scene)
        if self._ready_estimate is not None:
            self._ready_estimate -= 1
        if self._round_wanted():
            self._wake.set()
        return IssuedCode(pooled.scene, CodeImage(pooled.image, pooled.content_type), "pool")

    def _round_wanted(self) -> bool:
        """Whether a claim should start a round now rather than at the next interval: enough claims
        wait to be deleted, or this replica refills and its count says the pool may be below the
        threshold (or it has no count yet). A replica without the lease tries for it every interval;
        the refiller sees other replicas' claims at its next count."""
        if len(self._claimed) >= PURGE_BATCH:
            return True
        if self._lease_taken_at is None:
            return False
        return self._ready_estimate is None or self._ready_estimate < self._pool.threshold

    async def give_back(self, code: IssuedCode) -> None:
        """Return a claimed code whose scene was not issued after all, so the next issue gets it."""
        if code.source == "pool" and code.scene in self._claimed:  # not yet purged
            self._claimed.remove(code.scene)
            await self._store.unclaim(code.scene)
            if self._ready_estimate is not None:
                self._ready_estimate += 1

    async def render_now(self) -> IssuedCode:
        """A code rendered for a new scene now, within the shared render budget."""
        decision = await self._budget.take(self._clock())
        if not decision.allowed:
            raise CodeQuotaExhausted(retry_after=decision.retry_after)
        scene = new_scene_id()
        return IssuedCode(scene, await self._render(scene, "on_demand"), "render")

    async def refill_once(self) -> int:
        """One refill round; returns how many codes were added (0 when another replica holds the lease).

        Refilling starts below the threshold and goes on, round after round, until the pool is full.
        """
        if self._pool.size == 0:
            return 0
        await self._purge_claimed()  # every replica its own claims, lease or not
        if not await self._hold_lease():
            self._filling = False
            self._ready_estimate = None
            return 0
        ready = await self._store.count_ready(self._variant, up_to=self._pool.size)
        self._ready_estimate = ready
        self._metrics.pool_size.set(ready)
        if ready >= self._pool.size or (not self._filling and ready >= self._pool.threshold):
            self._filling = False
            return 0
        self._filling = True
        added = 0
        while ready + added < self._pool.size:
            wanted = min(self._pool.concurrency, self._pool.size - ready - added)
            granted = await self._take_budget(wanted)
            if granted == 0:
                break
            stored, failure = await self._render_batch(granted)
            added += stored
            if failure is not None:
                self._metrics.pool_size.set(ready + added)
                raise failure
            if granted < wanted:
                break
            # The lease is extended only to go on rendering: a round that just filled the pool ends.
            if ready + added < self._pool.size and not await self._hold_lease():
                break
        self._ready_estimate = ready + added
        self._metrics.pool_size.set(ready + added)
        if ready + added >= self._pool.size:
            self._filling = False  # full: wait for the threshold again
        if added:
            log.info("pool_refilled", added=added, ready=ready + added)
        return added

    async def run(self, interval: float = REFILL_INTERVAL, *, min_gap: float = MIN_ROUND_GAP) -> None:
        """Refill forever: every ``interval``, sooner after a local claim, slower after failures.

        Rounds start at least ``min_gap`` apart: a burst of issues then costs a few rounds (each a
        handful of Mongo operations), not one per issue, while the pool still refills promptly.
        """
        delay = interval
        try:
            while True:
                started = time.monotonic()
                self._wake.clear()  # claims from now on wake the next round early
                try:
                    await self.refill_once()
                    delay = interval
                except ServiceError as exc:  # WeChat or the token service is unavailable: back off
                    delay = min(MAX_BACKOFF, max(delay * 2, exc.retry_after or interval))
                    log.warning("pool_refill_failed", error_code=exc.error_code, retry_in=round(delay, 1))
                except Exception:  # Mongo down, a bug: log it, keep the loop alive
                    delay = min(MAX_BACKOFF, delay * 2)
                    log.exception("pool_refill_crashed", retry_in=round(delay, 1))
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as
                # the event fires (shared.runtime.stop_task cancels again, but need not have to).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                await asyncio.sleep(started + min_gap - time.monotonic())  # no wait when already past
        finally:
            self._lease_taken_at = None
            await self._store.release_lease(self.holder)

    async def _hold_lease(self) -> bool:
        """Take or extend the refill lease; a lease this replica took less than
        :data:`LEASE_RENEW_AFTER` ago is still its own (another replica may take it only once it has
        run out, :data:`LEASE_TTL` after it was taken, unless its clock is that far ahead of ours)."""
        now = self._clock()
        if self._lease_taken_at is not None and 0 <= now - self._lease_taken_at < LEASE_RENEW_AFTER:
            return True
        held = await self._store.hold_lease(self.holder, now, LEASE_TTL)
        self._lease_taken_at = now if held else None
        return held

    async def _purge_claimed(self) -> None:
        """Delete the entries this replica claimed, once :data:`PURGE_BATCH` of them wait or
        :data:`PURGE_EVERY` seconds after the last delete. Until then they are only marked claimed
        (never handed out again); should this replica die first, the ``purge_at`` TTL collects them."""
        now = self._clock()
        if not self._claimed or (len(self._claimed) < PURGE_BATCH and now - self._purged_at < PURGE_EVERY):
            return
        claimed, self._claimed = self._claimed, []
        try:
            await self._store.purge_claimed(claimed)
        except BaseException:
            self._claimed.extend(claimed)  # try again next round
            raise
        self._purged_at = now

    async def _take_budget(self, wanted: int) -> int:
        """Up to ``wanted`` uses of the render budget, in one call (mostly from this replica's lease)."""
        granted = await self._budget.take_up_to(self._clock(), wanted)
        if granted < wanted:
            log.info("pool_refill_paused", reason="render_budget")
        return granted

    async def _render_batch(self, count: int) -> tuple[int, BaseException | None]:
        """Render ``count`` codes at once and store those that rendered with one insert.

        Returns how many were stored and the first failed render, if any: a failure does not lose the
        others, and the caller raises it once they are stored (the refill loop backs off on it).
        """
        scenes = [new_scene_id() for _ in range(count)]
        results = await asyncio.gather(*(self._render(s, "refill") for s in scenes), return_exceptions=True)
        now = self._clock()
        codes = [
            PooledCode(scene, self._variant, result.data, result.content_type, now)
            for scene, result in zip(scenes, results, strict=True)
            if not isinstance(result, BaseException)
        ]
        await self._store.add_many(codes)
        failures = [result for result in results if isinstance(result, BaseException)]
        return len(codes), failures[0] if failures else None

    async def _render(self, scene: str, purpose: str) -> CodeImage:
        started = time.monotonic()
        try:
            image = await self._renderer.render(scene)
        except ServiceError:
            self._metrics.renders.labels(purpose, "failed").inc()
            raise
        self._metrics.render_seconds.observe(time.monotonic() - started)
        self._metrics.renders.labels(purpose, "ok").inc()
        return image
