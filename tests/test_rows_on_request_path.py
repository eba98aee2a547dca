"""Answered means recorded, in the facade: every row of a request is handed to the writer before
`complete()` returns or raises, not later by LiteLLM's background logging worker.

The writer here only collects what `submit()` receives; the assertions run right after the call,
with no await in between, so LiteLLM's worker has had no chance to deliver anything. Leaving the
router then drains that worker: no second row may follow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from course_llm import AllModelsFailedError
from course_llm.recording.records import CallRecord
from course_llm.recording.writer import RecordWriter
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry
from tests.providers import TOKENS_IN, TOKENS_OUT, ProviderMock


class Submitted:
    """Stands in for RecordWriter: keeps every row `submit()` was given."""

    def __init__(self) -> None:
        self.rows: list[CallRecord] = []

    def submit(self, record: CallRecord) -> None:
        self.rows.append(record)

    def start(self) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def of(self, request_id: str) -> list[tuple[Any, ...]]:
        return [
            (r.attempt, r.model_id, r.success, r.status_code, r.tokens_in, r.tokens_out)
            for r in self.rows
            if r.request_id == request_id
        ]


@pytest.fixture
def submitted() -> Submitted:
    return Submitted()


@pytest.fixture
async def router(registry: Registry, submitted: Submitted) -> AsyncIterator[ModelRouter]:
    async with ModelRouter(registry, writer=cast(RecordWriter, submitted)) as router:
        yield router


async def test_every_row_is_submitted_before_complete_returns(
    router: ModelRouter, submitted: Submitted, providers: ProviderMock
) -> None:
    providers.script("deepseek-chat", 500)  # text_processing/default: one retry, then an answer
    response = await router.complete("text_processing", "Summarise photosynthesis.")
    on_return = submitted.of(response.request_id)  # no await since complete(): nothing was flushed
    assert on_return == [
        (1, "deepseek-chat", False, 500, None, None),
        (2, "deepseek-chat", True, None, TOKENS_IN, TOKENS_OUT),
    ]
    assert response.content == "answer from deepseek-chat"  # the hook left the response alone
    success = submitted.rows[-1]
    assert success.cost_usd == pytest.approx(response.cost_usd)
    assert (success.action, success.strategy, success.served_strategy, success.provider) == (
        "text_processing",
        "default",
        "default",
        "deepseek",
    )
    await router.aclose()  # LiteLLM's worker delivers its late success event now
    assert submitted.of(response.request_id) == on_return  # and it added no second row


async def test_a_fallback_across_strategies_is_fully_submitted_on_return(
    router: ModelRouter, submitted: Submitted, providers: ProviderMock
) -> None:
    providers.always("claude-sonnet-4-5", 401)
    providers.always("gemini-2.5-pro", 503)
    response = await router.complete("course_structuring", "outline", strategy="quality")
    on_return = [(r.attempt, r.model_id, r.served_strategy, r.success) for r in submitted.rows]
    assert on_return == [
        (1, "claude-sonnet", "quality", False),
        (2, "gemini-2.5-pro", "quality", False),
        (3, "gemini-2.5-pro", "quality", False),
        (4, "gemini-2.5-flash", "default", True),
    ]
    assert {r.request_id for r in submitted.rows} == {response.request_id}
    await router.aclose()
    assert len(submitted.rows) == 4


async def test_every_failed_attempt_is_submitted_before_complete_raises(
    router: ModelRouter, submitted: Submitted, providers: ProviderMock
) -> None:
    providers.always("gemini-2.5-flash", 503)
    providers.always("gemini-2.5-pro", 401)
    with pytest.raises(AllModelsFailedError) as caught:
        await router.complete("video_analysis", "x")
    on_raise = submitted.of(caught.value.request_id)
    assert on_raise == [
        (1, "gemini-2.5-flash", False, 503, None, None),
        (2, "gemini-2.5-flash", False, 503, None, None),
        (3, "gemini-2.5-pro", False, 401, None, None),
    ]
    await router.aclose()
    assert submitted.of(caught.value.request_id) == on_raise
