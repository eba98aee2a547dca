"""Every attempt becomes one llm_calls row, in SQLite and PostgreSQL, through the facade.

Provider HTTP is mocked with respx (tests/providers.py); the rows land in a real, migrated
database (the `session_factory` fixture, parametrized over both).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from course_llm import AllModelsFailedError, call_scope
from course_llm.db import LLMCall, count_calls, create_session_factory, dispose_session_factory, fetch_request
from course_llm.recording.writer import RecordWriter
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry
from tests.providers import TOKENS_IN, TOKENS_OUT, ProviderMock


async def all_rows(session_factory: Any) -> list[LLMCall]:
    async with session_factory() as session:
        result = await session.execute(sa.select(LLMCall).order_by(LLMCall.request_id, LLMCall.attempt))
        return list(result.scalars())


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool.jsonl"


@pytest.fixture
async def logged_router(registry: Registry, session_factory: Any, spool: Path) -> Any:
    async with ModelRouter(registry, writer=RecordWriter(session_factory, spool_path=spool)) as router:
        yield router


async def test_fallback_chain_leaves_one_row_per_attempt_in_order(
    logged_router: ModelRouter, providers: ProviderMock, session_factory: Any
) -> None:
    providers.always("claude-sonnet-4-5", 500)  # first model of quality: two attempts
    providers.always("gemini-2.5-pro", 429)  # second model of quality: two attempts
    response = await logged_router.complete("course_structuring", "outline", strategy="quality")
    await logged_router.flush()

    rows = await fetch_request(session_factory, response.request_id)
    assert [(r.attempt, r.model_id, r.served_strategy, r.status_code, r.success) for r in rows] == [
        (1, "claude-sonnet", "quality", 500, False),
        (2, "claude-sonnet", "quality", 500, False),
        (3, "gemini-2.5-pro", "quality", 429, False),
        (4, "gemini-2.5-pro", "quality", 429, False),
        (5, "gemini-2.5-flash", "default", None, True),
    ]
    assert {(r.action, r.strategy, r.request_id, r.source) for r in rows} == {
        ("course_structuring", "quality", response.request_id, "sdk")
    }
    assert [r.error_class for r in rows[:4]] == ["InternalServerError"] * 2 + ["RateLimitError"] * 2
    assert [r.provider for r in rows] == ["anthropic", "anthropic", "gemini", "gemini", "gemini"]
    failure, success = rows[0], rows[-1]
    assert failure.cost_usd is None and failure.tokens_in is None
    assert "upstream says 500" in (failure.error_message or "")
    assert (success.tokens_in, success.tokens_out) == (TOKENS_IN, TOKENS_OUT)
    assert success.cost_usd == pytest.approx(response.cost_usd)
    assert success.cost_usd == pytest.approx((TOKENS_IN * 0.0003 + TOKENS_OUT * 0.0025) / 1000)
    assert all(r.latency_ms is not None and r.latency_ms >= 0 for r in rows)
    assert [r.created_at for r in rows] == sorted(r.created_at for r in rows)
    assert await count_calls(session_factory) == 5


async def test_all_failed_request_is_fully_recorded(
    logged_router: ModelRouter, providers: ProviderMock, session_factory: Any
) -> None:
    providers.always("gemini-2.5-flash", 503)
    providers.always("gemini-2.5-pro", 401)
    with pytest.raises(AllModelsFailedError) as caught:
        await logged_router.complete("video_analysis", "x")
    await logged_router.flush()
    rows = await fetch_request(session_factory, caught.value.request_id)
    assert [(r.attempt, r.model_id, r.status_code) for r in rows] == [
        (1, "gemini-2.5-flash", 503),
        (2, "gemini-2.5-flash", 503),
        (3, "gemini-2.5-pro", 401),
    ]
    assert not any(r.success for r in rows)
    assert len(caught.value.attempts) == len(rows)


async def test_call_scope_attribution_lands_on_every_row(
    logged_router: ModelRouter, providers: ProviderMock, session_factory: Any
) -> None:
    providers.script("deepseek-chat", 500)
    with call_scope(tenant_id="acme", operation="grade_essay", end_user="u-7", tags={"course": "bio101"}):
        response = await logged_router.complete("text_processing", "x", metadata={"essay_id": 42})
    await logged_router.flush()
    rows = await fetch_request(session_factory, response.request_id)
    assert len(rows) == 2
    # A tags mapping must not break LiteLLM's own payload (it once dropped the tokens).
    assert (rows[1].tokens_in, rows[1].tokens_out) == (TOKENS_IN, TOKENS_OUT)
    for row in rows:
        assert (row.tenant_id, row.operation, row.end_user) == ("acme", "grade_essay", "u-7")
        assert row.metadata_ == {"essay_id": 42, "tags": {"course": "bio101"}}


async def test_concurrent_calls_in_different_scopes_do_not_mix(
    logged_router: ModelRouter, providers: ProviderMock, session_factory: Any
) -> None:
    providers.script("deepseek-chat", *[500] * 10)

    async def call(i: int) -> str:
        with call_scope(tenant_id=f"tenant-{i}", operation=f"op-{i}"):
            await asyncio.sleep(0)
            return (await logged_router.complete("text_processing", f"prompt {i}")).request_id

    request_ids = await asyncio.gather(*(call(i) for i in range(20)))
    await logged_router.flush()
    rows = await all_rows(session_factory)
    assert {r.request_id for r in rows} == set(request_ids)
    for i, request_id in enumerate(request_ids):
        mine = [r for r in rows if r.request_id == request_id]
        assert {(r.tenant_id, r.operation) for r in mine} == {(f"tenant-{i}", f"op-{i}")}
        assert [r.attempt for r in mine] == list(range(1, len(mine) + 1))
        assert mine[-1].success


async def test_leaving_the_router_flushes_every_pending_row(
    registry: Registry, providers: ProviderMock, session_factory: Any, spool: Path
) -> None:
    async with ModelRouter(registry, writer=RecordWriter(session_factory, spool_path=spool)) as router:
        for _ in range(25):
            await router.complete("text_processing", "x")
    assert await count_calls(session_factory) == 25


async def test_two_routers_open_at_once_each_log_their_own_rows(
    registry: Registry, providers: ProviderMock, session_factory: Any, spool: Path, tmp_path: Path
) -> None:
    first = ModelRouter(registry, writer=RecordWriter(session_factory, spool_path=spool))
    second = ModelRouter(registry, writer=RecordWriter(session_factory, spool_path=tmp_path / "other.jsonl"))
    ids = [
        (await first.complete("text_processing", "a")).request_id,
        (await second.complete("video_analysis", "b")).request_id,
    ]
    await first.aclose()
    await second.aclose()
    rows = await all_rows(session_factory)
    assert sorted(r.request_id for r in rows) == sorted(ids)
    assert {r.source for r in rows} == {"sdk"}


async def test_without_a_session_factory_nothing_is_logged(
    registry: Registry, providers: ProviderMock, session_factory: Any
) -> None:
    async with ModelRouter(registry) as router:
        await router.complete("text_processing", "x")
    assert await count_calls(session_factory) == 0


async def test_a_writer_that_fails_never_breaks_the_call(
    registry: Registry, providers: ProviderMock, spool: Path, tmp_path: Path
) -> None:
    # A database without the llm_calls table: every insert fails.
    factory = create_session_factory(f"sqlite+aiosqlite:///{tmp_path / 'unmigrated.db'}")
    try:
        writer = RecordWriter(factory, spool_path=spool)
        async with ModelRouter(registry, writer=writer) as router:
            response = await router.complete("text_processing", "x")
        assert response.content == "answer from deepseek-chat"
        # Kept on disk, to be replayed once the schema is there.
        assert [r.request_id for r in writer.spooled()] == [response.request_id]
    finally:
        await dispose_session_factory(factory)


async def test_the_one_line_complete_answers_and_logs_to_the_settings_database(
    providers: ProviderMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import course_llm

    url = f"sqlite+aiosqlite:///{tmp_path / 'one-line.db'}"
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", url)
    monkeypatch.setenv("COURSE_LLM_SPOOL_PATH", str(tmp_path / "spool.jsonl"))
    response = await course_llm.complete("text_processing", "hello", strategy="budget")
    assert (response.model_id, response.served_strategy) == ("deepseek-chat", "budget")
    factory = create_session_factory(url)
    try:
        [row] = await fetch_request(factory, response.request_id)  # flushed before returning
        assert (row.success, row.source, row.strategy) == (True, "sdk", "budget")
    finally:
        await dispose_session_factory(factory)
