"""course_llm.db.spend on SQLite and PostgreSQL: the spend a budget sees, from the aggregates and
from the raw rows, and two budget books sharing one database."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.control.budgets import BudgetBook, SpendWindow, period_window
from course_llm.control.sections import BudgetConfig, BudgetMatch
from course_llm.db import create_session_factory, dispose_session_factory, insert_records
from course_llm.db.spend import DatabaseSpend, period_spend, stored_ids
from course_llm.db.writes import insert_rows
from course_llm.recording.records import CallRecord
from tests.rows import row

Factory = async_sessionmaker[AsyncSession]

NOW = datetime(2026, 3, 14, 15, 30, tzinfo=UTC)
DAY = period_window("day", NOW)
MONTH = period_window("month", NOW)


def spent(at: datetime, cost: float | None, **values: Any) -> CallRecord:
    return row(0, created_at=at, cost_usd=cost, request_id=f"req-{uuid.uuid4()}", **values)


#: Costs are powers of two, so every sum is exact. acme's text_processing today: 1 + 2 + 4 = 7.
ROWS = [
    spent(datetime(2026, 3, 14, 0, 0, tzinfo=UTC), 1.0, tenant_id="acme"),
    spent(datetime(2026, 3, 14, 14, 59, 59, 999000, tzinfo=UTC), 2.0, tenant_id="acme", operation="grade"),
    spent(datetime(2026, 3, 14, 15, 20, tzinfo=UTC), 4.0, tenant_id="acme"),
    spent(datetime(2026, 3, 14, 15, 21, tzinfo=UTC), None, tenant_id="acme", success=False),  # no cost
    spent(datetime(2026, 3, 14, 9, 0, tzinfo=UTC), 8.0, tenant_id="globex"),  # another tenant
    spent(datetime(2026, 3, 14, 10, 0, tzinfo=UTC), 16.0, tenant_id="acme", action="video_analysis"),
    spent(datetime(2026, 3, 13, 23, 59, 59, tzinfo=UTC), 32.0, tenant_id="acme"),  # yesterday: this month
    spent(datetime(2026, 3, 15, 0, 0, tzinfo=UTC), 64.0, tenant_id="acme"),  # tomorrow: this month
    spent(datetime(2026, 2, 28, 23, 0, tzinfo=UTC), 128.0, tenant_id="acme"),  # last month
    spent(datetime(2026, 4, 1, 0, 0, tzinfo=UTC), 256.0, tenant_id="acme"),  # next month
]

WINDOWS = [
    SpendWindow(*DAY, "text_processing", "acme", None),  # 1 + 2 + 4
    SpendWindow(*DAY, None, None, None),  # + 8 + 16
    SpendWindow(*DAY, None, "acme", "grade"),  # 2
    SpendWindow(*MONTH, "text_processing", "acme", None),  # 7 + 32 + 64
    SpendWindow(*MONTH, None, "nobody", None),  # 0
    # Partial hours at both ends: 14:30 to 15:20 holds the 14:59:59.999 row only (until is exclusive).
    SpendWindow(NOW - timedelta(hours=1), NOW - timedelta(minutes=10), None, None, None),
]
EXPECTED = [7.0, 31.0, 2.0, 103.0, 0.0, 2.0]


async def spend_of(factory: Factory, windows: list[SpendWindow], **options: Any) -> list[float]:
    async with factory() as session:
        return await period_spend(session, windows, **options)


async def test_each_window_sums_only_its_own_rows_from_the_aggregates(session_factory: Factory) -> None:
    await insert_records(session_factory, ROWS)
    assert await spend_of(session_factory, WINDOWS) == EXPECTED


async def test_the_raw_rows_give_the_same_spend_as_the_aggregates(session_factory: Factory) -> None:
    await insert_records(session_factory, ROWS)
    assert await spend_of(session_factory, WINDOWS, use_aggregates=False) == EXPECTED


async def test_a_non_finite_cost_is_left_out_on_both_paths(session_factory: Factory) -> None:
    await insert_records(session_factory, ROWS[:1])
    await insert_rows(session_factory, [spent(NOW, math.inf, tenant_id="acme")])  # plain INSERT keeps it
    windows = WINDOWS[:1]
    assert await spend_of(session_factory, windows) == [1.0]
    assert await spend_of(session_factory, windows, use_aggregates=False) == [1.0]


async def test_all_windows_are_read_in_one_statement(session_factory: Factory) -> None:
    await insert_records(session_factory, ROWS)
    await spend_of(session_factory, WINDOWS)  # learns once that the aggregates exist
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = session_factory.kw["bind"].sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        assert await spend_of(session_factory, WINDOWS) == EXPECTED
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


async def test_a_month_rereads_its_closed_days_once_a_minute_and_today_at_every_refresh(
    session_factory: Factory,
) -> None:
    ticks = [0.0]
    source = DatabaseSpend(session_factory, now=lambda: NOW, monotonic=lambda: ticks[0], closed_ttl_s=60)
    await insert_records(session_factory, ROWS)
    assert (await source(WINDOWS, []))[0] == EXPECTED
    late = spent(datetime(2026, 3, 10, 8, 0, tzinfo=UTC), 512.0, tenant_id="acme")  # a replayed row
    await insert_records(session_factory, [late, spent(NOW, 1024.0, tenant_id="acme")])
    ticks[0] = 59.0
    figures, _ = await source(WINDOWS, [])
    assert (figures[0], figures[3]) == (7.0 + 1024, 103.0 + 1024)
    ticks[0] = 60.0
    figures, _ = await source(WINDOWS, [])
    assert (figures[0], figures[3]) == (7.0 + 1024, 103.0 + 1024 + 512)


async def test_stored_ids_names_only_the_rows_in_the_table(session_factory: Factory) -> None:
    await insert_records(session_factory, ROWS[:2])
    missing = uuid.uuid4()
    async with session_factory() as session:
        found = await stored_ids(session, [ROWS[0].id, missing, ROWS[1].id, ROWS[0].id])
    assert found == {ROWS[0].id, ROWS[1].id}


def acme_budget() -> dict[str, BudgetConfig]:
    match = BudgetMatch(action="text_processing", tenant_id="acme")
    return {"acme-daily": BudgetConfig(match=match, period="day", limit_usd=10.0, downgrade_at=0.5)}


async def test_a_second_book_sees_what_another_process_wrote_after_one_refresh(
    session_factory: Factory,
) -> None:
    source = DatabaseSpend(session_factory)
    first = BudgetBook(acme_budget(), source, lambda: NOW)
    second = BudgetBook(acme_budget(), source, lambda: NOW)
    await first.refresh()
    await second.refresh()
    assert second.check("text_processing", "acme", None).outcome == "ok"
    # The first process answers requests, records their cost and its writer stores the rows.
    records = [spent(NOW, 4.0, tenant_id="acme"), spent(NOW, 8.0, tenant_id="acme")]
    for record in records:
        first.record(record.action, record.tenant_id, record.operation, record.cost_usd, row_id=record.id)
    assert first.check("text_processing", "acme", None).refused
    await insert_records(session_factory, records)
    assert await second.refresh()
    decision = second.check("text_processing", "acme", None)
    assert decision.refused and decision.error is not None
    assert (decision.error.budget, decision.error.spent_usd) == ("acme-daily", 12.0)
    # The first book's own rows are now stored: counted once, not twice.
    assert await first.refresh()
    assert first.snapshot()[0].spent_usd == 12.0


async def test_a_refresh_against_an_unreachable_database_keeps_the_figures(session_factory: Factory) -> None:
    await insert_records(session_factory, ROWS)
    sources = [DatabaseSpend(session_factory)]

    async def source(windows: Sequence[SpendWindow], row_ids: Sequence[uuid.UUID], /) -> Any:
        return await sources[-1](windows, row_ids)

    book = BudgetBook(acme_budget(), source, lambda: NOW, refresh_timeout_s=5)
    assert await book.refresh()
    away = create_session_factory("postgresql+asyncpg://nobody@127.0.0.1:9/none")  # nothing listens
    try:
        sources.append(DatabaseSpend(away))
        assert not await book.refresh()
    finally:
        await dispose_session_factory(away)
    assert (book.refresh_failures, book.snapshot()[0].spent_usd) == (1, 7.0)
