"""The budget book (course_llm.control.budgets) on its own: an injected clock and an in-memory spend
source standing in for the database (`FakeSpend` answers like `course_llm.db.spend` would from the
rows it was given). Thresholds, precedence, rollover, local records and their reconciliation."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import structlog

from course_llm.control.budgets import OK, BudgetBook, SpendWindow, period_window
from course_llm.control.sections import BudgetConfig, BudgetMatch

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


class Clock:
    """Wall clock and monotonic clock, moved by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.ticks = 1000.0

    def __call__(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)
        self.ticks += seconds


@dataclasses.dataclass
class Row:
    at: datetime
    cost: float
    action: str = "text_processing"
    tenant_id: str | None = "acme"
    operation: str | None = None
    id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)


class FakeSpend:
    """The database as far as a refresh sees it: the rows "flushed" so far."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.fail = False
        self.calls = 0
        self.gate: asyncio.Event | None = None  # when set: answers only once the test opens it

    async def __call__(
        self, windows: Sequence[SpendWindow], row_ids: Sequence[uuid.UUID], /
    ) -> tuple[list[float], AbstractSet[uuid.UUID]]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionRefusedError("connection refused\nsecond line")
        stored = {row.id for row in self.rows}
        return [sum(row.cost for row in self.rows if _in(window, row)) for window in windows], {
            i for i in row_ids if i in stored
        }


def _in(window: SpendWindow, row: Row) -> bool:
    return (
        window.since <= row.at < window.until
        and window.action in (None, row.action)
        and window.tenant_id in (None, row.tenant_id)
        and window.operation in (None, row.operation)
    )


def budget(limit: float = 10.0, **values: Any) -> BudgetConfig:
    match = values.pop("match", {})
    return BudgetConfig(match=BudgetMatch(**match), limit_usd=limit, **{"period": "day", **values})


def make_book(clock: Clock, spend: FakeSpend, **budgets: BudgetConfig) -> BudgetBook:
    return BudgetBook(budgets, spend, clock, monotonic=clock.monotonic)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture
def spend() -> FakeSpend:
    return FakeSpend()


async def test_below_downgrade_at_a_request_is_ok(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(clock, spend, daily=budget(10, downgrade_at=0.8))
    spend.rows.append(Row(NOON, 7.99))
    assert await book.refresh()
    assert book.check("text_processing", "acme", None) is OK


async def test_from_downgrade_at_of_the_limit_on_the_request_is_downgraded(
    clock: Clock, spend: FakeSpend
) -> None:
    book = make_book(clock, spend, daily=budget(10, downgrade_at=0.8))
    spend.rows.append(Row(NOON, 8.0))
    await book.refresh()
    decision = book.check("text_processing", "acme", None)
    assert (decision.outcome, decision.budget, decision.downgraded, decision.refused) == (
        "downgrade",
        "daily",
        True,
        False,
    )


async def test_at_the_limit_a_reject_budget_refuses_with_a_ready_error(
    clock: Clock, spend: FakeSpend
) -> None:
    book = make_book(clock, spend, daily=budget(10, downgrade_at=0.8))
    spend.rows.append(Row(NOON, 10.0))
    await book.refresh()
    decision = book.check("text_processing", "acme", None)
    assert decision.refused and decision.budget == "daily"
    assert decision.error is not None
    error = decision.error
    assert (error.budget, error.spent_usd, error.limit_usd) == ("daily", 10.0, 10.0)
    assert error.resets_at == datetime(2026, 3, 15, tzinfo=UTC)


async def test_an_allow_budget_never_refuses_but_still_downgrades(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(
        clock,
        spend,
        soft=budget(10, on_limit="allow", downgrade_at=0.5),
        record_only=budget(10, on_limit="allow", match={"action": "video_analysis"}),
    )
    spend.rows += [Row(NOON, 50.0), Row(NOON, 50.0, action="video_analysis")]
    await book.refresh()
    assert book.check("text_processing", "acme", None).budget == "soft"
    assert book.check("text_processing", "acme", None).outcome == "downgrade"
    assert book.check("video_analysis", "globex", None).outcome == "downgrade"  # "soft" matches all
    record_only = BudgetBook({"r": budget(10, on_limit="allow")}, spend, clock, monotonic=clock.monotonic)
    await record_only.refresh()
    assert record_only.check("text_processing", "acme", None) is OK
    assert record_only.snapshot()[0].state == "exceeded"


async def test_refusal_beats_an_earlier_downgrading_budget(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(
        clock,
        spend,
        wide=budget(100, downgrade_at=0.1),
        acme=budget(5, match={"tenant_id": "acme"}),
    )
    spend.rows.append(Row(NOON, 20.0))
    await book.refresh()
    assert (book.check("text_processing", "acme", None).outcome, book.check("x", "acme", None).budget) == (
        "refuse",
        "acme",
    )
    assert book.check("text_processing", "globex", None).budget == "wide"  # acme's does not match


async def test_the_first_refusing_and_the_first_downgrading_budget_in_registry_order_are_named(
    clock: Clock, spend: FakeSpend
) -> None:
    book = make_book(
        clock,
        spend,
        first_down=budget(100, downgrade_at=0.1),
        second_down=budget(100, downgrade_at=0.1),
        first_refuse=budget(5),
        second_refuse=budget(5),
    )
    spend.rows.append(Row(NOON, 20.0))
    await book.refresh()
    assert book.check("text_processing", "acme", None).budget == "first_refuse"
    only_down = make_book(clock, spend, a=budget(100, downgrade_at=0.1), b=budget(100, downgrade_at=0.1))
    await only_down.refresh()
    assert only_down.check("text_processing", "acme", None).budget == "a"


async def test_a_budget_counts_only_the_rows_its_match_selects(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(clock, spend, op=budget(5, match={"action": "text_processing", "operation": "grade"}))
    spend.rows += [Row(NOON, 4.0, operation="grade"), Row(NOON, 4.0, operation="other"), Row(NOON, 4.0)]
    await book.refresh()
    assert book.snapshot()[0].spent_usd == 4.0
    assert book.check("text_processing", "acme", "grade") is OK


async def test_record_counts_at_once_in_every_matching_budget(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(clock, spend, all=budget(10), acme=budget(3, match={"tenant_id": "acme"}))
    await book.refresh()
    book.record("text_processing", "acme", None, 2.0)
    book.record("text_processing", "acme", None, 1.0)
    book.record("text_processing", "globex", None, 0.5)
    assert [s.spent_usd for s in book.snapshot()] == [3.5, 3.0]
    assert book.check("text_processing", "acme", None).budget == "acme"
    assert book.check("text_processing", "acme", None).refused


async def test_record_ignores_missing_and_non_finite_costs(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(clock, spend, all=budget(10))
    for cost in (None, math.nan, math.inf, -1.0, 0.0):
        book.record("text_processing", "acme", None, cost)
    assert book.snapshot()[0].spent_usd == 0.0


async def test_a_recorded_row_is_counted_once_after_the_database_holds_it(
    clock: Clock, spend: FakeSpend
) -> None:
    book = make_book(clock, spend, all=budget(10))
    spend.rows.append(Row(NOON, 1.0))  # another process's
    await book.refresh()
    row = Row(NOON, 2.0)
    book.record(row.action, row.tenant_id, row.operation, row.cost, row_id=row.id)
    await book.refresh()  # not flushed yet: still counted, from the local record
    assert book.snapshot()[0].spent_usd == 3.0
    clock.advance(0.25)
    spend.rows.append(row)  # the writer flushed it
    await book.refresh()
    assert book.snapshot()[0].spent_usd == 3.0
    clock.advance(60)
    await book.refresh()
    assert book.snapshot()[0].spent_usd == 3.0


async def test_a_record_without_row_id_is_kept_until_a_refresh_after_the_grace_period(
    clock: Clock, spend: FakeSpend
) -> None:
    book = make_book(clock, spend, all=budget(10))
    book.record("text_processing", "acme", None, 2.0)
    clock.advance(4)
    await book.refresh()  # within the grace period, row not flushed: not lost
    assert book.snapshot()[0].spent_usd == 2.0
    spend.rows.append(Row(clock.at, 2.0))
    clock.advance(1)
    await book.refresh()  # started 5 s after the record: the stored spend holds it now
    assert book.snapshot()[0].spent_usd == 2.0


async def test_a_recorded_row_that_never_reaches_the_database_is_dropped_after_max_pending(
    clock: Clock, spend: FakeSpend
) -> None:
    book = make_book(clock, spend, all=budget(10))
    book.record("text_processing", "acme", None, 2.0, row_id=uuid.uuid4())
    clock.advance(299)
    await book.refresh()
    assert book.snapshot()[0].spent_usd == 2.0
    clock.advance(1)
    await book.refresh()
    assert book.snapshot()[0].spent_usd == 0.0


async def test_a_record_made_while_a_refresh_runs_is_kept(clock: Clock) -> None:
    gate = asyncio.Event()
    rows: list[Row] = []

    async def slow(windows: Sequence[SpendWindow], row_ids: Sequence[uuid.UUID], /) -> Any:
        await gate.wait()
        return [sum(r.cost for r in rows)], {r.id for r in rows}

    book = BudgetBook({"all": budget(10)}, slow, clock, monotonic=clock.monotonic)
    refreshing = asyncio.create_task(book.refresh())
    await asyncio.sleep(0)
    row = Row(NOON, 2.0)
    clock.advance(10)
    book.record(row.action, row.tenant_id, None, 2.0, row_id=row.id)
    book.record(row.action, row.tenant_id, None, 1.0)
    gate.set()
    assert await refreshing
    assert book.snapshot()[0].spent_usd == 3.0


async def test_a_refresh_that_answers_after_a_newer_one_is_ignored(clock: Clock) -> None:
    answers: list[tuple[asyncio.Event, float]] = []

    async def source(windows: Sequence[SpendWindow], row_ids: Sequence[uuid.UUID], /) -> Any:
        gate = asyncio.Event()
        answers.append((gate, 3.0 * len(answers)))  # the older query read less
        figure = answers[-1][1]
        await gate.wait()
        return [figure], set()

    book = BudgetBook({"all": budget(10)}, source, clock, monotonic=clock.monotonic)
    older = asyncio.create_task(book.refresh())
    await asyncio.sleep(0)
    clock.advance(1)
    newer = asyncio.create_task(book.refresh())
    await asyncio.sleep(0)
    answers[1][0].set()
    assert await newer
    answers[0][0].set()
    assert await older
    assert book.snapshot()[0].spent_usd == 3.0


async def test_a_failing_database_keeps_the_last_figures_and_counts_the_failure(
    clock: Clock, spend: FakeSpend
) -> None:
    book = make_book(clock, spend, all=budget(10))
    spend.rows.append(Row(NOON, 4.0))
    await book.refresh()
    refreshed_at = book.refreshed_at
    spend.fail = True
    book.record("text_processing", "acme", None, 1.0)
    clock.advance(10)
    with structlog.testing.capture_logs() as logs:
        assert not await book.refresh()
    assert book.snapshot()[0].spent_usd == 5.0
    assert (book.refresh_failures, book.refreshed_at) == (1, refreshed_at)
    assert logs == [
        {
            "event": "budget_refresh_failed",
            "log_level": "warning",
            "error_class": "ConnectionRefusedError",
            "error": "connection refused",
            "failures": 1,
        }
    ]


async def test_a_refresh_that_hangs_times_out_as_a_failure(clock: Clock) -> None:
    async def hangs(windows: Sequence[SpendWindow], row_ids: Sequence[uuid.UUID], /) -> Any:
        await asyncio.Event().wait()

    book = BudgetBook({"all": budget(10)}, hangs, clock, refresh_timeout_s=0.01)
    assert not await book.refresh()
    assert book.refresh_failures == 1


async def test_the_day_rolls_over_at_utc_midnight(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(clock, spend, daily=budget(10))
    spend.rows.append(Row(NOON, 10.0))
    await book.refresh()
    book.record("text_processing", "acme", None, 1.0)
    assert book.check("text_processing", "acme", None).refused
    clock.at = datetime(2026, 3, 14, 23, 59, 59, 999999, tzinfo=UTC)
    assert book.check("text_processing", "acme", None).refused
    clock.at = datetime(2026, 3, 15, tzinfo=UTC)
    assert book.check("text_processing", "acme", None) is OK
    status = book.snapshot()[0]
    assert (status.spent_usd, status.resets_at) == (0.0, datetime(2026, 3, 16, tzinfo=UTC))
    spend.rows.append(Row(clock.at, 3.0))
    await book.refresh()
    assert book.snapshot()[0].spent_usd == 3.0


async def test_a_refresh_of_the_old_period_does_not_land_in_the_new_one(
    clock: Clock, spend: FakeSpend
) -> None:
    clock.at = datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC)
    book = make_book(clock, spend, daily=budget(10))
    spend.rows.append(Row(clock.at, 7.0))
    spend.gate = asyncio.Event()
    refreshing = asyncio.create_task(book.refresh())
    await asyncio.sleep(0)  # the refresh asked for the old day and waits for its answer
    clock.at = datetime(2026, 3, 15, 0, 0, 1, tzinfo=UTC)
    assert book.check("text_processing", "acme", None) is OK  # rolls over before the refresh answers
    spend.gate.set()
    assert await refreshing
    assert book.snapshot()[0].spent_usd == 0.0


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
        (
            datetime(2027, 1, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
            datetime(2027, 2, 1, tzinfo=UTC),
        ),
        (
            datetime(2027, 2, 28, 12, tzinfo=UTC),
            datetime(2027, 2, 1, tzinfo=UTC),
            datetime(2027, 3, 1, tzinfo=UTC),
        ),
        (
            datetime(2028, 2, 29, 12, tzinfo=UTC),
            datetime(2028, 2, 1, tzinfo=UTC),
            datetime(2028, 3, 1, tzinfo=UTC),
        ),
        # 01:30 at UTC+2 is still the last day of January in UTC.
        (
            datetime(2027, 2, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            datetime(2027, 1, 1, tzinfo=UTC),
            datetime(2027, 2, 1, tzinfo=UTC),
        ),
    ],
)
def test_a_month_is_the_utc_calendar_month(now: datetime, start: datetime, end: datetime) -> None:
    assert period_window("month", now) == (start, end)


async def test_a_monthly_budget_rolls_over_from_december_to_january_and_through_february(
    clock: Clock, spend: FakeSpend
) -> None:
    clock.at = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    book = make_book(clock, spend, monthly=budget(10, period="month"))
    spend.rows.append(Row(clock.at, 10.0))
    await book.refresh()
    assert book.check("text_processing", "acme", None).refused
    assert book.snapshot()[0].resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    clock.at = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert book.check("text_processing", "acme", None) is OK
    assert book.snapshot()[0].resets_at == datetime(2027, 2, 1, tzinfo=UTC)
    clock.at = datetime(2027, 2, 15, tzinfo=UTC)
    spend.rows.append(Row(datetime(2027, 2, 1, tzinfo=UTC), 4.0))
    spend.rows.append(Row(datetime(2027, 1, 31, 23, 59, tzinfo=UTC), 100.0))  # January's
    await book.refresh()
    status = book.snapshot()[0]
    assert (status.spent_usd, status.resets_at) == (4.0, datetime(2027, 3, 1, tzinfo=UTC))


async def test_a_local_record_dated_before_the_period_does_not_count_in_it(
    clock: Clock, spend: FakeSpend
) -> None:
    book = make_book(clock, spend, daily=budget(10))
    book.record("text_processing", "acme", None, 3.0, at=NOON - timedelta(days=1))
    book.record("text_processing", "acme", None, 1.0, at=datetime(2026, 3, 14, 23, 59, tzinfo=UTC))
    assert book.snapshot()[0].spent_usd == 1.0
    clock.at = datetime(2026, 3, 15, 0, 0, 5, tzinfo=UTC)
    assert book.snapshot()[0].spent_usd == 0.0  # yesterday's pending cost stays in yesterday


async def test_snapshot_reports_every_budget_in_registry_order(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(
        clock,
        spend,
        fresh=budget(10, downgrade_at=0.8),
        low=budget(10, downgrade_at=0.8, period="month"),
        over=budget(10),
    )
    spend.rows.append(Row(NOON, 8.5))
    book.record("text_processing", "acme", None, 0.0)
    await book.refresh()
    book.record("text_processing", "acme", None, 4.0)
    by_name = {status.name: status for status in book.snapshot()}
    assert list(by_name) == ["fresh", "low", "over"]
    over = by_name["over"]
    assert (over.period, over.limit_usd, over.spent_usd, over.remaining_usd, over.state) == (
        "day",
        10.0,
        12.5,
        0.0,
        "exceeded",
    )
    assert by_name["low"].resets_at == datetime(2026, 4, 1, tzinfo=UTC)
    other = make_book(clock, spend, low=budget(10, downgrade_at=0.8), z=budget(10, match={"tenant_id": "z"}))
    await other.refresh()
    assert [(s.state, s.remaining_usd) for s in other.snapshot()] == [("downgraded", 1.5), ("ok", 10.0)]


async def test_an_empty_book_says_ok_and_never_asks_the_database(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(clock, spend)
    assert book.check("text_processing", None, None) is OK
    assert await book.refresh()
    assert (spend.calls, book.snapshot()) == (0, [])


async def test_the_background_refresher_rereads_until_closed(clock: Clock, spend: FakeSpend) -> None:
    book = make_book(clock, spend, all=budget(10))
    await book.start(interval_s=0.001)
    assert spend.calls == 1  # the first refresh is done before start returns
    spend.rows.append(Row(NOON, 11.0))
    async with asyncio.timeout(10):
        while not book.check("text_processing", "acme", None).refused:
            await asyncio.sleep(0.001)
    await book.aclose()
    calls = spend.calls
    await asyncio.sleep(0.01)
    assert spend.calls == calls
    await book.aclose()  # twice is fine
