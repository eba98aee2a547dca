"""Random llm_calls rows and the check that a summary from the aggregates equals the raw one.

Shared by tests/test_aggregates.py: `assert_aggregates_equal_raw` runs one summary twice, from
the aggregates (`summarize`) and from the raw rows (`summarize(..., exact=True)`). Counts, tokens
and rates must be equal, cost equal to float rounding (or no value on both), p50/p95 within 5 %
or 2 ms (docs/architecture.md, "Usage aggregates").
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db.usage import summarize
from course_llm.recording.records import CallRecord
from course_llm.reporting.usage import UsageFilters

Factory = async_sessionmaker[AsyncSession]
START = datetime(2026, 3, 1, tzinfo=UTC)
GROUPINGS: list[list[str]] = [
    [],
    ["action"],
    ["action", "model_id"],
    ["tenant_id", "operation"],
    ["day"],
    ["hour", "provider"],
    ["error_class"],
    ["served_strategy", "strategy"],
]


def random_records(rng: random.Random, count: int, days: float = 3.0) -> list[CallRecord]:
    records = []
    for index in range(count):
        success = rng.random() > 0.25
        latency = rng.choice([None, rng.uniform(0, 40), rng.uniform(40, 20_000), rng.lognormvariate(7, 1)])
        records.append(
            CallRecord(
                request_id=f"agg-{index // 2}",
                attempt=rng.randint(1, 3),
                action=rng.choice(["video_analysis", "course_structuring", "text_processing"]),
                strategy=rng.choice(["default", "quality"]),
                served_strategy=rng.choice(["default", "quality", "budget"]),
                provider=rng.choice(["gemini", "anthropic"]),
                model_id=rng.choice(["flash", "pro", "sonnet"]),
                success=success,
                source="proxy",
                created_at=START + timedelta(seconds=rng.uniform(0, days * 86400)),
                tokens_in=rng.choice([None, rng.randint(0, 9000)]),
                tokens_out=rng.choice([None, rng.randint(0, 900)]),
                latency_ms=latency,
                cost_usd=rng.choice([None, rng.random() / 100]),
                error_class=None if success else rng.choice(["RateLimitError", "Timeout"]),
                tenant_id=rng.choice([None, "acme", "globex"]),
                operation=rng.choice([None, "ingest"]),
            )
        )
    return records


def random_filters(rng: random.Random, days: float = 3.0) -> UsageFilters:
    def moment() -> datetime | None:
        return rng.choice([None, START + timedelta(minutes=rng.randint(-120, int(days * 1440) + 120))])

    since, until = moment(), moment()
    if since is not None and until is not None and since > until:
        since, until = until, since
    return UsageFilters(
        since=since,
        until=until,
        action=rng.choice([None, None, "course_structuring"]),
        tenant_id=rng.choice([None, None, "acme"]),
        status=rng.choice([None, None, "error", "success"]),
        model_id=rng.choice([None, None, "pro"]),
    )


def _close(got: float | None, exact: float | None) -> bool:
    if got is None or exact is None:
        return got is None and exact is None
    return abs(got - exact) <= max(2.0, 0.05 * abs(exact))


def assert_same_figures(got: dict[str, Any], exact: dict[str, Any], where: str) -> None:
    for name in ("calls", "failures", "tokens_in", "tokens_out", "error_rate", "fallback_rate"):
        assert got[name] == pytest.approx(exact[name], rel=1e-12), (where, name)
    if exact["cost_usd"] is None:  # a NaN or ±Infinity cost: no value on either path
        assert got["cost_usd"] is None, where
    else:
        assert got["cost_usd"] == pytest.approx(exact["cost_usd"], rel=1e-9, abs=1e-12), where
    for name in ("p50_latency_ms", "p95_latency_ms"):
        assert _close(got[name], exact[name]), (where, name, got[name], exact[name])


async def assert_aggregates_equal_raw(factory: Factory, filters: UsageFilters, group_by: list[str]) -> None:
    got = await summarize(factory, filters, group_by)
    exact = await summarize(factory, filters, group_by, exact=True)
    where = f"{filters} by {group_by}"

    def keyed(groups: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {tuple(group[key] for key in group_by): group for group in groups}

    got_groups, exact_groups = keyed(got.groups), keyed(exact.groups)
    assert set(got_groups) == set(exact_groups), where
    for key, group in got_groups.items():
        assert_same_figures(group, exact_groups[key], f"{where}, group {key}")
    assert_same_figures(got.totals, exact.totals, f"{where}, totals")
