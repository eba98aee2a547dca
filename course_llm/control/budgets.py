"""The budget book: what each budget of the registry has spent in its period, checked per request.

A budget counts the `cost_usd` of the llm_calls rows of its UTC day or month that match it,
whichever process wrote them. Asking the database on every request would cost a query per call, so
the book keeps one figure per budget in memory and `check()` only compares floats (a few µs with
five budgets, `bench/bench_budget_check.py`). The figure is

    spent = stored + pending

- `stored`: the period's spend as the database last said (`refresh()`, every second by `start()`);
- `pending`: the costs this process `record()`ed that the database may not hold yet (the writer
  flushes rows about 0.25 s after the attempt, later when the database is slow or away).

Reconciliation, so that a local cost is neither lost nor counted twice. A refresh reads which of
the pending rows (by row id) are already in the database, then the stored spend, in one session:
a pending cost leaves `pending` exactly when the refresh that saw its row in the table takes over
`stored`. (Ids are read first: a row committed between the two reads is counted twice until the
next refresh, never missed. A refresh that answers after a newer one is ignored.)

A cost recorded without a row id falls back to a grace period: it is dropped once a refresh that
*started* `grace_s` (5 s) after it has succeeded, which assumes the writer flushes within that
time; until then it may be counted twice (spend looks higher for a few seconds, never lower). A
pending row that never shows up (the database refused it) is dropped after `max_pending_s` (5
min) by a successful refresh; while the database is away, local spend keeps counting.

Periods are UTC calendar windows `[start, end)`: a day from 00:00 to the next 00:00, a month from
the 1st 00:00 to the next 1st; `resets_at` is the end. When the injected clock passes it, the
budget starts the new window at 0 (plus any pending costs dated in it) until the next refresh
reads the new window's spend. A refresh that fails (database away, timeout) never raises: it logs
`budget_refresh_failed`, counts `refresh_failures` and keeps the last figures.

The book is meant for one event loop: `check` and `record` are synchronous and never wait;
mutations hold a lock only so that a callback thread recording a cost cannot corrupt the sums.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from uuid import UUID

import structlog

from course_llm.control.sections import BudgetConfig
from course_llm.errors import BudgetExceededError

__all__ = ["OK", "BudgetBook", "BudgetStatus", "Decision", "SpendSource", "SpendWindow", "period_window"]

log = structlog.get_logger()

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def period_window(period: Literal["day", "month"], now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar day or month holding `now` (an aware datetime), as `[start, end)`."""
    utc = now.astimezone(UTC)
    start = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start, start + timedelta(days=1)
    start = start.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


@dataclasses.dataclass(frozen=True, slots=True)
class SpendWindow:
    """The rows one budget counts: `since <= created_at < until` and the match (None: any value)."""

    since: datetime
    until: datetime
    action: str | None
    tenant_id: str | None
    operation: str | None


class SpendSource(Protocol):
    """Where `refresh()` reads spend: `course_llm.db.spend.DatabaseSpend`, or a fake in tests.

    Returns the spend of each window, in order, and which of `row_ids` are stored.
    """

    def __call__(
        self, windows: Sequence[SpendWindow], row_ids: Sequence[UUID], /
    ) -> Awaitable[tuple[Sequence[float], AbstractSet[UUID]]]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What `check()` says about a request: `ok`, `downgrade` (to the budget chain) or `refuse`.

    `budget` names the budget that decided (None when ok); a refusal carries the ready `error`.
    """

    outcome: Literal["ok", "downgrade", "refuse"]
    budget: str | None = None
    error: BudgetExceededError | None = None

    @property
    def refused(self) -> bool:
        return self.outcome == "refuse"

    @property
    def downgraded(self) -> bool:
        return self.outcome == "downgrade"


OK = Decision("ok")


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget as `GET /usage/budgets` and `course-llm budgets` report it."""

    name: str
    period: str
    limit_usd: float
    spent_usd: float
    remaining_usd: float
    state: Literal["ok", "downgraded", "exceeded"]
    resets_at: datetime


