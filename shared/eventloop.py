"""The event loop the services run on: uvloop where it is installed, else the standard library's.

uvloop (libuv under asyncio's API) is what aiohttp, aio-pika and PyMongo's async API already run on
unchanged; it costs less CPU per socket event, and a login is mostly socket events (five HTTP
requests, nine RPCs, four events and about thirty MongoDB operations). ``WXLOGIN_EVENT_LOOP=asyncio``
chooses the standard loop, for a platform uvloop does not build on (Windows) or to compare the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopChoice = Literal["auto", "uvloop", "asyncio"]


def loop_factory(choice: LoopChoice = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory of new uvloop loops, or None for the standard loop.

    ``auto`` takes uvloop when it imports; ``uvloop`` insists on it (an ImportError says it is missing).
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def loop_name(choice: LoopChoice = "auto") -> str:
    """``uvloop`` or ``asyncio``: what :func:`run` with ``choice`` runs on, for the start-up log."""
    return "asyncio" if loop_factory(choice) is None else "uvloop"


def run(main: Coroutine[Any, Any, T], choice: LoopChoice = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
