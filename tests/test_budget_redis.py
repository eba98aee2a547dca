"""Budgets shared through Redis (`COURSE_LLM_REDIS_URL`, course_llm/control/redis_spend.py).

Each process adds its rows' costs to one Redis counter per budget window and reads them all back
every second; a missing counter is seeded from the rows (the database) once. Shown with two books
on one Redis, and with two facade routers whose databases differ: the second can only know what
the first spent through Redis. Redis database 15 (COURSE_LLM_TEST_REDIS_URL), emptied per test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import redis

from course_llm import BudgetExceededError, Settings, create_model_router
from course_llm.control.budgets import SpendWindow
from course_llm.control.controls import Controls
from course_llm.control.redis_spend import RedisSpend
from course_llm.control.sections import BudgetConfig
from course_llm.db import create_session_factory, dispose_session_factory, upgrade_database_async
from course_llm.recording.records import CallRecord
from course_llm.routing.registry import parse_registry
from tests.test_budget_routing import ACTION, CALL, budgeted
from tests.test_response_cache import REDIS_URL, redis_or_skip
from tests.test_routing_stage2 import ScriptedUpstream

BUDGETS = {
    "daily": BudgetConfig.model_validate({"match": {"action": ACTION}, "period": "day", "limit_usd": 1.0})
}


class Seed:
    """The database's spend, as a fake: what it says, and how often it was asked."""

    def __init__(self, spend: float = 0.0) -> None:
        self.spend, self.asked = spend, 0

    async def __call__(self, windows: Sequence[SpendWindow], row_ids: Sequence[UUID], /) -> Any:
        self.asked += 1
        return [self.spend] * len(windows), set()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as scripted:
        yield scripted


@pytest.fixture
def up(upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch) -> ScriptedUpstream:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "fake-key")
    upstream.reset()
    return upstream


@pytest.fixture
async def server() -> AsyncIterator[redis.Redis]:
    client = redis_or_skip()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def row(cost: float) -> CallRecord:
    return CallRecord("r", 1, ACTION, "default", "default", "openai", "first", True, "sdk", cost_usd=cost)


async def settle(source: RedisSpend) -> None:
    for _ in range(100):
        if not source._tasks:
            return
        await asyncio.sleep(0.01)


async def test_a_cost_one_process_records_is_read_by_another(server: redis.Redis) -> None:
    first, second = RedisSpend(REDIS_URL, BUDGETS, Seed()), RedisSpend(REDIS_URL, BUDGETS, Seed())
    one = Controls(BUDGETS, None, lambda a, s: True, first)
    two = Controls(BUDGETS, None, lambda a, s: True, second)
    try:
        assert one.book is not None and two.book is not None
        await one.book.refresh()  # seeds the day's counter from the (empty) database
        one.observe(row(0.25))
        one.observe(row(0.5))
        await settle(first)
        assert await two.book.refresh()
        assert [s.spent_usd for s in two.budget_statuses()] == [pytest.approx(0.75)]
        assert await one.book.refresh()  # the pushed rows leave its pending spend: not twice
        assert [s.spent_usd for s in one.budget_statuses()] == [pytest.approx(0.75)]
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_missing_counter_is_seeded_once_from_the_rows(server: redis.Redis) -> None:
    early, late = Seed(spend=5.0), Seed(spend=7.0)
    window = SpendWindow(
        datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), ACTION, None, None
    )
    first, second = RedisSpend(REDIS_URL, BUDGETS, early), RedisSpend(REDIS_URL, BUDGETS, late)
    try:
        assert (await first([window], []))[0] == [5.0]
        assert (await second([window], []))[0] == [5.0]  # seeded already: Redis keeps the first
        assert (early.asked, late.asked) == (1, 0)
        assert server.ttl(first.key(window)) > 0  # it expires a day after its window
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_cost_recorded_before_its_counter_exists_is_pushed_after_the_seed(
    server: redis.Redis,
) -> None:
    source = RedisSpend(REDIS_URL, BUDGETS, Seed(spend=1.0 / 8))
    controls = Controls(BUDGETS, None, lambda a, s: True, source)
    try:
        assert controls.book is not None
        controls.observe(row(0.25))  # no counter yet: the push waits, the book counts it
        await settle(source)
        assert server.keys("*") == []
        assert await controls.book.refresh()  # seeds 0.125 (the rows), then pushes the 0.25
        assert [s.spent_usd for s in controls.budget_statuses()] == [pytest.approx(0.375)]
        assert await controls.book.refresh()  # and only once
        assert [s.spent_usd for s in controls.budget_statuses()] == [pytest.approx(0.375)]
        (key,) = server.keys("*")
        assert float(server.get(key) or 0) == pytest.approx(0.375)
    finally:
        await controls.aclose()


