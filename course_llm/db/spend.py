"""The spend behind budgets: the sum of `cost_usd` over time windows, for many windows in one query.

A budget (`course_llm.control.budgets`) counts the llm_calls rows with `since <= created_at <
until` that match its action, tenant_id and operation (None: any), whichever process wrote them.
Its book refreshes every second, so the query must stay cheap at ten million rows. It reads the
aggregates (`course_llm.db.aggregates`), cut as summaries cut a range (`course_llm.db.rollup.plan`):

- whole UTC days from `llm_usage_daily`, whole hours from `llm_usage_hourly`;
- raw llm_calls rows only for the partial hours at either end.

Budget periods are whole UTC days and months, so a budget reads only daily aggregate rows and no
raw rows at all. The triggers keep the aggregates exact at every commit, the current day
included, so nothing is missing at the open end. `DatabaseSpend`, the book's source, also keeps
the sum of a month's closed days (before today) for a minute, so a refresh reads one day's
aggregate rows per budget, not a month's (bench/bench_budget_check.py `--postgres-rows`).

All windows are answered by ONE statement: per table, one `SELECT sum(CASE WHEN <window i> THEN
cost END) AS s_i, …` whose WHERE is any window's condition, glued with UNION ALL (at most three
rows come back). A database never upgraded to the aggregates is answered from the raw rows.

Costs that are NaN or ±Infinity are left out on both paths (the aggregates keep them out of
`cost_usd`), so the two agree. Rows removed by `course-llm db prune` stay counted: the aggregates
keep them, and a window of whole days reads no raw rows (only the partial hours of another
window would miss them, as they are read from llm_calls).

`stored_ids` says which of a set of row ids are in llm_calls: the book uses it to tell which of
its locally recorded costs the stored spend already holds. It runs *before* the sums, in the same
session (see the book's docstring for why that order).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from course_llm.db.aggregates import table_of
from course_llm.db.filtering import TABLE, conditions
from course_llm.db.rollup import Part, aggregates_exist, plan
from course_llm.db.session import SessionFactory
from course_llm.reporting.usage import UsageFilters

__all__ = ["DatabaseSpend", "Window", "period_spend", "stored_ids"]

#: Ids per `IN (…)` list: far below SQLite's and asyncpg's bound-parameter limits.
_ID_CHUNK = 1000


class Window(Protocol):
    """What one sum covers (`course_llm.control.budgets.SpendWindow` is one)."""

    @property
    def since(self) -> datetime: ...
    @property
    def until(self) -> datetime: ...
    @property
    def action(self) -> str | None: ...
    @property
    def tenant_id(self) -> str | None: ...
    @property
    def operation(self) -> str | None: ...


async def stored_ids(session: AsyncSession, row_ids: Sequence[UUID]) -> set[UUID]:
    """Which of `row_ids` are rows of llm_calls (primary-key lookups)."""
    found: set[UUID] = set()
    unique = list(dict.fromkeys(row_ids))
    for start in range(0, len(unique), _ID_CHUNK):
        chunk = unique[start : start + _ID_CHUNK]
        found.update((await session.scalars(sa.select(TABLE.c.id).where(TABLE.c.id.in_(chunk)))).all())
    return found


def _condition(window: Window, part: Part) -> sa.ColumnElement[bool]:
    filters = UsageFilters(
        since=part.since,
        until=part.until,
        action=window.action,
        tenant_id=window.tenant_id,
        operation=window.operation,
    )
    if part.source == "raw":
        columns = TABLE.c
        # x - x = 0 fails for NaN, ±Infinity and NULL: only finite costs, as in the aggregates.
        finite = columns.cost_usd - columns.cost_usd == 0
        return sa.and_(*conditions(filters), finite)
    table = table_of("hour" if part.source == "hour" else "day")
    return sa.and_(*conditions(filters, columns=table.c, time_column="period"))


def _select(source: str, by_window: dict[int, list[sa.ColumnElement[bool]]], count: int) -> sa.Select[Any]:
    """One row: a column per window, its cost sum over `source` (a typed 0 for windows not here)."""
    table = TABLE if source == "raw" else table_of("hour" if source == "hour" else "day")
    cost = table.c.cost_usd
    columns = []
    for index in range(count):
        mine = by_window.get(index)
        if mine:
            column: sa.ColumnElement[Any] = sa.func.sum(sa.case((sa.or_(*mine), cost)))
        else:
            column = sa.cast(sa.literal(0.0), sa.Double())
        columns.append(column.label(f"s{index}"))
    anywhere = [condition for conditions_ in by_window.values() for condition in conditions_]
    return sa.select(*columns).select_from(table).where(sa.or_(*anywhere))


async def period_spend(
    session: AsyncSession, windows: Sequence[Window], *, use_aggregates: bool | None = None
) -> list[float]:
    """The cost sum of each window, in order, in one statement.

    `use_aggregates` None: from the aggregates when the database has them; False: from the raw
    rows only (the slow reference the tests compare with).
    """
    if not windows:
        return []
    if use_aggregates is None:
        use_aggregates = await aggregates_exist(session)
    by_source: dict[str, dict[int, list[sa.ColumnElement[bool]]]] = {}
    for index, window in enumerate(windows):
        if use_aggregates:
            parts = plan(window.since, window.until)
        else:
            parts = [Part("raw", window.since, window.until)]
        for part in parts:
            by_source.setdefault(part.source, {}).setdefault(index, []).append(_condition(window, part))
    selects = [_select(source, by_window, len(windows)) for source, by_window in by_source.items()]
    statement = selects[0] if len(selects) == 1 else sa.union_all(*selects)
    rows = (await session.execute(statement)).all()
    return [sum(float(row[index] or 0.0) for row in rows) for index in range(len(windows))]


@dataclasses.dataclass(frozen=True, slots=True)
class _Span:
    """A window, or the closed days or the open day of one (hashable: a cache key)."""

    since: datetime
    until: datetime
    action: str | None
    tenant_id: str | None
    operation: str | None


class DatabaseSpend:
    """A budget book's spend source on a database: `BudgetBook(budgets, DatabaseSpend(factory))`.

    A month window is read as its closed days (before today, UTC) plus today. Closed days only
    change when rows arrive late (a journal replayed after a crash), so their sum is kept for
    `closed_ttl_s` (60 s) and each refresh reads today's aggregate rows only: a month costs a day.
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        closed_ttl_s: float = 60.0,
    ) -> None:
        self._session_factory = session_factory
        self._now = now
        self._monotonic = monotonic
        self._closed_ttl_s = closed_ttl_s
        self._closed: dict[_Span, tuple[float, float]] = {}  # span -> (valid until, spend)

    async def __call__(
        self, windows: Sequence[Window], row_ids: Sequence[UUID], /
    ) -> tuple[list[float], set[UUID]]:
        """Which of `row_ids` are stored (first), then each window's spend, in one session."""
        today = self._now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        tick = self._monotonic()
        asked: list[_Span] = []
        plans: list[tuple[_Span, _Span | None]] = []  # per window: what is asked, its closed days
        for w in windows:
            if not w.since < today < w.until:
                plans.append((_Span(w.since, w.until, w.action, w.tenant_id, w.operation), None))
                continue
            closed = _Span(w.since, today, w.action, w.tenant_id, w.operation)
            plans.append((_Span(today, w.until, w.action, w.tenant_id, w.operation), closed))
            kept = self._closed.get(closed)
            if kept is None or kept[0] <= tick:
                asked.append(closed)
        asked += [span for span, _ in plans]
        async with self._session_factory() as session:
            present = await stored_ids(session, row_ids)
            figures = dict(zip(asked, await period_spend(session, asked), strict=True))
        cache: dict[_Span, tuple[float, float]] = {}
        for _, days in plans:
            if days is not None:
                fresh = days in figures
                cache[days] = (tick + self._closed_ttl_s, figures[days]) if fresh else self._closed[days]
        self._closed = cache  # only the spans still asked for: yesterday's split is forgotten
        spent = [figures[span] + (cache[days][1] if days else 0.0) for span, days in plans]
        return spent, present
