"""The proxy's stream recording (course_llm/proxy/streams.py) without a proxy: how a stream ended,
what it counted, and which attempt of a streamed request still owes its row.

The streams are LiteLLM's own chunk objects behind a stand-in for the Router's stream wrapper
(its `chunks` list is what the upstream sent); tests/test_streams_e2e.py runs the real thing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from course_llm._litellm import load_litellm
from course_llm.proxy.streams import StreamAttempts, StreamWatch, recorded_stream
from course_llm.recording.payload import REQUEST_ID_KEY
from course_llm.recording.records import CallRecord
from course_llm.recording.rows import StreamEnd

load_litellm()
from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices, Usage  # noqa: E402

MODEL_INFO = {
    "id": "text_processing/budget/deepseek-chat",
    "course_llm_model_id": "deepseek-chat",
    "course_llm_provider": "deepseek",
    "course_llm_cost_per_1k_input": 0.00028,
    "course_llm_cost_per_1k_output": 0.00042,
}
STARTED = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


def piece(text: str | None = None, finish: str | None = None) -> ModelResponseStream:
    choice = StreamingChoices(index=0, delta=Delta(content=text, role="assistant"), finish_reason=finish)
    return ModelResponseStream(choices=[choice])


def usage_chunk(prompt: int, completion: int) -> ModelResponseStream:
    chunk = ModelResponseStream(choices=[])
    chunk.usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return chunk


class RouterStream:
    """Stands in for the Router's stream wrapper: yields `sent`, keeps the upstream's `chunks`."""

    def __init__(self, sent: list[Any], upstream: list[Any], fail_after: int | None = None) -> None:
        self.sent, self.chunks, self.fail_after = sent, upstream, fail_after

    async def __aiter__(self) -> AsyncIterator[Any]:
        for index, chunk in enumerate(self.sent):
            if index == self.fail_after:
                raise ConnectionResetError("upstream went away")
            yield chunk


def request_data(request_id: str = "req-1") -> dict[str, Any]:
    details = {
        "litellm_params": {"model_info": MODEL_INFO},
        "api_call_start_time": STARTED,
        "custom_llm_provider": "deepseek",
    }
    return {
        "metadata": {REQUEST_ID_KEY: request_id, "original_model_group": "text_processing/budget"},
        "messages": [{"role": "user", "content": "Say something about cells."}],
        "stream": True,
        "litellm_logging_obj": SimpleNamespace(call_type="acompletion", model_call_details=details),
    }


class Ends:
    """Collects every (watch, end) the stream reports, and when, relative to the consumer."""

    def __init__(self, events: list[str]) -> None:
        self.ends: list[StreamEnd] = []
        self.events = events

    def __call__(self, watch: StreamWatch, end: StreamEnd) -> None:
        self.ends.append(end)
        self.events.append("recorded")


async def consume(
    stream: RouterStream, *, strip_usage: bool = True, stop_after: int | None = None
) -> tuple[list[Any], list[str], list[StreamEnd]]:
    events: list[str] = []
    ends = Ends(events)
    watch = StreamWatch("req-1", request_data(), request_data()["litellm_logging_obj"])
    received: list[Any] = []
    generator = recorded_stream(stream, watch, strip_usage=strip_usage, on_end=ends)
    async for chunk in generator:
        received.append(chunk)
        if stop_after is not None and len(received) >= stop_after:
            await generator.aclose()  # what the proxy does when the client hangs up
            break
    events.append("consumer saw the end")
    return received, events, ends.ends


async def test_a_finished_stream_is_recorded_before_its_consumer_sees_the_end() -> None:
    chunks = [piece("Cells "), piece("divide."), piece(finish="stop"), usage_chunk(12, 3)]
    received, events, [end] = await consume(RouterStream(chunks, chunks))
    assert events == ["recorded", "consumer saw the end"]  # i.e. before the proxy's [DONE]
    assert received == chunks[:3]  # the usage chunk asked for on the client's behalf is hidden
    assert (end.outcome, end.tokens_in, end.tokens_out, end.estimated) == ("complete", 12, 3, False)
    assert (end.model_info["id"], end.started, end.provider) == (MODEL_INFO["id"], STARTED, "deepseek")


async def test_a_client_that_asked_for_usage_keeps_its_usage_chunk() -> None:
    chunks = [piece("Hi."), piece(finish="stop"), usage_chunk(5, 1)]
    received, _, [end] = await consume(RouterStream(chunks, chunks), strip_usage=False)
    assert received == chunks and end.outcome == "complete"


async def test_a_stop_only_litellm_made_up_is_an_incomplete_stream() -> None:
    upstream = [piece("Cells "), piece("divi")]  # no finish reason, no usage
    sent = [*upstream, piece(finish="stop"), usage_chunk(12, 2)]  # LiteLLM's own ending
    _, _, [end] = await consume(RouterStream(sent, upstream))
    assert (end.outcome, end.estimated) == ("incomplete", True)
    assert end.tokens_in and end.tokens_out  # LiteLLM's count of what was received


async def test_a_stream_that_breaks_is_recorded_once_and_the_error_reaches_the_consumer() -> None:
    upstream = [piece("Cells "), piece("divide "), piece("and")]
    events: list[str] = []
    ends = Ends(events)
    watch = StreamWatch("req-1", request_data(), request_data()["litellm_logging_obj"])
    received = []
    with pytest.raises(ConnectionResetError):
        async for chunk in recorded_stream(
            RouterStream(upstream, upstream[:2], fail_after=2), watch, strip_usage=True, on_end=ends
        ):
            received.append(chunk)
    [end] = ends.ends
    assert (end.outcome, type(end.error), watch.delivered) == ("failed", ConnectionResetError, 2)
    assert end.tokens_out and end.estimated  # billed for the two pieces received


async def test_a_client_that_hangs_up_is_recorded_once_as_disconnected() -> None:
    upstream = [piece(f"word{i} ") for i in range(10)]
    received, events, [end] = await consume(RouterStream(upstream, upstream[:4]), stop_after=3)
    assert len(received) == 3 and events == ["recorded", "consumer saw the end"]
    assert (end.outcome, end.error, end.estimated) == ("disconnected", None, True)
    assert end.tokens_out  # what the upstream had sent when the client left


class Rows:
    def __init__(self) -> None:
        self.rows: list[CallRecord] = []
        self.claimed: list[str] = []

    def emit(self, record: CallRecord) -> bool:
        record.attempt = len(self.rows) + 1
        self.rows.append(record)
        return True


def deployment_call(model_id: str, *previous: tuple[str, str, str]) -> dict[str, Any]:
    """The kwargs of a deployment call, with the Router's notes on the attempts that failed."""
    notes = [{"deployment_id": d, "exception_type": t, "exception_string": s} for d, t, s in previous]
    info = {**MODEL_INFO, "id": f"course_structuring/default/{model_id}", "course_llm_provider": "x"}
    metadata = {
        REQUEST_ID_KEY: "req-1",
        "original_model_group": "course_structuring",
        "model_group": "course_structuring/default",
        "previous_models": notes,
    }
    return {"metadata": metadata, "model_info": info, "stream": True}


