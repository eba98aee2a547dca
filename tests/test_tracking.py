"""track_llm_call: a call made outside LiteLLM becomes a `source="direct"` row."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from course_llm import call_scope, flush_tracked_calls, track_llm_call
from course_llm.db import LLMCall, create_session_factory, dispose_session_factory


async def rows(session_factory: Any) -> list[LLMCall]:
    await flush_tracked_calls(session_factory)  # leaving the block does not wait for the database
    async with session_factory() as session:
        return list((await session.execute(sa.select(LLMCall))).scalars())


class RateLimited(Exception):
    status_code = 429


async def test_a_direct_call_is_recorded_with_registry_pricing(session_factory: Any) -> None:
    openai_like = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=2000, completion_tokens=500))
    with call_scope(tenant_id="acme", operation="embed", tags={"batch": 3}):
        async with track_llm_call(
            provider="openai",
            model_id="gpt-4o-mini",
            action="text_processing",
            session_factory=session_factory,
        ) as call:
            call.record_usage(openai_like)
    [row] = await rows(session_factory)
    assert (row.source, row.provider, row.model_id, row.action, row.attempt) == (
        "direct",
        "openai",
        "gpt-4o-mini",
        "text_processing",
        1,
    )
    assert (row.tokens_in, row.tokens_out, row.success) == (2000, 500, True)
    assert row.cost_usd == pytest.approx(2 * 0.00015 + 0.5 * 0.0006)
    assert (row.tenant_id, row.operation, row.metadata_) == ("acme", "embed", {"tags": {"batch": 3}})
    assert row.request_id == call.request_id


async def test_anthropic_usage_and_an_explicit_cost_are_kept(session_factory: Any) -> None:
    anthropic_like = {"usage": {"input_tokens": 10, "output_tokens": 20}}
    async with track_llm_call(
        provider="anthropic",
        model_id="claude-opus-x",
        action="course_structuring",
        session_factory=session_factory,
    ) as call:
        call.record_usage(anthropic_like)
        call.cost_usd = 1.25
    [row] = await rows(session_factory)
    assert (row.tokens_in, row.tokens_out, row.cost_usd) == (10, 20, 1.25)


async def test_an_unknown_model_without_a_cost_is_stored_without_one(session_factory: Any) -> None:
    async with track_llm_call(
        provider="openai", model_id="not-in-registry", action="x", session_factory=session_factory
    ) as call:
        call.tokens_in, call.tokens_out = 5, 5
    [row] = await rows(session_factory)
    assert row.cost_usd is None


async def test_an_exception_is_recorded_as_a_failure_and_re_raised(session_factory: Any) -> None:
    with pytest.raises(RateLimited):
        async with track_llm_call(
            provider="openai",
            model_id="gpt-4o-mini",
            action="text_processing",
            session_factory=session_factory,
        ):
            raise RateLimited("slow down, key sk-abcdefghijklmnopqrst")
    [row] = await rows(session_factory)
    assert (row.success, row.status_code, row.error_class) == (False, 429, "RateLimited")
    assert "sk-abcdefghijklmnopqrst" not in (row.error_message or "")
    assert row.cost_usd is None


async def test_without_a_session_factory_it_writes_to_the_settings_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'direct.db'}"
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", url)
    monkeypatch.setenv("COURSE_LLM_SPOOL_PATH", str(tmp_path / "spool.jsonl"))
    async with track_llm_call(provider="openai", model_id="gpt-4o-mini", action="text_processing") as call:
        call.tokens_in = 1
    await flush_tracked_calls()
    factory = create_session_factory(url)
    try:
        [row] = await rows(factory)
        assert row.source == "direct"
    finally:
        await dispose_session_factory(factory)


async def test_a_database_that_is_down_neither_stops_nor_delays_the_tracked_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    spool = tmp_path / "spool.jsonl"
    monkeypatch.setenv("COURSE_LLM_SPOOL_PATH", str(spool))
    ran = False
    async with track_llm_call(provider="openai", model_id="gpt-4o-mini", action="text_processing") as call:
        ran = True
        call.tokens_in = 3
    assert ran  # the caller's own SDK call happened
    from course_llm.recording.tracking import _default_session_factory, _writer_for

    writer = _writer_for(_default_session_factory())
    assert writer.pending + int(writer.busy) == 1  # not written yet: the block did not wait for it
    await flush_tracked_calls()
    assert [r.request_id for r in writer.spooled()] == [call.request_id]