async def test_a_cost_whose_push_failed_is_pushed_when_redis_is_back(server: redis.Redis) -> None:
    import redis.asyncio

    live = RedisSpend(REDIS_URL, BUDGETS, Seed())
    await live([next(iter(live._windows_of(ACTION, None, None, datetime.now(UTC))))], [])  # seeded: 0
    away = RedisSpend("redis://127.0.0.1:1/0", BUDGETS, Seed())
    controls = Controls(BUDGETS, None, lambda a, s: True, away)
    try:
        assert controls.book is not None
        controls.observe(row(0.5))
        await settle(away)
        assert away.push_failures == 1
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        await away._redis.aclose()
        away._redis, away._add = client, client.register_script(_script())
        assert await controls.book.refresh()
        assert [s.spent_usd for s in controls.budget_statuses()] == [pytest.approx(0.5)]
        assert float(server.get(server.keys("*")[0]) or 0) == pytest.approx(0.5)
    finally:
        await controls.aclose()
        await live.aclose()


def _script() -> str:
    from course_llm.control import redis_spend

    return redis_spend._ADD_IF_SEEDED


async def test_two_routers_on_different_databases_share_a_budget_through_redis(
    server: redis.Redis, up: ScriptedUpstream, tmp_path: Path
) -> None:
    registry = parse_registry(budgeted(up.base_url))
    urls = [f"sqlite+aiosqlite:///{tmp_path / name}" for name in ("one.db", "two.db")]
    factories = []
    for url in urls:
        await upgrade_database_async(url)
        factories.append(create_session_factory(url))
    try:
        settings = [
            Settings(database_url=url, redis_url=REDIS_URL, spool_path=tmp_path / f"journal-{i}")
            for i, url in enumerate(urls)
        ]
        async with create_model_router(settings[0], factories[0], registry=registry) as spender:
            for _ in range(3):
                await spender.complete(ACTION, "x")
            await spender.flush()
            source = spender.controls._source
            assert isinstance(source, RedisSpend)
            await settle(source)
        async with create_model_router(settings[1], factories[1], registry=registry) as second:
            up.reset()
            with pytest.raises(BudgetExceededError) as caught:
                await second.complete(ACTION, "x")
        assert caught.value.spent_usd == pytest.approx(3 * CALL)
        assert up.models() == []
    finally:
        for factory in factories:
            await dispose_session_factory(factory)


@pytest.mark.e2e
async def test_serve_keeps_its_budget_counters_in_redis(
    server: redis.Redis, upstream: ScriptedUpstream, up: ScriptedUpstream, tmp_path: Path
) -> None:
    import openai
    import yaml

    from tests.proxy_process import ProxyProcess, free_port, serve_argv
    from tests.test_budget_routing import _ask
    from tests.test_proxy_e2e import proxy_env

    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump(budgeted(upstream.base_url)))
    env = proxy_env(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}", tmp_path) | {
        "COURSE_LLM_REDIS_URL": REDIS_URL
    }
    port = free_port()
    process = ProxyProcess(
        serve_argv("--registry", str(registry), "--port", str(port)), env, port, tmp_path / "log"
    )
    process.start()
    try:
        for _ in range(3):
            await _ask(process)
        await asyncio.sleep(0.3)  # the last push, then a refresh
        up.reset()
        with pytest.raises(openai.RateLimitError):
            await _ask(process)
        counters = list(server.keys("course_llm:budget:*"))
        assert len(counters) == 1 and float(server.get(counters[0]) or 0) == pytest.approx(3 * CALL)
    finally:
        process.stop()
    assert up.models() == []