async def test_a_call_no_hook_reported_is_recorded_when_the_router_moves_on() -> None:
    rows = Rows()
    attempts = StreamAttempts(rows.emit, rows.claimed.append, source="proxy", max_tracked=10)
    attempts.deployment_call(deployment_call("gemini-2.5-flash"), "acompletion")
    # Gemini's stream opened lazily and got a 401: no hook. The next call carries the Router's note.
    body = 'b\'{"error":{"code":401,"message":"denied","status":"UNAUTHENTICATED"}}\''
    attempts.deployment_call(
        deployment_call(
            "deepseek-chat", ("course_structuring/default/gemini-2.5-flash", "VertexAIError", body)
        ),
        "acompletion",
    )
    assert [
        (r.attempt, r.model_id, r.success, r.status_code, r.error_class, r.stream) for r in rows.rows
    ] == [(1, "gemini-2.5-flash", False, 401, "VertexAIError", True)]


async def test_calls_of_other_endpoints_owe_nothing() -> None:
    rows = Rows()
    attempts = StreamAttempts(rows.emit, rows.claimed.append, source="proxy", max_tracked=10)
    attempts.deployment_call(deployment_call("gemini-2.5-flash"), "aresponses")
    attempts.deployment_call(deployment_call("deepseek-chat"), "aresponses")
    attempts.request_failed(deployment_call("deepseek-chat"), RuntimeError("x"))
    assert rows.rows == []


