"""SQLite part of bench/bench_usage.py: how long a dashboard's summaries stall the event loop.

Seeds `rows` rows into a migrated SQLite file, then runs the dashboard's first-load summaries
twice with a 10 ms ticker on the same loop: the way summaries used to run (every latency
streamed into Python), and `summarize()` as it is. Prints the longest stall of each; the target
is under 50 ms (issue 11: "no event-loop stall over 50 ms during a summary").
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from course_llm.db import SessionFactory, create_session_factory, dispose_session_factory, upgrade_database
from course_llm.db.usage import summarize
from course_llm.reporting.usage import UsageFilters

#: The dashboard's summary calls at first load (dashboard.js): totals, by day+action, by model.
DASHBOARD_SUMMARIES: list[list[str]] = [[], ["day", "action"], ["day", "model_id"], ["model_id"]]
TARGET_STALL_S = 0.05
_SQLITE_INSERT = (
    "INSERT INTO llm_calls (id, request_id, attempt, created_at, action, strategy, served_strategy, provider,"
    " model_id, tokens_in, tokens_out, latency_ms, cost_usd, success, stream, cache_hit, tenant_id, source,"
    " metadata) VALUES (?, ?, 1, ?, ?, 'default', 'default', 'gemini', ?, 100, 10, ?, 0.001, ?, 0, 0, ?,"
    " 'proxy', '{}')"
)


def _seed_sqlite(path: str, rows: int, now: datetime) -> None:
    """`rows` rows over 30 days, written as SQLAlchemy stores them (hex id, text timestamp)."""
    rng = random.Random(11)
    actions = ["video_analysis", "presentation_analysis", "course_structuring", "text_processing"]
    models = ["gemini-2.5-flash", "gemini-2.5-pro", "claude-sonnet", "deepseek-chat", "gpt-4o-mini"]
    with sqlite3.connect(path) as connection:
        connection.executemany(
            _SQLITE_INSERT,
            (
                (uuid.uuid4().hex, f"bench-{g}", _text(now - timedelta(seconds=g * 2592000 / rows)),
                 actions[g % 4], models[g // 4 % 5], 50 + rng.random() * 8000, rng.random() >= 0.05,
                 f"t-{g % 50}")
                for g in range(rows)
            ),
        )  # fmt: skip


def _text(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S.%f}"


async def _python_side_summary(factory: SessionFactory, group_by: list[str]) -> int:
    """The baseline, inline: what SQLite summaries did before, streaming every latency into Python."""
    from course_llm.db.filtering import COLUMNS, group_expression
    from course_llm.db.usage import percentile

    async with factory() as session:
        keys = [group_expression(name, "sqlite") for name in group_by]
        per_group: dict[tuple[Any, ...], list[float]] = {}
        everything: list[float] = []
        latencies = sa.select(*keys, COLUMNS.latency_ms).where(COLUMNS.latency_ms.is_not(None))
        result = await session.stream(latencies.execution_options(yield_per=10_000))
        async for row in result:
            per_group.setdefault(tuple(row[:-1]), []).append(row[-1])
            everything.append(row[-1])
        for values in per_group.values():
            values.sort()
            percentile(values, 0.5), percentile(values, 0.95)
        everything.sort()
        percentile(everything, 0.5), percentile(everything, 0.95)
    return len(per_group)


async def _with_probe(run: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(seconds `run` took, the longest stall a 10 ms ticker saw meanwhile, beyond its tick)."""
    worst = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - before - 0.01)

    ticker = asyncio.create_task(probe())
    await asyncio.sleep(0.02)
    start = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - start
    done.set()
    await ticker
    return elapsed, worst


def measure_sqlite_stalls(rows: int) -> bool:
    """The dashboard's summaries over `rows` SQLite rows: old Python-side percentiles vs summarize()."""
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/usage.db"
        url = f"sqlite+aiosqlite:///{path}"
        upgrade_database(url)
        start = time.perf_counter()
        _seed_sqlite(path, rows, now)
        print(f"SQLite: seeded {rows:,} rows in {time.perf_counter() - start:.1f} s", flush=True)

        async def measure() -> bool:
            factory = create_session_factory(url)
            try:

                async def baseline() -> None:
                    for group_by in DASHBOARD_SUMMARIES:
                        await _python_side_summary(factory, group_by)

                async def current() -> None:
                    for group_by in DASHBOARD_SUMMARIES:
                        await summarize(factory, UsageFilters(), group_by)

                await current()  # warm-up: page cache, connection
                old_s, old_stall = await _with_probe(baseline)
                new_s, new_stall = await _with_probe(current)
            finally:
                await dispose_session_factory(factory)
            label = f"SQLite, the dashboard's {len(DASHBOARD_SUMMARIES)} summaries over {rows:,} rows"
            print(
                f"{label}, latencies into Python (baseline): {old_s:.3f} s, longest stall {old_stall:.3f} s"
            )
            ok = new_stall < TARGET_STALL_S
            print(f"{label}, summarize(): {new_s:.3f} s, longest stall {new_stall:.3f} s "
                  f"(target < {TARGET_STALL_S:g} s){'' if ok else '  MISSED'}", flush=True)  # fmt: skip
            return ok

        return asyncio.run(measure())
