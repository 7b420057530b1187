"""What a chaos run means: one table row per fault (the logins started from its injection to the next
fault's), and the issue's conditions checked over the whole run, each broken one as a sentence."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tests.chaos.driver import LoginRecord
from tests.chaos.faults import Fault
from tests.chaos.scenario import Run

AFTER_LAST_FAULT = 5.0  # logins started this long after the last recovery must all complete
READY_AGAIN_WITHIN = 10.0  # seconds after recovery by which every /readyz answers 200 again
MIN_OUTAGE_FOR_503 = 2.0  # an outage this long must have answered some requests with 503


@dataclass
class Row:
    """One line of the table."""

    fault: str
    down_s: float | None
    first_login_s: float | None  # from recovery to the first login completed after it
    ready_s: float | None  # from recovery until every watched /readyz answered 200 again
    attempted: int
    completed: int
    failed_retryable: int
    failed_other: int
    lost: int
    doubled: int
    server_errors: int
    hangs: int
    unavailable: int


def _first_login_s(run: Run, fault: Fault) -> float | None:
    after = [
        r.completed_at for r in run.logins if r.completed_at is not None and r.completed_at >= fault.back
    ]
    return min(after) - fault.back if after else None


def _ready_s(run: Run, fault: Fault) -> float | None:
    if not fault.outage:
        return None
    again = [ready_again_s(run, fault, name) for name in _watched(run, fault)]
    return None if not again or None in again else max(a for a in again if a is not None)


def _row(run: Run, name: str, fault: Fault | None, logins: list[LoginRecord]) -> Row:
    return Row(
        name,
        fault.down_s if fault is not None else None,
        _first_login_s(run, fault) if fault is not None else None,
        _ready_s(run, fault) if fault is not None else None,
        len(logins),
        sum(r.completed for r in logins),
        sum(r.failed_retryable for r in logins),
        sum(bool(r.failure) and not r.failed_retryable for r in logins),
        sum(r.lost for r in logins),
        sum(r.doubled for r in logins),
        sum(r.server_errors for r in logins),
        sum(r.hangs for r in logins),
        sum(r.unavailable for r in logins),
    )


def rows(run: Run) -> list[Row]:
    """The warm-up, then one row per fault, then the total."""
    marks = [f.injected for f in run.faults] + [float("inf")]
    out = [_row(run, "(before faults)", None, [r for r in run.logins if r.started < marks[0]])]
    for i, fault in enumerate(run.faults):
        window = [r for r in run.logins if marks[i] <= r.started < marks[i + 1]]
        out.append(_row(run, fault.name, fault, window))
    out.append(_row(run, "total", None, run.logins))
    return out


def table(run: Run) -> str:
    """The rows as a fixed-width text table."""
    head = (
        "fault",
        "down s",
        "→1st login s",
        "→ready s",
        "attempted",
        "completed",
        "failed-retry",
        "failed-other",
        "lost",
        "doubled",
        "5xx≠503",
        "hangs",
        "503s",
    )
    lines = [head]
    for r in rows(run):
        lines.append(
            (
                r.fault,
                _num(r.down_s),
                _num(r.first_login_s),
                _num(r.ready_s),
                str(r.attempted),
                str(r.completed),
                str(r.failed_retryable),
                str(r.failed_other),
                str(r.lost),
                str(r.doubled),
                str(r.server_errors),
                str(r.hangs),
                str(r.unavailable),
            )
        )
    width = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(c.rjust(width[i]) if i else c.ljust(width[i]) for i, c in enumerate(line)) for line in lines
    ]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


def outcomes(run: Run) -> str:
    """Why logins failed and what the refusals said, counted (most frequent first)."""
    failures = Counter(r.failure for r in run.logins if r.failure)
    refusals = Counter(code for r in run.logins for code in r.codes)
    lines = [f"  failed: {n} x {why}" for why, n in failures.most_common(8)]
    lines += [f"  refused: {n} x {code}" for code, n in refusals.most_common(8)]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- the conditions ---------------------------------------------------------------------


def lost_or_doubled(run: Run) -> list[str]:
    """No login that was confirmed is lost or completed twice."""
    out = [
        f"login {r.n} ({r.scene}) was confirmed and never completed: {r.failure}; saw {r.summary()}"
        for r in run.logins
        if r.lost
    ]
    out += [
        f"login {r.n} ({r.scene}) was completed as {len(r.sessions)} different sessions"
        for r in run.logins
        if r.doubled
    ]
    return out


def late_logins_complete(run: Run) -> list[str]:
    """Every login started ≥ 5 s after the last fault's recovery completes."""
    last = max((f.back for f in run.faults), default=run.started)
    late = [r for r in run.logins if r.started >= last + AFTER_LAST_FAULT]
    out = [
        f"login {r.n} started {r.started - last:.1f} s after the last recovery did not complete: "
        f"{r.failure or 'unfinished'}; saw {r.summary()}"
        for r in late
        if not r.completed
    ]
    if not late:
        out.append("no login started 5 s after the last recovery (the run settled too briefly)")
    return out