async def test_a_call_its_failure_hook_recorded_is_not_recorded_again() -> None:
    rows = Rows()
    attempts = StreamAttempts(rows.emit, rows.claimed.append, source="proxy", max_tracked=10)
    first = deployment_call("claude-sonnet")
    attempts.deployment_call(first, "acompletion")
    attempts.deployment_failed(first)  # its failure hook wrote the row
    attempts.deployment_call(deployment_call("gemini-2.5-pro"), "acompletion")
    assert rows.rows == []


async def test_the_last_unreported_call_is_recorded_when_the_request_fails() -> None:
    rows = Rows()
    attempts = StreamAttempts(rows.emit, rows.claimed.append, source="proxy", max_tracked=10)
    call = deployment_call("gemini-2.5-pro")
    attempts.deployment_call(call, "acompletion")
    error = ConnectionError("stream refused")
    error.status_code = 503  # type: ignore[attr-defined]
    attempts.request_failed(call, error)
    attempts.request_failed(call, error)  # said twice, recorded once
    assert [(r.model_id, r.status_code, r.error_class) for r in rows.rows] == [
        ("gemini-2.5-pro", 503, "ConnectionError")
    ]


async def test_the_first_models_error_is_not_pinned_on_the_last_unreported_call() -> None:
    rows = Rows()
    attempts = StreamAttempts(rows.emit, rows.claimed.append, source="proxy", max_tracked=10)
    call = deployment_call("gemini-2.5-pro")
    attempts.deployment_call(call, "acompletion")
    error = ConnectionError("503 from the first model")
    error.status_code = 503  # type: ignore[attr-defined]
    error.failed_deployment_id = "video_analysis/budget/gemini-2.5-flash"  # type: ignore[attr-defined]
    attempts.request_failed(call, error)
    assert [(r.model_id, r.status_code, r.error_class) for r in rows.rows] == [
        ("gemini-2.5-pro", None, "UpstreamStreamError")
    ]


async def test_a_stream_claims_its_request_and_pays_what_it_owes_once() -> None:
    rows = Rows()
    attempts = StreamAttempts(rows.emit, rows.claimed.append, source="proxy", max_tracked=10)
    data = request_data()
    attempts.deployment_call({**data, "model_info": MODEL_INFO}, "acompletion")
    watch = attempts.open(data)
    assert watch is not None and rows.claimed == ["req-1"]
    attempts.close(watch, StreamEnd("complete", MODEL_INFO, STARTED, tokens_in=3, tokens_out=4))
    attempts.request_failed(data, RuntimeError("late"))  # nothing is owed any more
    assert [(r.model_id, r.success, r.tokens_in, r.tokens_out) for r in rows.rows] == [
        ("deepseek-chat", True, 3, 4)
    ]


async def test_only_chat_streams_are_followed() -> None:
    rows = Rows()
    attempts = StreamAttempts(rows.emit, rows.claimed.append, source="proxy", max_tracked=10)
    data = request_data()
    data["litellm_logging_obj"].call_type = "aresponses"
    assert attempts.open(data) is None and rows.claimed == []
