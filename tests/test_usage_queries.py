"""course_llm.db.usage over seeded rows, on SQLite and PostgreSQL: sums, filters, pages, drill-down.

The seeded rows are tabulated in tests/usage_seed.py; every expected figure below was worked out
by hand from that table (row numbers in the comments refer to it).
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import insert_records
from course_llm.db.usage import (
    count_matching,
    iter_calls,
    list_calls,
    percentile,
    request_attempts,
    summarize,
)
from course_llm.recording.records import CallRecord
from course_llm.reporting.usage import CALL_COLUMNS, FIGURES, UsageFilters, filters_from, parse_filters
from tests.usage_seed import NEWEST_FIRST, seed

Factory = async_sessionmaker[AsyncSession]

#: Seed row number → (request_id, attempt).
ROW = {
    1: ("req-1", 1),
    2: ("req-1", 2),
    3: ("req-2", 1),
    4: ("req-3", 1),
    5: ("req-3", 2),
    6: ("req-3", 3),
    7: ("req-4", 1),
    8: ("req-5", 1),
    9: ("req-6", 1),
}

#: group_by → [(*keys, calls, failures, tokens_in, tokens_out, cost_usd)], in the expected order
#: (cost, highest first, then keys; a None key sorts after every value).
GROUPS: dict[str, list[tuple[Any, ...]]] = {
    "action": [
        ("video_analysis", 3, 1, 3000, 600, 1.5),  # rows 1-3
        ("course_structuring", 3, 2, 3000, 1000, 0.25),  # rows 4-6
        ("text_processing", 2, 1, 500, 100, 0.125),  # rows 7, 8
        ("presentation_analysis", 1, 0, 100, 50, 0.0625),  # row 9
    ],
    "strategy": [
        ("default", 3, 0, 2600, 550, 1.1875),  # rows 3, 7, 9
        ("quality", 5, 3, 4000, 1200, 0.75),  # rows 1, 2, 4, 5, 6
        ("budget", 1, 1, 0, 0, 0.0),  # row 8
    ],
    "served_strategy": [
        ("default", 4, 0, 5600, 1550, 1.4375),  # rows 3, 6, 7, 9
        ("quality", 4, 3, 1000, 200, 0.5),  # rows 1, 2, 4, 5
        ("budget", 1, 1, 0, 0, 0.0),  # row 8
    ],
    "provider": [
        ("gemini", 5, 1, 6100, 1650, 1.8125),  # rows 1, 2, 3, 6, 9
        ("deepseek", 2, 1, 500, 100, 0.125),  # rows 7, 8
        ("anthropic", 2, 2, 0, 0, 0.0),  # rows 4, 5
    ],
    "model_id": [
        ("gemini-2.5-flash", 4, 0, 6100, 1650, 1.8125),  # rows 2, 3, 6, 9
        ("deepseek-chat", 2, 1, 500, 100, 0.125),  # rows 7, 8
        ("claude-sonnet", 2, 2, 0, 0, 0.0),  # rows 4, 5
        ("gemini-2.5-pro", 1, 1, 0, 0, 0.0),  # row 1
    ],
    "tenant_id": [
        ("acme", 4, 1, 3100, 650, 1.5625),  # rows 1, 2, 3, 9
        ("globex", 4, 3, 3000, 1000, 0.25),  # rows 4, 5, 6, 8
        (None, 1, 0, 500, 100, 0.125),  # row 7
    ],
    "operation": [
        ("grade", 3, 1, 3000, 600, 1.5),  # rows 1-3
        ("outline", 3, 2, 3000, 1000, 0.25),  # rows 4-6
        (None, 1, 0, 500, 100, 0.125),  # row 7
        ("slides", 1, 0, 100, 50, 0.0625),  # row 9
        ("summarize", 1, 1, 0, 0, 0.0),  # row 8
    ],
    "day": [
        ("2025-03-01", 4, 1, 3100, 650, 1.5625),  # rows 1, 2, 3 and 9 (01:00 at UTC+2 on 03-02)
        ("2025-03-02", 5, 3, 3500, 1100, 0.375),  # rows 4-8
    ],
    "action,model_id": [
        ("video_analysis", "gemini-2.5-flash", 2, 0, 3000, 600, 1.5),  # rows 2, 3
        ("course_structuring", "gemini-2.5-flash", 1, 0, 3000, 1000, 0.25),  # row 6
        ("text_processing", "deepseek-chat", 2, 1, 500, 100, 0.125),  # rows 7, 8
        ("presentation_analysis", "gemini-2.5-flash", 1, 0, 100, 50, 0.0625),  # row 9
        ("course_structuring", "claude-sonnet", 2, 2, 0, 0, 0.0),  # rows 4, 5
        ("video_analysis", "gemini-2.5-pro", 1, 1, 0, 0, 0.0),  # row 1
    ],
}

#: filters → (seed rows matched, tokens_in, cost_usd).
FILTERS: list[tuple[dict[str, str], set[int], int, float]] = [
    ({"action": "video_analysis"}, {1, 2, 3}, 3000, 1.5),
    ({"strategy": "quality"}, {1, 2, 4, 5, 6}, 4000, 0.75),
    ({"served_strategy": "default"}, {3, 6, 7, 9}, 5600, 1.4375),
    ({"provider": "anthropic"}, {4, 5}, 0, 0.0),
    ({"model_id": "deepseek-chat"}, {7, 8}, 500, 0.125),
    ({"status": "success"}, {2, 3, 6, 7, 9}, 6600, 1.9375),
    ({"status": "error"}, {1, 4, 5, 8}, 0, 0.0),
    ({"tenant_id": "globex"}, {4, 5, 6, 8}, 3000, 0.25),
    ({"operation": "outline"}, {4, 5, 6}, 3000, 0.25),
    ({"request_id": "req-1"}, {1, 2}, 1000, 0.5),
    ({"since": "2025-03-02T00:00:00Z"}, {4, 5, 6, 7, 8}, 3500, 0.375),
    ({"until": "2025-03-01T10:30:00Z"}, {1, 2}, 1000, 0.5),
    # since is inclusive: row 9 was written at exactly this instant.
    ({"since": "2025-03-02T01:00:00+02:00"}, {4, 5, 6, 7, 8, 9}, 3600, 0.4375),
    ({"since": "2025-03-01T11:00:00"}, {3, 4, 5, 6, 7, 8, 9}, 5600, 1.4375),  # naive = UTC
    # until is exclusive: row 5 was written at exactly 09:00:01.
    ({"since": "2025-03-01T10:00:01Z", "until": "2025-03-02T09:00:01Z"}, {2, 3, 4, 9}, 3100, 1.5625),
    ({"action": "course_structuring", "status": "error"}, {4, 5}, 0, 0.0),
    ({"action": "no_such_action"}, set(), 0, 0.0),
]


def _ids(filters: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in filters.items())


@pytest.fixture
async def seeded(session_factory: Factory) -> Factory:
    await seed(session_factory)
    return session_factory


@pytest.mark.parametrize("group_by", list(GROUPS))
async def test_every_group_key_returns_the_hand_computed_sums_in_cost_order(
    seeded: Factory, group_by: str
) -> None:
    keys = group_by.split(",")
    summary = await summarize(seeded, UsageFilters(), keys)
    got = [
        (*(g[k] for k in keys), g["calls"], g["failures"], g["tokens_in"], g["tokens_out"], g["cost_usd"])
        for g in summary.groups
    ]
    assert got == GROUPS[group_by]
    assert all(list(g) == [*keys, *FIGURES] for g in summary.groups)


async def test_totals_hold_every_figure_over_all_rows(seeded: Factory) -> None:
    totals = (await summarize(seeded, UsageFilters(), ["action"], exact=True)).totals
    assert {k: v for k, v in totals.items() if "latency" not in k} == {
        "calls": 9,
        "failures": 4,
        "error_rate": 4 / 9,
        "tokens_in": 6600,
        "tokens_out": 1750,
        "cost_usd": 1.9375,
        "fallback_rate": 0.4,  # successes: rows 2 (attempt 2), 3, 6 (attempt 3), 7, 9
    }
    # latencies 50 100 150 200 250 300 400 600: p50 halfway 200→250, p95 at 6.65 → 400 + 0.65·200
    assert totals["p50_latency_ms"] == pytest.approx(225.0)
    assert totals["p95_latency_ms"] == pytest.approx(530.0)


async def test_latency_percentiles_error_and_fallback_rates_per_action(seeded: Factory) -> None:
    groups = {
        g["action"]: g for g in (await summarize(seeded, UsageFilters(), ["action"], exact=True)).groups
    }
    figures = {
        action: (g["error_rate"], g["p50_latency_ms"], g["p95_latency_ms"], g["fallback_rate"])
        for action, g in groups.items()
    }
    assert figures == {
        "video_analysis": (pytest.approx(1 / 3), 200.0, pytest.approx(290.0), 0.5),  # 100 200 300
        "course_structuring": (pytest.approx(2 / 3), 150.0, pytest.approx(375.0), 1.0),  # 50 150 400
        "text_processing": (0.5, 600.0, 600.0, 0.0),  # row 8 has no latency
        "presentation_analysis": (0.0, 250.0, 250.0, 0.0),
    }


async def test_fallback_rate_counts_successes_after_the_first_attempt(seeded: Factory) -> None:
    groups = {
        g["tenant_id"]: g for g in (await summarize(seeded, UsageFilters(), ["tenant_id"], exact=True)).groups
    }
    assert groups["acme"]["fallback_rate"] == pytest.approx(1 / 3)  # rows 2 (attempt 2), 3, 9
    assert groups["globex"]["fallback_rate"] == 1.0  # row 6 (attempt 3) is its only success
    assert groups["acme"]["p50_latency_ms"] == pytest.approx(225.0)  # 100 200 250 300
    assert groups["acme"]["p95_latency_ms"] == pytest.approx(292.5)


async def test_a_group_without_successes_or_latencies_reports_zero_rates_and_no_percentiles(
    seeded: Factory,
) -> None:
    by_provider = {
        g["provider"]: g for g in (await summarize(seeded, UsageFilters(), ["provider"], exact=True)).groups
    }
    assert by_provider["anthropic"]["fallback_rate"] == 0.0  # rows 4, 5: failures only
    assert by_provider["anthropic"]["error_rate"] == 1.0
    assert by_provider["anthropic"]["p95_latency_ms"] == pytest.approx(145.0)  # 50, 150
    by_strategy = {
        g["strategy"]: g for g in (await summarize(seeded, UsageFilters(), ["strategy"], exact=True)).groups
    }
    assert by_strategy["budget"]["p50_latency_ms"] is None  # row 8 has no latency
    assert by_strategy["budget"]["p95_latency_ms"] is None


@pytest.mark.parametrize(("filters", "rows", "tokens_in", "cost"), FILTERS, ids=[_ids(f[0]) for f in FILTERS])
async def test_every_filter_selects_exactly_the_known_rows(
    seeded: Factory, filters: dict[str, str], rows: set[int], tokens_in: int, cost: float
) -> None:
    parsed = parse_filters(**filters)
    page = await list_calls(seeded, parsed, page_size=100)
    assert page.total == len(rows)
    assert sorted((r["request_id"], r["attempt"]) for r in page.data) == sorted(ROW[n] for n in rows)
    totals = (await summarize(seeded, parsed, [])).totals
    assert (totals["calls"], totals["tokens_in"], totals["cost_usd"]) == (len(rows), tokens_in, cost)
    assert await count_matching(seeded, parsed) == len(rows)


async def test_pages_cover_every_row_exactly_once_newest_first(seeded: Factory) -> None:
    pages = [await list_calls(seeded, UsageFilters(), page=n, page_size=4) for n in (1, 2, 3, 4)]
    assert [len(p.data) for p in pages] == [4, 4, 1, 0]
    assert {(p.total, p.total_pages) for p in pages} == {(9, 3)}
    seen = [(r["request_id"], r["attempt"]) for p in pages for r in p.data]
    assert seen == NEWEST_FIRST
    assert len({r["id"] for p in pages for r in p.data}) == 9


async def test_rows_written_at_the_same_instant_are_paged_by_id_without_overlap(
    session_factory: Factory,
) -> None:
    instant = datetime(2025, 5, 5, 5, 5, 5, tzinfo=UTC)
    records = [
        CallRecord(request_id=f"same-{i}", attempt=1, action="text_processing", strategy="default",
                   served_strategy="default", provider="deepseek", model_id="deepseek-chat", success=True,
                   source="proxy", created_at=instant, id=uuid.uuid4())
        for i in range(7)
    ]  # fmt: skip
    await insert_records(session_factory, records)
    pages = [await list_calls(session_factory, UsageFilters(), page=n, page_size=3) for n in (1, 2, 3)]
    ids = [r["id"] for p in pages for r in p.data]
    assert sorted(ids) == sorted(str(r.id) for r in records)
    assert ids == sorted(ids, key=lambda i: uuid.UUID(i), reverse=True)


async def test_a_row_carries_every_column_in_json_friendly_form(seeded: Factory) -> None:
    (row,) = (await list_calls(seeded, parse_filters(request_id="req-4"))).data
    assert list(row) == list(CALL_COLUMNS)
    assert uuid.UUID(row["id"])
    assert row["created_at"] == "2025-03-02T12:00:00+00:00"
    assert row["metadata"] == {"tags": {"seed": "req-4"}}
    assert (row["tokens_in"], row["tokens_out"], row["latency_ms"], row["cost_usd"]) == (
        500,
        100,
        600.0,
        0.125,
    )
    assert json.loads(json.dumps(row)) == row


async def test_request_attempts_come_in_attempt_order(session_factory: Factory) -> None:
    start = datetime(2025, 4, 1, tzinfo=UTC)
    records = [
        CallRecord(request_id="drill", attempt=n, action="course_structuring", strategy="quality",
                   served_strategy="quality" if n < 3 else "default", provider="anthropic", model_id=model,
                   success=n == 3, source="sdk", created_at=start + timedelta(seconds=n))
        for n, model in [(3, "gemini-2.5-flash"), (1, "claude-sonnet"), (2, "claude-sonnet")]
    ]  # fmt: skip
    await insert_records(session_factory, records)
    attempts = await request_attempts(session_factory, "drill")
    assert [(a["attempt"], a["model_id"], a["success"]) for a in attempts] == [
        (1, "claude-sonnet", False),
        (2, "claude-sonnet", False),
        (3, "gemini-2.5-flash", True),
    ]


async def test_an_unknown_request_has_no_attempts(seeded: Factory) -> None:
    assert await request_attempts(seeded, "no-such-request") == []


async def test_iter_calls_streams_every_matching_row_oldest_first_in_small_batches(seeded: Factory) -> None:
    rows = [row async for row in iter_calls(seeded, parse_filters(status="error"), batch=2)]
    assert [(r["request_id"], r["attempt"]) for r in rows] == [ROW[1], ROW[4], ROW[5], ROW[8]]
    everything = [row async for row in iter_calls(seeded, UsageFilters(), batch=2)]
    assert [(r["request_id"], r["attempt"]) for r in everything] == NEWEST_FIRST[::-1]


async def test_an_empty_table_summarizes_to_zeros(session_factory: Factory) -> None:
    summary = await summarize(session_factory, UsageFilters(), ["action", "day"])
    assert summary.groups == []
    assert summary.totals == {
        "calls": 0,
        "failures": 0,
        "error_rate": 0.0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
        "p50_latency_ms": None,
        "p95_latency_ms": None,
        "fallback_rate": 0.0,
    }
    page = await list_calls(session_factory, UsageFilters())
    assert (page.data, page.total, page.total_pages) == ([], 0, 0)


async def test_a_summary_without_group_keys_has_totals_only(seeded: Factory) -> None:
    summary = await summarize(seeded, UsageFilters(), [])
    assert summary.as_dict()["groups"] == []
    assert summary.totals["calls"] == 9


async def test_a_span_filter_counts_back_from_now(session_factory: Factory) -> None:
    now = datetime.now(UTC)
    records = [
        CallRecord(request_id=f"ago-{hours}h", attempt=1, action="text_processing", strategy="default",
                   served_strategy="default", provider="deepseek", model_id="deepseek-chat", success=True,
                   source="sdk", created_at=now - timedelta(hours=hours))
        for hours in (1, 3 * 24, 10 * 24)
    ]  # fmt: skip
    await insert_records(session_factory, records)
    counts = {
        span: await count_matching(session_factory, filters_from({"since": span}))
        for span in ("24h", "7d", "2w")
    }
    assert counts == {"24h": 1, "7d": 2, "2w": 3}


async def test_filter_values_are_bound_parameters_never_sql(seeded: Factory) -> None:
    hostile = parse_filters(action="x' OR '1'='1", tenant_id="acme'; DELETE FROM llm_calls; --")
    assert (await list_calls(seeded, hostile)).total == 0
    assert (await summarize(seeded, hostile, ["day"])).totals["calls"] == 0
    assert await count_matching(seeded, UsageFilters()) == 9


@pytest.mark.parametrize("exact", [True, False], ids=["raw rows", "aggregates"])
async def test_percentiles_equal_percentile_cont_over_every_latency_of_each_group(
    session_factory: Factory, exact: bool
) -> None:
    """Exactly from the raw rows; from the aggregates' histograms within 5 % or 2 ms (the contract)."""
    rng = random.Random(3)
    latency = lambda: rng.choice([rng.randint(1, 50) * 1.0, rng.random() * 9e3])  # noqa: E731  # ties and spread
    records = [
        CallRecord(request_id=f"lat-{i}", attempt=1, action=f"a{i % 5}", strategy="default",
                   served_strategy="default", provider="gemini", model_id="flash", success=True, source="sdk",
                   created_at=datetime(2025, 7, 1, tzinfo=UTC) + timedelta(seconds=i),
                   latency_ms=None if i % 7 == 0 else latency())
        for i in range(1, 200)
    ]  # fmt: skip
    records.append(dataclasses.replace(records[1], action="lone", latency_ms=42.5, id=uuid.uuid4()))
    await insert_records(session_factory, records)
    summary = await summarize(session_factory, UsageFilters(), ["action"], exact=exact)
    by_action: dict[str, list[float]] = {}
    for record in records:
        if record.latency_ms is not None:
            by_action.setdefault(record.action, []).append(record.latency_ms)
    every = sorted(v for values in by_action.values() for v in values)
    expected = [
        (a, percentile(sorted(v), 0.5), percentile(sorted(v), 0.95)) for a, v in sorted(by_action.items())
    ]
    got = sorted((g["action"], g["p50_latency_ms"], g["p95_latency_ms"]) for g in summary.groups)
    assert [a for a, *_ in got] == [a for a, *_ in expected]
    totals = (summary.totals["p50_latency_ms"], summary.totals["p95_latency_ms"])
    got_values = [v for _, *values in got for v in values] + list(totals)
    expected_values = [v for _, *values in expected for v in values]
    expected_values += [percentile(every, 0.5), percentile(every, 0.95)]
    if exact:
        assert got_values == pytest.approx(expected_values, rel=1e-12)
    else:
        assert all(
            abs(g - e) <= max(2.0, 0.05 * e) for g, e in zip(got_values, expected_values, strict=True)
        ), list(zip(got_values, expected_values, strict=True))


