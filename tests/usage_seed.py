"""Seeded llm_calls rows whose usage figures are known in advance, for the usage report tests.

Nine attempts of six requests over two UTC days. Costs are sums of powers of two, so every float
sum is exact, and the expected figures in the tests are computed by hand from this table, never
by the code under test:

#  req/att UTC time     action  strategy→served  provider   model   in/out     ms   cost$  ok tenant op
1  r1/1    03-01 10:00  video   quality→quality  gemini     pro     -          100  -      F  acme   grade
2  r1/2    03-01 10:00  video   quality→quality  gemini     flash   1000/200   300  0.5    T  acme   grade
3  r2/1    03-01 11:00  video   default→default  gemini     flash   2000/400   200  1.0    T  acme   grade
4  r3/1    03-02 09:00  course  quality→quality  anthropic  sonnet  -          50   -      F  globex outline
5  r3/2    03-02 09:00  course  quality→quality  anthropic  sonnet  -          150  -      F  globex outline
6  r3/3    03-02 09:00  course  quality→default  gemini     flash   3000/1000  400  0.25   T  globex outline
7  r4/1    03-02 12:00  text    default→default  deepseek   ds      500/100    600  0.125  T  -      -
8  r5/1    03-02 13:00  text    budget→budget    deepseek   ds      -          -    -      F  globex summarize
9  r6/1    03-01 23:00  slides  default→default  gemini     flash   100/50     250  0.0625 T  acme   slides

Request rN is `req-N`; attempts of one request are one second apart. video = video_analysis,
course = course_structuring, text = text_processing, slides = presentation_analysis; pro/flash =
gemini-2.5-pro/-flash, sonnet = claude-sonnet, ds = deepseek-chat. Every failure has status 503.
Row 9 is written as 2025-03-02 01:00 at UTC+2, so it belongs to the UTC day 2025-03-01.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import LLMCall, insert_records
from course_llm.db.aggregates import DAILY, HOURLY, PRUNED
from course_llm.recording.records import CallRecord

D1 = datetime(2025, 3, 1, tzinfo=UTC)
D2 = datetime(2025, 3, 2, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))

_ROWS: list[tuple[Any, ...]] = [
    # request, attempt, created_at, action, strategy, served, provider, model,
    # tokens in, out, latency, cost, success, tenant, operation
    ("req-1", 1, D1 + timedelta(hours=10), "video_analysis", "quality", "quality", "gemini",
     "gemini-2.5-pro", None, None, 100.0, None, False, "acme", "grade"),
    ("req-1", 2, D1 + timedelta(hours=10, seconds=1), "video_analysis", "quality", "quality", "gemini",
     "gemini-2.5-flash", 1000, 200, 300.0, 0.5, True, "acme", "grade"),
    ("req-2", 1, D1 + timedelta(hours=11), "video_analysis", "default", "default", "gemini",
     "gemini-2.5-flash", 2000, 400, 200.0, 1.0, True, "acme", "grade"),
    ("req-3", 1, D2 + timedelta(hours=9), "course_structuring", "quality", "quality", "anthropic",
     "claude-sonnet", None, None, 50.0, None, False, "globex", "outline"),
    ("req-3", 2, D2 + timedelta(hours=9, seconds=1), "course_structuring", "quality", "quality", "anthropic",
     "claude-sonnet", None, None, 150.0, None, False, "globex", "outline"),
    ("req-3", 3, D2 + timedelta(hours=9, seconds=2), "course_structuring", "quality", "default", "gemini",
     "gemini-2.5-flash", 3000, 1000, 400.0, 0.25, True, "globex", "outline"),
    ("req-4", 1, D2 + timedelta(hours=12), "text_processing", "default", "default", "deepseek",
     "deepseek-chat", 500, 100, 600.0, 0.125, True, None, None),
    ("req-5", 1, D2 + timedelta(hours=13), "text_processing", "budget", "budget", "deepseek",
     "deepseek-chat", None, None, None, None, False, "globex", "summarize"),
    ("req-6", 1, datetime(2025, 3, 2, 1, 0, tzinfo=PLUS_TWO), "presentation_analysis", "default", "default",
     "gemini", "gemini-2.5-flash", 100, 50, 250.0, 0.0625, True, "acme", "slides"),
]  # fmt: skip

#: (request_id, attempt) of each seeded row, newest first: the order of `GET /usage/calls`.
NEWEST_FIRST = [
    ("req-5", 1),
    ("req-4", 1),
    ("req-3", 3),
    ("req-3", 2),
    ("req-3", 1),
    ("req-6", 1),
    ("req-2", 1),
    ("req-1", 2),
    ("req-1", 1),
]


def seed_records() -> list[CallRecord]:
    """The nine records of the table above (fresh ids each call)."""
    records = []
    for values in _ROWS:
        (request, attempt, created, action, strategy, served, provider, model,
         tokens_in, tokens_out, latency, cost, ok, tenant, operation) = values  # fmt: skip
        records.append(
            CallRecord(
                request_id=request,
                attempt=attempt,
                created_at=created,
                action=action,
                strategy=strategy,
                served_strategy=served,
                provider=provider,
                model_id=model,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                latency_ms=latency,
                cost_usd=cost,
                success=ok,
                status_code=None if ok else 503,
                error_class=None if ok else "ServiceUnavailableError",
                error_message=None if ok else "upstream unavailable",
                tenant_id=tenant,
                operation=operation,
                source="sdk",
                metadata={"tags": {"seed": request}},
                id=uuid.uuid4(),
            )
        )
    return records


async def seed(session_factory: async_sessionmaker[AsyncSession]) -> list[CallRecord]:
    """Insert the nine seeded rows and return their records."""
    records = seed_records()
    assert await insert_records(session_factory, records) == len(records)
    return records


async def empty_usage(session: AsyncSession) -> None:
    """Delete every llm_calls row, the aggregates and the prune cutoff (which keeps older rows counted)."""
    await session.execute(sa.delete(LLMCall))
    for table in (HOURLY, DAILY, PRUNED):
        await session.execute(sa.delete(table))
