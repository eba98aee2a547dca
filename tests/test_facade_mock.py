"""COURSE_LLM_MOCK=1: the facade answers offline from the mock of `serve --mock`, rows and all.

Every test here runs with inet sockets refused and respx catching any httpx request, so an
attempt that reached for a provider fails the test. The database is an SQLite file (no socket).
"""

from __future__ import annotations

import enum
import logging
import socket
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import respx
from pydantic import BaseModel

import course_llm
from course_llm import AllModelsFailedError, Settings, create_model_router
from course_llm.db import create_session_factory, dispose_session_factory, fetch_request
from course_llm.db.migrate import upgrade_database
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse every IPv4/IPv6 connection, and fail on any httpx request respx does not mock."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(name: str, real: Any) -> Any:
        def connect(self: socket.socket, address: Any) -> Any:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise AssertionError(f"mock mode opened a network connection ({name} {address!r})")
            return real(self, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guard("connect", real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard("connect_ex", real_connect_ex))
    with respx.mock(assert_all_mocked=True, assert_all_called=False):
        yield


@pytest.fixture(scope="module")
def mock_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('mock') / 'calls.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
async def router(mock_database_url: str, tmp_path: Path) -> AsyncIterator[ModelRouter]:
    settings = Settings(database_url=mock_database_url, mock=True, spool_path=tmp_path / "journal")
    factory = create_session_factory(mock_database_url)
    try:
        async with create_model_router(settings, factory) as r:
            yield r
    finally:
        await dispose_session_factory(factory)


async def rows_of(router: ModelRouter, url: str, request_id: str) -> list[Any]:
    await router.flush()
    factory = create_session_factory(url)
    try:
        return await fetch_request(factory, request_id)
    finally:
        await dispose_session_factory(factory)


def test_the_mock_setting_is_read_from_course_llm_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().mock is False
    monkeypatch.setenv("COURSE_LLM_MOCK", "1")
    assert Settings().mock is True


async def test_a_mock_call_answers_offline_and_is_recorded_with_registry_provider_and_price(
    router: ModelRouter, mock_database_url: str, registry: Registry
) -> None:
    response = await router.complete("text_processing", "Summarise photosynthesis.")

    assert response.model_id == "deepseek-chat"
    assert (
        response.content.startswith("[mock deepseek-chat]")
        and "Summarise photosynthesis." in response.content
    )
    [row] = await rows_of(router, mock_database_url, response.request_id)
    model = registry.models["deepseek-chat"]
    assert (row.provider, row.model_id, row.success, row.source) == ("deepseek", "deepseek-chat", True, "sdk")
    assert row.tokens_in and row.tokens_out
    assert row.cost_usd == pytest.approx(model.estimate_cost(row.tokens_in, row.tokens_out))


async def test_a_mock_fail_directive_makes_the_chain_fall_back_and_each_attempt_is_a_row(
    router: ModelRouter, mock_database_url: str
) -> None:
    response = await router.complete("text_processing", "outline [mock-fail deepseek-chat=503]")

    assert response.model_id == "gemini-2.5-flash"
    rows = await rows_of(router, mock_database_url, response.request_id)
    assert [(r.attempt, r.model_id, r.success, r.status_code) for r in rows] == [
        (1, "deepseek-chat", False, 503),
        (2, "deepseek-chat", False, 503),  # transient: retried once (max_attempts 2)
        (3, "gemini-2.5-flash", True, None),
    ]


async def test_a_permanent_mock_failure_from_the_environment_is_not_retried(
    router: ModelRouter, mock_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_LLM_MOCK_FAIL", "deepseek-chat=401")

    response = await router.complete("text_processing", "outline")

    rows = await rows_of(router, mock_database_url, response.request_id)
    assert [(r.model_id, r.status_code) for r in rows] == [("deepseek-chat", 401), ("gemini-2.5-flash", None)]


async def test_when_every_mock_model_fails_the_error_lists_every_attempt(router: ModelRouter) -> None:
    with pytest.raises(AllModelsFailedError) as caught:
        await router.complete("text_processing", "[mock-fail deepseek-chat=400 gemini-2.5-flash=404]")

    assert [(a.model_id, a.status_code) for a in caught.value.attempts] == [
        ("deepseek-chat", 400),
        ("gemini-2.5-flash", 404),
    ]
    assert not getattr(caught.value, "__notes__", [])  # no advice about API keys: none are needed


class Level(enum.StrEnum):
    INTRO = "intro"
    ADVANCED = "advanced"


class Exercise(BaseModel):
    prompt: str
    points: int


class Lesson(BaseModel):
    title: str
    level: Level
    minutes: float
    exercises: list[Exercise]
    summary: str | None = None


class Outline(BaseModel):
    course: str
    lessons: list[Lesson]
    tags: set[str]
    prerequisite: Outline | None = None


async def test_a_structured_mock_answer_validates_against_a_nested_pydantic_model(
    router: ModelRouter, mock_database_url: str
) -> None:
    # Made-up data differs every time: several answers, each one must fit.
    for _ in range(5):
        response = await router.complete_structured("course_structuring", "Outline biology", Outline)

        assert isinstance(response.parsed, Outline)
        assert all(isinstance(lesson.level, Level) for lesson in response.parsed.lessons)
        assert Outline.model_validate_json(response.content) == response.parsed
    [row] = await rows_of(router, mock_database_url, response.request_id)
    assert row.success and row.model_id == "gemini-2.5-flash"


async def test_course_llm_complete_answers_offline_with_course_llm_mock_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'one-line.db'}"
    monkeypatch.setenv("COURSE_LLM_MOCK", "1")
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", url)
    for name in ("GEMINI_API_KEY", "DEEPSEEK_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name)

    response = await course_llm.complete("course_structuring", "Outline chemistry", strategy="quality")

    assert response.model_id == "claude-sonnet" and response.provider == "anthropic"
    factory = create_session_factory(url)
    try:
        [row] = await fetch_request(factory, response.request_id)  # complete() flushed before returning
    finally:
        await dispose_session_factory(factory)
    assert (row.strategy, row.model_id, row.success) == ("quality", "claude-sonnet", True)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_without_mock_or_keys_the_error_is_short_names_the_missing_keys_and_keeps_attempts(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    router_log = logging.getLogger("LiteLLM Router")
    captured = _Records()
    router_log.addHandler(captured)
    try:
        async with ModelRouter(registry, max_attempts=1) as router:
            with pytest.raises(AllModelsFailedError) as caught:
                await router.complete("video_analysis", "frames")  # gemini models only
    finally:
        router_log.removeHandler(captured)

    error = caught.value
    assert [a.model_id for a in error.attempts] == ["gemini-2.5-flash", "gemini-2.5-pro"]
    assert error.__cause__ is None and error.__suppress_context__  # LiteLLM's chain is not printed ...
    assert error.__context__ is not None  # ... but stays reachable
    assert any("GEMINI_API_KEY" in note and "COURSE_LLM_MOCK=1" in note for note in error.__notes__)
    printed = "".join(traceback.format_exception(error))
    assert len(printed.splitlines()) < 25, printed
    assert not [r for r in captured.records if r.levelno >= logging.ERROR], [
        r.getMessage()[:200] for r in captured.records
    ]
