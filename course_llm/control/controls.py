"""A registry's budgets and circuit breaker, as one facade router or one proxy process applies them.

`Controls` is what the facade (course_llm/routing/facade.py) and the proxy (course_llm/proxy/
recorder.py, hooks.py) hold; each asks it three things and tells it one:
- `plan(action, strategy, tenant_id, operation)` before routing a request: go as asked, go by the
  action's `budget` chain (a budget passed its `downgrade_at`), or `BudgetExceededError` (a
  budget with `on_limit: reject` is spent; nothing is sent and no row is written);
- `gate(model_id)` before each attempt: None lets it go; otherwise the `(error_class, message)`
  of the row of an attempt not made (its model's circuit is open);
- `observe(record)` with every row: its cost counts in the matching budgets at once, and its
  outcome feeds the breaker;
- `budget_statuses()` / `open_circuits()` for `/usage/budgets`, `/metrics` and the dashboard.

Spend is what the rows say, whichever process wrote them: with a spend source (the database,
`course_llm.db.spend.DatabaseSpend`, or Redis seeded from it, `redis_spend.RedisSpend`) the book
refreshes every second in the background, so several processes share one budget; without one (a
facade with no database) it counts this process's rows only. Only `ready()` waits: a new
process's first requests, at most 2 s, for the first figures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from course_llm.control.breaker import CircuitBreaker, OpenCircuit
from course_llm.control.budgets import BudgetBook, BudgetStatus, SpendSource, SpendWindow
from course_llm.control.redis_circuits import SharedCircuits
from course_llm.control.sections import BudgetConfig, CircuitBreakerConfig
from course_llm.errors import CourseLLMError
from course_llm.recording.clean import clean_text
from course_llm.recording.records import BUDGET_KEY, CallRecord

__all__ = ["BUDGET_STRATEGY", "Controls", "Plan"]

log = structlog.get_logger()

#: The strategy a downgraded request is served by (the action's cheap chain).
BUDGET_STRATEGY = "budget"


@dataclass(frozen=True, slots=True)
class Plan:
    """How to serve a request: by `strategy`, and `budget` names the budget that downgraded it."""

    strategy: str
    budget: str | None = None

    def metadata(self) -> dict[str, str]:
        """What the rows of a downgraded request carry in their metadata: `{"budget": name}`."""
        return {BUDGET_KEY: self.budget} if self.budget else {}


async def _no_spend_source(
    windows: Sequence[SpendWindow], row_ids: Sequence[UUID], /
) -> tuple[Sequence[float], set[UUID]]:
    raise RuntimeError("no database: the budget book counts this process's rows only")


class Controls:
    """Budgets and breaker of one registry. `has_chain(action, strategy)` says whether a chain
    with models exists (a downgrade needs the action's `budget` chain)."""

    def __init__(
        self,
        budgets: Mapping[str, BudgetConfig],
        breaker: CircuitBreakerConfig | None,
        has_chain: Callable[[str, str], bool],
        spend_source: SpendSource | None = None,
        circuits: SharedCircuits | None = None,
    ) -> None:
        """`circuits` shares the breaker's circuits with other processes (through Redis)."""
        self.book = BudgetBook(budgets, spend_source or _no_spend_source) if budgets else None
        self.breaker = CircuitBreaker(breaker) if breaker is not None else None
        self._circuits = circuits if self.breaker is not None else None
        if self._circuits is not None and self.breaker is not None:
            self._circuits.attach(self.breaker)
        self._circuits_started = self._circuits is None
        self._has_chain = has_chain
        self._shared = spend_source is not None
        self._source = spend_source
        # A shared counter to add each row's cost to (`RedisSpend.push`); none with a database.
        self._push: Callable[[CallRecord, str | None, str | None], None] | None = getattr(
            spend_source, "push", None
        )
        self._starting: asyncio.Task[None] | None = None
        self._ready_by: float | None = None  # loop time after which no request waits (`ready`)
        #: Requests refused, per budget (a `/metrics` counter).
        self.refusals: Counter[str] = Counter()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the budgets' spend once, then every second in the background (with a database)."""
        if self.book is not None and self._shared:
            await self.book.start()

    def start_soon(self) -> None:
        """`start()` and the circuits' sync in the background, when an event loop runs (the
        proxy's start-up; else the first request's `plan` or `gate`)."""
        if not self._circuits_started and self._circuits is not None:
            with contextlib.suppress(RuntimeError):  # no loop yet
                self._circuits.start()
                self._circuits_started = True
        if self._starting is not None or self.book is None or not self._shared:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the first request's `plan` starts it
        self._starting = loop.create_task(self.start(), name="course_llm-budgets-start")

    async def ready(self, timeout_s: float = 2.0) -> None:
        """Wait until the first read of the budgets' spend is done, at most until `timeout_s`
        after the first call: a new process must not take its first requests for free. A slow or
        absent database costs only its first requests that wait (they then count this process's
        spend), never a request after that."""
        self.start_soon()
        task = self._starting
        if task is None or task.done():
            return
        now = asyncio.get_running_loop().time()
        if self._ready_by is None:
            self._ready_by = now + timeout_s
        if self._ready_by <= now:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), self._ready_by - now)
        if not task.done():
            log.warning("budgets_not_ready", waited_s=timeout_s)

    async def aclose(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self.book is not None:
            await self.book.aclose()
        if self._circuits is not None:
            await self._circuits.aclose()
        closing = getattr(self._source, "aclose", None)
        if closing is not None:
            await closing()

    # -- the request path ----------------------------------------------------------------------

    def plan(self, action: str, strategy: str, tenant_id: str | None, operation: str | None) -> Plan:
        """How to serve this request; raises BudgetExceededError when a budget refuses it.

        The labels are compared as their row will store them (`label`): a NUL in a tenant id
        must not pass for another tenant here and be billed to the first one in the table."""
        if self.book is None:
            return Plan(strategy)
        self.start_soon()
        tenant_id, operation = label(tenant_id), label(operation)
        decision = self.book.check(action, tenant_id, operation)
        if decision.refused and decision.error is not None:
            self.refusals[decision.error.budget] += 1
            log.warning(
                "budget_refused",
                budget=decision.error.budget,
                action=action,
                tenant_id=tenant_id,
                spent_usd=round(decision.error.spent_usd, 6),
                limit_usd=decision.error.limit_usd,
            )
            raise decision.error
        if decision.downgraded and strategy != BUDGET_STRATEGY and self._has_chain(action, BUDGET_STRATEGY):
            return Plan(BUDGET_STRATEGY, decision.budget)
        return Plan(strategy)

    def gate(self, model_id: str) -> tuple[str, str] | None:
        """Before an attempt on `model_id`: None to send it, else its skip row's class and message."""
        if self.breaker is None:
            return None
        if not self._circuits_started:
            self.start_soon()
        return self.breaker.skip_reason(model_id)

    def observe(self, record: CallRecord) -> None:
        """Every row: its cost counts in the budgets it matches, its outcome feeds the breaker."""
        if self.breaker is not None:
            self.breaker.observe(record)
        if self.book is not None and record.cost_usd:
            if self._push is not None:
                try:
                    self._push(record, label(record.tenant_id), label(record.operation))
                except Exception as exc:  # sharing a cost must never cost a row
                    log.error("budget_push_failed", error=repr(exc))
            self.book.record(
                record.action,
                label(record.tenant_id),
                label(record.operation),
                record.cost_usd,
                row_id=record.id,
                at=record.created_at,
            )

    # -- reporting -----------------------------------------------------------------------------

    def budget_statuses(self) -> list[BudgetStatus]:
        return self.book.snapshot() if self.book is not None else []

    def open_circuits(self) -> list[OpenCircuit]:
        return self.breaker.open_circuits() if self.breaker is not None else []


async def read_budget_statuses(
    budgets: Mapping[str, BudgetConfig], source: SpendSource
) -> list[BudgetStatus]:
    """Each budget's figures as `source` (the database) says now: `course-llm budgets`."""
    book = BudgetBook(budgets, source)
    if budgets and not await book.refresh():
        raise CourseLLMError("could not read the budgets' spend from the database (see the log line above)")
    return book.snapshot()


def label(value: str | None) -> str | None:
    """A tenant id or operation as its llm_calls row stores it (course_llm/recording/clean.py)."""
    return clean_text(value) if isinstance(value, str) else value


def status_dict(status: BudgetStatus) -> dict[str, Any]:
    """One budget as `GET /usage/budgets` and `course-llm budgets --json` show it."""
    return {
        "name": status.name,
        "period": status.period,
        "limit_usd": status.limit_usd,
        "spent_usd": round(status.spent_usd, 6),
        "remaining_usd": round(status.remaining_usd, 6),
        "state": status.state,
        "resets_at": _iso(status.resets_at),
    }


def circuit_dict(circuit: OpenCircuit) -> dict[str, Any]:
    """One open circuit as `GET /usage/circuits` shows it."""
    return {
        "model_id": circuit.model_id,
        "state": circuit.state,
        "reopens_in_s": round(circuit.reopens_in_s, 3),
        "consecutive_failures": circuit.consecutive_failures,
        "last_status_code": circuit.last_status_code,
        "skipped": circuit.skipped,
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
