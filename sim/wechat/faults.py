"""Scripted faults of the simulator: an errcode, added latency, a malformed body or a hang.

A fault is either an *outcome* fault (``errcode`` or ``mode``, optionally slowed by ``latency_ms``) or
a *latency* fault (``latency_ms`` alone). On each call of an endpoint, the oldest outcome fault with
calls left decides the answer, and the oldest latency fault with calls left adds its delay, so a
standing "everything is slow" fault and a "fail the next two calls" fault combine. A fault without a
``count`` stays until it is cleared (``DELETE /sim/faults`` or ``POST /sim/reset``).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any, Literal

# The WeChat endpoints the simulator serves; faults and counters are keyed by these names.
ENDPOINTS = (
    "cgi-bin/token",
    "cgi-bin/stable_token",
    "wxa/getwxacodeunlimit",
    "sns/jscode2session",
    "wxa/business/getuserphonenumber",
    "wxa/checksession",
)
MODES = ("malformed", "hang")
MAX_LATENCY_MS = 600_000

Mode = Literal["malformed", "hang"]


class FaultSpecError(ValueError):
    """A ``POST /sim/faults`` body that does not describe a fault."""


@dataclass
class Fault:
    """One scripted misbehaviour of one endpoint."""

    id: int
    endpoint: str
    errcode: int | None = None
    errmsg: str | None = None
    mode: Mode | None = None
    latency_ms: float = 0.0
    remaining: int | None = None  # calls left; None = until cleared

    @property
    def has_outcome(self) -> bool:
        """True when the fault replaces the answer (errcode or mode), not only delays it."""
        return self.errcode is not None or self.mode is not None

    def view(self) -> dict[str, Any]:
        """The fault as the control API shows it."""
        out: dict[str, Any] = {"id": self.id, "endpoint": self.endpoint, "count": self.remaining}
        if self.errcode is not None:
            out["errcode"] = self.errcode
        if self.errmsg is not None:
            out["errmsg"] = self.errmsg
        if self.mode is not None:
            out["mode"] = self.mode
        if self.latency_ms:
            out["latency_ms"] = self.latency_ms
        return out

    @classmethod
    def from_spec(cls, fault_id: int, spec: dict[str, Any]) -> Fault:
        """Validate a ``POST /sim/faults`` body (unknown keys are refused: they are usually typos)."""
        allowed = {"endpoint", "errcode", "errmsg", "count", "latency_ms", "mode"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise FaultSpecError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        endpoint = spec.get("endpoint")
        if isinstance(endpoint, str):
            endpoint = endpoint.strip("/")
        if endpoint not in ENDPOINTS:
            raise FaultSpecError(f"endpoint must be one of {list(ENDPOINTS)}")
        errcode = spec.get("errcode")
        if errcode is not None and (type(errcode) is not int or errcode == 0):
            raise FaultSpecError("errcode must be a non-zero integer")
        errmsg = spec.get("errmsg")
        if errmsg is not None and not isinstance(errmsg, str):
            raise FaultSpecError("errmsg must be a string")
        if errmsg is not None and errcode is None:
            raise FaultSpecError("errmsg needs an errcode")
        mode = spec.get("mode")
        if mode is not None and mode not in MODES:
            raise FaultSpecError(f"mode must be one of {list(MODES)}")
        if mode is not None and errcode is not None:
            raise FaultSpecError("give either errcode or mode, not both")
        count = spec.get("count")
        if count is not None and (type(count) is not int or count < 1):
            raise FaultSpecError("count must be a positive integer (omit it for 'until cleared')")
        latency = spec.get("latency_ms", 0)
        if (
            not isinstance(latency, int | float)
            or isinstance(latency, bool)
            or not 0 <= latency <= MAX_LATENCY_MS
        ):
            raise FaultSpecError(f"latency_ms must be a number from 0 to {MAX_LATENCY_MS}")
        if errcode is None and mode is None and not latency:
            raise FaultSpecError("a fault needs an errcode, a mode or a latency_ms")
        return cls(fault_id, endpoint, errcode, errmsg, mode, float(latency), count)


@dataclass(frozen=True)
class Plan:
    """What the faults decide for one call: a delay, and maybe an outcome replacing the answer."""

    delay_s: float = 0.0
    outcome: Fault | None = None


class FaultBook:
    """The faults in force, per endpoint, and the event that releases hanging calls."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._release: dict[str, asyncio.Event] = {}  # endpoint -> event its hanging calls wait on

    def add(self, spec: dict[str, Any]) -> Fault:
        """Validate ``spec`` and append the fault; raises :class:`FaultSpecError`."""
        fault = Fault.from_spec(next(self._ids), spec)
        self._faults.append(fault)
        return fault

    def list(self) -> list[Fault]:
        """Faults in force, oldest first."""
        return list(self._faults)

    def clear(self, endpoint: str | None = None) -> int:
        """Remove the faults of ``endpoint`` (all when None) and release every hanging call."""
        before = len(self._faults)
        self._faults = [f for f in self._faults if endpoint is not None and f.endpoint != endpoint]
        self.release(endpoint)
        return before - len(self._faults)

    def release(self, endpoint: str | None = None) -> None:
        """Let the hanging calls of ``endpoint`` (all when None) end, without an answer."""
        for name in [e for e in self._release if endpoint is None or e == endpoint]:
            self._release.pop(name).set()

    def plan(self, endpoint: str) -> Plan:
        """Consume one call from the faults of ``endpoint``."""
        outcome = next((f for f in self._faults if f.endpoint == endpoint and f.has_outcome), None)
        slow = next((f for f in self._faults if f.endpoint == endpoint and not f.has_outcome), None)
        delay = 0.0
        for fault in (outcome, slow):
            if fault is None:
                continue
            delay += fault.latency_ms / 1000
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
        return Plan(delay, outcome)

    async def hang(self, endpoint: str) -> None:
        """Wait until the endpoint's faults are cleared, the simulator is reset or it shuts down."""
        event = self._release.setdefault(endpoint, asyncio.Event())
        await event.wait()
