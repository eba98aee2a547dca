"""Benchmark the budget check on the request path: µs per `BudgetBook.check()` (and `record()`).

    .venv/bin/python bench/bench_budget_check.py [--calls 200000]

A timing benchmark, not a test (tests/test_budgets.py checks the behaviour). Issue 14's target:
at most 20 µs per request with about five budgets. Measured in the same run:
- baseline: an empty book (no budgets: the clock read and the loop set-up only);
- 1, 5 and 20 budgets: each book's budgets are a mix of match-all, per action, per tenant and per
  operation budgets, every one of which matches the checked request (the worst case: the whole
  list is compared), none spent, so the answer is "ok";
- the same books when the last budget refuses (the ready BudgetExceededError is built per call);
- `record()` of one cost into the same books.
Each figure is the median of 7 runs of `--calls` calls; the ratio is to the baseline.

With `--postgres-rows N` it also times what a refresh costs the database (no target; it runs in
the background, once a second): a throw-away PostgreSQL database seeded with N rows over 60 days
as bench/bench_usage.py seeds it (aggregates built by the upgrade), five budgets (day and month,
per action, tenant, operation and all traffic), `DatabaseSpend` (the daily aggregate, one
statement; closed days of the month kept for a minute, and re-read at every refresh) against the
same sums over the raw rows in the same run, median of 10 after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_llm.control.budgets import BudgetBook, SpendWindow, period_window
from course_llm.control.sections import BudgetConfig, BudgetMatch

ACTION, TENANT, OPERATION = "text_processing", "acme", "grade"
RUNS = 7


class Spend:
    """Figures the book is refreshed with: `spent` for the last budget, nothing for the others."""

    def __init__(self, spent: float) -> None:
        self.spent = spent

    async def __call__(self, windows: Sequence[SpendWindow], row_ids: Sequence[UUID], /) -> Any:
        return [0.0] * (len(windows) - 1) + [self.spent], set()


def budgets(count: int) -> dict[str, BudgetConfig]:
    matches = [
        BudgetMatch(),
        BudgetMatch(action=ACTION),
        BudgetMatch(tenant_id=TENANT),
        BudgetMatch(action=ACTION, operation=OPERATION),
        BudgetMatch(action=ACTION, tenant_id=TENANT, operation=OPERATION),
    ]
    return {
        f"budget-{index}": BudgetConfig(
            match=matches[index % len(matches)],
            period="day" if index % 2 else "month",
            limit_usd=100.0,
            downgrade_at=0.8 if index % 3 else None,
        )
        for index in range(count)
    }


def book_of(count: int, spent: float) -> BudgetBook:
    book = BudgetBook(budgets(count), Spend(spent))
    asyncio.run(book.refresh())
    return book


def per_call_us(function: Callable[[], object], calls: int) -> float:
    runs = []
    for _ in range(RUNS):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(runs)


def main(calls: int) -> None:
    print(f"BudgetBook.check({ACTION!r}, {TENANT!r}, {OPERATION!r}); median of {RUNS} runs of {calls} calls")
    print(f"{'book':<28} {'µs/call':>8} {'× baseline':>11}")
    empty = book_of(0, 0.0)
    baseline = per_call_us(functools.partial(empty.check, ACTION, TENANT, OPERATION), calls)
    print(f"{'baseline: no budgets':<28} {baseline:8.2f} {1.0:11.1f}")
    for count in (1, 5, 20):
        for label, spent in (("ok", 0.0), ("last refuses", 1000.0)):
            book = book_of(count, spent)
            outcome = book.check(ACTION, TENANT, OPERATION).outcome
            assert outcome == ("ok" if spent == 0 else "refuse"), outcome
            figure = per_call_us(functools.partial(book.check, ACTION, TENANT, OPERATION), calls)
            name = f"{count} budgets, {label}"
            print(f"{name:<28} {figure:8.2f} {figure / baseline:11.1f}")
    print()
    print(f"BudgetBook.record(…, 0.001) into the same books (pending costs grow; {calls // 10} calls a run)")
    for count in (1, 5, 20):
        book = book_of(count, 0.0)
        figure = per_call_us(functools.partial(book.record, ACTION, TENANT, OPERATION, 0.001), calls // 10)
        print(f"{f'{count} budgets':<28} {figure:8.2f}")
    now = datetime.now(UTC)
    print(f"\n(measured {now:%Y-%m-%d %H:%M} UTC; target: ≤ 20 µs per check with ~5 budgets)")


async def time_refresh(url: str, now: datetime) -> None:
    from course_llm.db import create_session_factory, dispose_session_factory
    from course_llm.db.spend import DatabaseSpend, period_spend

    windows = [
        SpendWindow(*period_window("day", now), None, None, None),
        SpendWindow(*period_window("day", now), "text_processing", None, None),
        SpendWindow(*period_window("day", now), None, "tenant-7", None),
        SpendWindow(*period_window("month", now), None, "tenant-7", "op-7"),
        SpendWindow(*period_window("month", now), None, None, None),
    ]
    factory = create_session_factory(url)
    try:
        cached, uncached = DatabaseSpend(factory), DatabaseSpend(factory, closed_ttl_s=0)

        async def raw() -> list[float]:
            async with factory() as session:
                return await period_spend(session, windows, use_aggregates=False)

        async def from_source(source: DatabaseSpend) -> list[float]:
            return (await source(windows, []))[0]

        queries: dict[str, Callable[[], Awaitable[list[float]]]] = {
            "aggregates, closed days kept": functools.partial(from_source, cached),
            "aggregates, whole month": functools.partial(from_source, uncached),
            "raw rows (baseline)": raw,
        }
        timings: dict[str, list[float]] = {label: [] for label in queries}
        figures: dict[str, list[float]] = {}
        for run in range(11):
            for label, query in queries.items():
                started = time.perf_counter()
                figures[label] = await query()
                if run:  # the first run warms the caches
                    timings[label].append((time.perf_counter() - started) * 1000)
        for label, spent in figures.items():
            print(f"  {label}: the 5 budgets spent {', '.join(f'{f:,.4f}' for f in spent)} USD")
        baseline = statistics.median(timings["raw rows (baseline)"])
        print(f"{'refresh from':<30} {'ms':>8}  {'/ baseline':>10}")
        for label, values in timings.items():
            figure = statistics.median(values)
            print(f"{label:<30} {figure:8.2f}  {figure / baseline:10.4f}")
    finally:
        await dispose_session_factory(factory)


def postgres_section(rows: int) -> None:
    from sqlalchemy.engine import make_url

    from bench.bench_usage import PG_ADMIN, SEED_SQL, _execute
    from course_llm.db import upgrade_database

    name = f"course_llm_bench_{secrets.token_hex(4)}"
    url = make_url(PG_ADMIN).set(drivername="postgresql+asyncpg", database=name)
    url_text = url.render_as_string(hide_password=False)
    now = datetime.now(UTC)
    asyncio.run(_execute(PG_ADMIN, f'CREATE DATABASE "{name}"'))  # our hex name: safe to quote
    try:
        upgrade_database(url_text, "0001")
        asyncio.run(_execute(url_text, SEED_SQL, rows, now))
        upgrade_database(url_text)  # builds the aggregates from the rows
        asyncio.run(_execute(url_text, "VACUUM ANALYZE"))
        print(f"\nPostgreSQL, {rows:,} rows over 60 days; median of 10 refreshes")
        asyncio.run(time_refresh(url_text, now))
    finally:
        asyncio.run(_execute(PG_ADMIN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="check() calls per run")
    parser.add_argument("--postgres-rows", type=int, default=0, help="also time a refresh on N rows")
    args = parser.parse_args()
    main(args.calls)
    if args.postgres_rows:
        postgres_section(args.postgres_rows)
