"""Named tenacity policies for I/O boundaries: each has a stop condition and logs before sleeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from shared.logging import get_logger

log = get_logger(__name__)


def _log_before_sleep(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "retrying",
            what=what,
            attempt=state.attempt_number,
            sleep_s=round(state.next_action.sleep, 3) if state.next_action else None,
            error=type(exc).__name__ if exc else None,
            detail=str(exc)[:200] if exc else None,
        )

    return before_sleep


def connect_policy(what: str, *, max_seconds: float = 30.0, retry_on: Any = (OSError,)) -> AsyncRetrying:
    """First connection to a broker or database: back off up to ``max_seconds``, then give up."""
    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_after_delay(max_seconds),
        wait=wait_exponential_jitter(multiplier=0.2, max=3.0),
        before_sleep=_log_before_sleep(what),
        reraise=True,
    )


def transient_policy(what: str, retry_on: Any, *, attempts: int = 3, initial: float = 0.2) -> AsyncRetrying:
    """A call that may fail briefly (WeChat -1, a lost connection): a few attempts, exponential."""
    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=initial, max=2.0, jitter=initial),
        before_sleep=_log_before_sleep(what),
        reraise=True,
    )