class _Counter:
    """One budget's figures for its current window (mutable: `spent` is what `check` compares)."""

    def __init__(self, name: str, config: BudgetConfig, now: datetime) -> None:
        self.name = name
        self.config = config
        self.action = config.match.action
        self.tenant_id = config.match.tenant_id
        self.operation = config.match.operation
        self.limit = config.limit_usd
        self.rejects = config.on_limit == "reject"
        at = config.downgrade_at
        self.downgrade_from = math.inf if at is None else at * config.limit_usd
        self.downgrade = Decision("downgrade", name)
        self.pending = self.spent = 0.0
        self.roll_over(now)

    def roll_over(self, now: datetime) -> None:
        """Start the window holding `now`: nothing stored for it yet."""
        since, until = period_window(self.config.period, now)
        self.window = SpendWindow(since, until, self.action, self.tenant_id, self.operation)
        self.stored = 0.0

    def matches(self, action: str, tenant_id: str | None, operation: str | None) -> bool:
        return self.config.match.matches(action, tenant_id, operation)


@dataclasses.dataclass(slots=True)
class _Pending:
    """A cost recorded here that the database may not hold yet."""

    recorded: float  # monotonic seconds
    at: datetime  # when it was spent (the row's created_at), for the window it belongs to
    cost: float
    row_id: UUID | None
    counters: tuple[_Counter, ...]