def no_500_no_hang(run: Run) -> list[str]:
    """No request answered 5xx other than 503, and none went unanswered past the client's timeout."""
    out = []
    for r in run.logins:
        bad = {
            step: [a for a in seen if a == "hang" or (isinstance(a, int) and a >= 500 and a != 503)]
            for step, seen in r.seen.items()
        }
        bad = {step: seen for step, seen in bad.items() if seen}
        if bad:
            out.append(f"login {r.n} ({r.scene}) got {bad}")
    return out


def outages_answer_503(run: Run) -> list[str]:
    """Each outage long enough to be seen answered some requests with 503 while it lasted."""
    out = []
    for f in run.faults:
        if not f.outage or f.down_s < MIN_OUTAGE_FOR_503:
            continue
        during = [
            r for r in run.logins if r.started < f.back and (r.completed_at or float("inf")) > f.injected
        ]
        if not any(r.unavailable for r in during):
            out.append(f"{f.name}: no request got 503 during {f.down_s:.1f} s down")
    return out


def _next_injection(run: Run, fault: Fault) -> float:
    later = [f.injected for f in run.faults if f.injected > fault.injected]
    return min(later, default=run.load_stopped + 60.0)


def _watched(run: Run, fault: Fault) -> list[str]:
    """The replicas whose /readyz must follow ``fault``: all for the bus, Mongo's users for Mongo."""
    names = []
    for name in run.replica_names:
        checks = run.ready.checks(name)
        if fault.component == "mongo" and checks and "mongo" not in checks:
            continue  # this service does not use Mongo
        if run.ready.of(name, fault.injected, fault.back):
            names.append(name)  # it ran during the outage
    return names


def ready_again_s(run: Run, fault: Fault, name: str) -> float | None:
    """Seconds from ``fault``'s recovery to ``name``'s first /readyz 200 (None: not before the next fault)."""
    after = run.ready.of(name, fault.back, _next_injection(run, fault))
    first = next((s.at for s in after if s.status == 200), None)
    return None if first is None else max(0.0, first - fault.back)


def readiness_tracks(run: Run) -> list[str]:
    """Each outage turns /readyz 503 on the replicas that depend on the component while it lasts, and
    200 again within :data:`READY_AGAIN_WITHIN` s of recovery (and before the next fault)."""
    out = []
    for f in (f for f in run.faults if f.outage):
        for name in _watched(run, f):
            if all(s.status == 200 for s in run.ready.of(name, f.injected, f.back)):
                out.append(f"{f.name}: {name} /readyz stayed 200 through {f.down_s:.1f} s down")
            again = ready_again_s(run, f, name)
            if again is None or again > READY_AGAIN_WITHIN:
                shown = "never" if again is None else f"{again:.1f} s"
                out.append(f"{f.name}: {name} /readyz 200 again after recovery: {shown}")
                continue
            last = run.ready.of(name, f.back, _next_injection(run, f))[-1]
            if last.status != 200:
                out.append(f"{f.name}: {name} /readyz back to {last.status} before the next fault")
    return out


def violations(run: Run) -> list[str]:
    """Every condition the run broke (empty when it passed)."""
    return [
        *run.errors,
        *lost_or_doubled(run),
        *late_logins_complete(run),
        *no_500_no_hang(run),
        *outages_answer_503(run),
        *readiness_tracks(run),
    ]


def none_of(violations: list[str], warnings: Sequence[str] = ()) -> None:
    """Fail with the first violations, one a line, when there are any, and the services' warnings
    (``Run.warnings``) after them: the logs are gone once the run is over."""
    shown = "\n".join(violations[:15])
    more = f"\n… and {len(violations) - 15} more" if len(violations) > 15 else ""
    logged = "".join(f"\n  {line}" for line in warnings[:60])
    said = f"\nthe services logged:{logged}" if logged else ""
    assert not violations, f"{len(violations)} violation(s):\n{shown}{more}{said}"