# --- rows another writer stored on SQLite in plain SQL -------------------------------------------

_RAW_INSERT = (
    "INSERT INTO llm_calls (id, request_id, attempt, created_at, action, strategy, served_strategy, "
    "provider, model_id, success, source, metadata, stream, cache_hit, tokens_in) VALUES "
    "(:id, :rid, 1, :ts, 'a', 's', 's', 'p', 'm', 1, 'sdk', '{}', 0, 0, :tokens)"
)


async def _sqlite_rows(factory: Factory, rows: list[tuple[str, str, int]]) -> None:
    """Rows (created_at text, id text, tokens_in) written by plain SQL; SQLite only (it keeps what
    plain SQL writes as it is; PostgreSQL types it)."""
    async with factory() as session, session.begin():
        for n, (ts, row_id, tokens) in enumerate(rows):
            await session.execute(
                sa.text(_RAW_INSERT), {"id": row_id, "rid": f"raw-{n}", "ts": ts, "tokens": tokens}
            )


async def test_token_sums_past_sqlite_integer_range_still_summarize(sqlite_session_factory: Factory) -> None:
    session_factory = sqlite_session_factory
    stamp = "2025-03-01 12:00:00.000000"
    await _sqlite_rows(session_factory, [(stamp, uuid.uuid4().hex, 2**62), (stamp, uuid.uuid4().hex, 2**62)])
    summary = await summarize(session_factory, UsageFilters(), ["action"])
    assert summary.totals["tokens_in"] == 2**63
    assert [g["tokens_in"] for g in summary.groups] == [2**63]


async def test_since_an_exact_instant_keeps_a_row_stored_without_fraction(
    sqlite_session_factory: Factory,
) -> None:
    session_factory = sqlite_session_factory
    await _sqlite_rows(
        session_factory,
        [("2025-03-01 12:00:00", uuid.uuid4().hex, 1), ("2025-03-01 11:59:59.999999", uuid.uuid4().hex, 1)],
    )
    assert await count_matching(session_factory, parse_filters(since="2025-03-01T12:00:00Z")) == 1
    assert await count_matching(session_factory, parse_filters(until="2025-03-01T12:00:00Z")) == 1