class BudgetBook:
    """Every budget's spend in its current period, checked without I/O, refreshed in the background.

    `budgets` in registry order (the order decisions name them in); `now` returns an aware
    datetime (default: UTC now); `monotonic` times the pending costs (module docstring).
    """

    def __init__(
        self,
        budgets: Mapping[str, BudgetConfig],
        spend_source: SpendSource,
        now: Clock = _utcnow,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        grace_s: float = 5.0,
        max_pending_s: float = 300.0,
        refresh_timeout_s: float = 10.0,
    ) -> None:
        self._now = now
        self._monotonic = monotonic
        self._source = spend_source
        self._grace_s = grace_s
        self._max_pending_s = max_pending_s
        self._timeout_s = refresh_timeout_s
        start = now()
        self._counters = [_Counter(name, config, start) for name, config in budgets.items()]
        self._next_reset = min(
            (c.window.until for c in self._counters), default=datetime.max.replace(tzinfo=UTC)
        )
        self._pending: list[_Pending] = []
        self._applied = -math.inf  # when the refresh whose figures are in use started (monotonic)
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        #: Refreshes that failed since the book was built (the figures stayed as they were).
        self.refresh_failures = 0
        #: When the last successful refresh started (None: none yet; figures are local only).
        self.refreshed_at: datetime | None = None

    # --- the request path ----------------------------------------------------------------------

    def check(self, action: str, tenant_id: str | None, operation: str | None) -> Decision:
        """Whether a request may go: the first refusing budget, else the first downgrading one, else OK."""
        if self._now() >= self._next_reset:
            self._roll_over()
        downgrade: Decision | None = None
        for counter in self._counters:
            if (
                (counter.action is not None and counter.action != action)
                or (counter.tenant_id is not None and counter.tenant_id != tenant_id)
                or (counter.operation is not None and counter.operation != operation)
            ):
                continue
            spent = counter.spent
            if counter.rejects and spent >= counter.limit:
                error = BudgetExceededError(counter.name, spent, counter.limit, counter.window.until)
                return Decision("refuse", counter.name, error)
            if downgrade is None and spent >= counter.downgrade_from:
                downgrade = counter.downgrade
        return downgrade or OK

    def record(
        self,
        action: str,
        tenant_id: str | None,
        operation: str | None,
        cost_usd: float | None,
        *,
        row_id: UUID | None = None,
        at: datetime | None = None,
    ) -> None:
        """Add a finished attempt's cost to every matching budget at once.

        `row_id` (the llm_calls id of the attempt) lets a refresh tell exactly when the database
        holds the row; `at` (its created_at, default now) picks the period it counts in. A
        missing, non-finite or negative cost counts nothing, as the database's sum ignores it.
        """
        if cost_usd is None or not math.isfinite(cost_usd) or cost_usd <= 0:
            return
        now = self._now()
        if now >= self._next_reset:
            self._roll_over()
        when = now if at is None else at
        with self._lock:
            counters = tuple(
                c
                for c in self._counters
                if c.matches(action, tenant_id, operation) and c.window.since <= when < c.window.until
            )
            if not counters:
                return
            self._pending.append(_Pending(self._monotonic(), when, cost_usd, row_id, counters))
            for counter in counters:
                counter.pending += cost_usd
                counter.spent += cost_usd

    # --- refreshing ----------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Re-read every budget's period spend from the source; False (logged, counted) on failure."""
        if not self._counters:
            return True
        started = self._monotonic()
        started_at = self._now()
        if started_at >= self._next_reset:
            self._roll_over()
        windows = [counter.window for counter in self._counters]
        asked = [p.row_id for p in self._pending if p.row_id is not None]
        try:
            async with asyncio.timeout(self._timeout_s):
                spent, stored_ids = await self._source(windows, asked)
            if len(spent) != len(windows):
                raise ValueError(f"spend source returned {len(spent)} figures for {len(windows)} budgets")
        except Exception as exc:  # any failure of the source: keep the last figures (module docstring)
            self.refresh_failures += 1
            error, kind = (str(exc).splitlines()[0] if str(exc) else repr(exc))[:300], type(exc).__name__
            log.warning(
                "budget_refresh_failed", error_class=kind, error=error, failures=self.refresh_failures
            )
            return False
        self._apply(windows, spent, set(stored_ids), set(asked), started)
        self.refreshed_at = started_at
        return True

    def _apply(
        self,
        windows: Sequence[SpendWindow],
        spent: Sequence[float],
        stored_ids: AbstractSet[UUID],
        asked: AbstractSet[UUID],
        started: float,
    ) -> None:
        grace_before = started - self._grace_s
        lost_before = started - self._max_pending_s
        with self._lock:
            if started < self._applied:  # a newer refresh already answered: this one is stale
                return
            self._applied = started
            for counter, window, figure in zip(self._counters, windows, spent, strict=True):
                # A window that rolled over while the query ran keeps what it has: the figure is
                # the old period's.
                if counter.window == window:
                    counter.stored = float(figure) if math.isfinite(figure) else counter.stored
            kept = []
            for p in self._pending:
                if p.row_id is not None and p.row_id in asked:
                    if p.row_id in stored_ids or p.recorded <= lost_before:
                        continue
                elif p.row_id is None and p.recorded <= grace_before:
                    continue
                kept.append(p)
            self._pending = kept
            self._resum()

    def _resum(self) -> None:
        """Recompute `pending` and `spent` from the pending list (no drift from repeated += and -=)."""
        for counter in self._counters:
            counter.pending = 0.0
        for p in self._pending:
            for counter in p.counters:
                counter.pending += p.cost
        for counter in self._counters:
            counter.spent = counter.stored + counter.pending

    def _roll_over(self) -> None:
        """Move every budget whose period ended into the period holding now."""
        now = self._now()
        with self._lock:
            for counter in self._counters:
                if now >= counter.window.until:
                    counter.roll_over(now)
            kept = []
            for p in self._pending:
                p.counters = tuple(c for c in p.counters if c.window.since <= p.at < c.window.until)
                if p.counters:
                    kept.append(p)
            self._pending = kept
            self._next_reset = min(c.window.until for c in self._counters)
            self._resum()

    async def start(self, interval_s: float = 1.0) -> None:
        """Refresh once now, then every `interval_s` in the background until `aclose()`."""
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(interval_s), name="course_llm-budget-refresh")

    async def _refresh_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh()

    async def aclose(self) -> None:
        """Stop the background refresher (the figures stay readable)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # --- reporting -----------------------------------------------------------------------------

    def snapshot(self) -> list[BudgetStatus]:
        """Every budget's figures now, in registry order (`GET /usage/budgets`)."""
        if self._now() >= self._next_reset:
            self._roll_over()
        statuses = []
        for counter in self._counters:
            spent = counter.spent
            state: Literal["ok", "downgraded", "exceeded"] = "ok"
            if spent >= counter.limit:
                state = "exceeded"
            elif spent >= counter.downgrade_from:
                state = "downgraded"
            remaining = max(0.0, counter.limit - spent)
            period, resets_at = counter.config.period, counter.window.until
            statuses.append(
                BudgetStatus(counter.name, period, counter.limit, spent, remaining, state, resets_at)
            )
        return statuses
