"""The callback's pure half (LiteLLM payload → CallRecord, rows.py) and the logger's promises:
never raise into LiteLLM, and one row per attempt even though LiteLLM reports a success twice
(on the request path, then from its background worker).

Payloads are shaped like the ones LiteLLM 1.106.2 hands to the hooks (captured from real calls,
SDK Router and proxy), trimmed to what the mapping reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from course_llm.recording.callback import CallLogger
from course_llm.recording.payload import split_group
from course_llm.recording.records import CallRecord, redact
from course_llm.recording.rows import (
    StreamEnd,
    StreamOutcome,
    record_from_deployment_success,
    record_from_failure,
    record_from_stream,
    record_from_success,
)

MODEL_INFO = {
    "id": "course_structuring/default/gemini-2.5-flash",
    "course_llm_model_id": "gemini-2.5-flash",
    "course_llm_provider": "gemini",
    "course_llm_cost_per_1k_input": 0.0003,
    "course_llm_cost_per_1k_output": 0.0025,
}


def success_kwargs(**metadata: Any) -> dict[str, Any]:
    return {
        "litellm_params": {
            "metadata": {
                "original_model_group": "course_structuring/quality",
                "model_group": "course_structuring/default",
                **metadata,
            },
            "model_info": MODEL_INFO,
        },
        "api_call_start_time": datetime(2026, 11, 22, 10, 0, 0),  # naive local, as LiteLLM sends
        "litellm_trace_id": "trace-1",
        "user": "student-9",
        "stream": False,
        "standard_logging_object": {
            "trace_id": "trace-1",
            "model_group": "course_structuring/default",
            "model_id": MODEL_INFO["id"],
            "custom_llm_provider": "gemini",
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "response_cost": 0.123,
            "metadata": {},
        },
    }


def failure_data(**metadata: Any) -> dict[str, Any]:
    logging_obj = SimpleNamespace(
        model_call_details={
            "api_call_start_time": datetime(2026, 11, 22, 10, 0, 0),
            "custom_llm_provider": "x",
        }
    )
    return {
        "model": "gemini/gemini-2.5-flash",
        "metadata": {
            "original_model_group": "course_structuring",
            "model_group": "course_structuring/default",
            **metadata,
        },
        "model_info": MODEL_INFO,
        "litellm_trace_id": "trace-2",
        "litellm_logging_obj": logging_obj,
        "user": None,
    }


class Boom(Exception):
    status_code = 503


def test_success_payload_maps_to_a_full_row() -> None:
    end = datetime(2026, 11, 22, 10, 0, 1, 500000)
    record = record_from_success(
        success_kwargs(tenant_id="acme", operation="outline", tags={"course": "bio"}),
        None,
        None,
        end,
        source="sdk",
    )
    local = datetime(2026, 11, 22, 10, 0, 0).astimezone().astimezone(UTC)
    assert record.request_id == "trace-1"
    assert (record.action, record.strategy, record.served_strategy) == (
        "course_structuring",
        "quality",
        "default",
    )
    assert (record.provider, record.model_id) == ("gemini", "gemini-2.5-flash")
    assert (record.tokens_in, record.tokens_out) == (1000, 200)
    assert record.cost_usd == pytest.approx(1000 * 0.0003 / 1000 + 200 * 0.0025 / 1000)  # registry, not 0.123
    assert record.created_at == local and record.created_at.tzinfo is UTC
    assert record.latency_ms == pytest.approx(1500)
    assert (record.tenant_id, record.operation, record.end_user) == ("acme", "outline", "student-9")
    assert record.metadata == {"tags": {"course": "bio"}}
    assert record.success and record.source == "sdk"


def test_proxy_requester_metadata_is_the_attribution() -> None:
    kwargs = success_kwargs(
        requester_metadata={
            "tenant_id": "t1",
            "operation": "op",
            "tags": ["a", "b"],
            "ticket": 7,
            "headers": {"authorization": "Bearer sk-secret", "cookie": "session=1"},
            "used_client_oauth_token": False,
        },
        user_api_key_hash="should-not-be-stored",
    )
    record = record_from_success(kwargs, None, None, datetime.now(), source="proxy")
    assert (record.tenant_id, record.operation) == ("t1", "op")
    assert record.metadata == {"ticket": 7, "tags": ["a", "b"]}


def test_failure_payload_maps_status_class_and_redacted_message() -> None:
    exc = Boom("upstream 503, key sk-abcdefghijklmnop1234 rejected")
    now = datetime(2026, 11, 22, 10, 0, 2, tzinfo=UTC)
    record = record_from_failure(failure_data(tenant_id="acme"), exc, source="proxy", now=now)
    assert (record.action, record.strategy, record.served_strategy) == (
        "course_structuring",
        "default",
        "default",
    )
    assert (record.status_code, record.error_class, record.success) == (503, "Boom", False)
    assert "sk-abcdefghijklmnop1234" not in (record.error_message or "")
    assert "[REDACTED]" in (record.error_message or "")
    assert record.cost_usd is None and record.tokens_in is None
    assert record.tenant_id == "acme"
    assert record.request_id == "trace-2"


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("video_analysis/quality", ("video_analysis", "quality")),
        ("video_analysis", ("video_analysis", "default")),
    ],
)
def test_a_bare_action_is_its_default_strategy(group: str, expected: tuple[str, str]) -> None:
    assert split_group(group) == expected


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnopqrstuvwx",
        "AIzaSyA1234567890abcdefghijklmnopq",
        "Bearer abcdefghijklmnop",
        "key=abcdefgh123456",
    ],
)
def test_redact_masks_credentials(secret: str) -> None:
    assert secret not in redact(f"error calling upstream with {secret}: 401")


def test_redact_caps_the_length() -> None:
    capped = redact("x" * 10_000, limit=100)
    assert len(capped) == 100 and capped.endswith("[truncated]")


class Sink:
    def __init__(self) -> None:
        self.rows: list[CallRecord] = []

    def __call__(self, record: CallRecord) -> None:
        self.rows.append(record)


GARBAGE: list[Any] = [None, {}, "text", 42, {"litellm_params": "nope"}, {"standard_logging_object": []}]


@pytest.mark.parametrize("payload", GARBAGE)
async def test_a_bad_payload_never_raises_into_litellm(payload: Any) -> None:
    sink = Sink()
    logger = CallLogger(sink, source="proxy")
    await logger.async_log_success_event(kwargs=payload, response_obj=None, start_time=None, end_time=None)
    await logger.async_log_failure_event(kwargs=payload, response_obj=None, start_time=None, end_time=None)
    await logger.async_post_call_failure_deployment_hook(
        request_data=payload, exception=ValueError(), call_type=None
    )
    logger.log_success_event(kwargs=payload, response_obj=None, start_time=None, end_time=None)
    logger.log_failure_event(kwargs=payload, response_obj=None, start_time=None, end_time=None)
    assert sink.rows == []  # nothing that cannot be attributed is stored as an attempt
    assert logger.events_dropped >= 1  # and each one counted


async def test_a_failing_sink_is_counted_not_raised() -> None:
    def broken(record: CallRecord) -> None:
        raise RuntimeError("disk on fire")

    logger = CallLogger(broken, source="sdk")
    await logger.async_log_success_event(
        kwargs=success_kwargs(), response_obj=None, start_time=None, end_time=None
    )
    assert logger.events_dropped == 1


async def test_attempts_are_numbered_per_request_in_arrival_order() -> None:
    sink = Sink()
    logger = CallLogger(sink, source="sdk")
    for _ in range(2):
        await logger.async_post_call_failure_deployment_hook(failure_data(), Boom("x"), "acompletion")
    await logger.async_log_success_event(success_kwargs(), None, None, datetime.now())
    await logger.async_post_call_failure_deployment_hook(failure_data(), Boom("x"), "acompletion")
    assert [(r.request_id, r.attempt) for r in sink.rows] == [
        ("trace-2", 1),
        ("trace-2", 2),
        ("trace-1", 1),
        ("trace-2", 3),
    ]


async def test_failure_event_after_the_deployment_hook_is_not_counted_twice() -> None:
    sink = Sink()
    logger = CallLogger(sink, source="proxy")
    data = failure_data()
    await logger.async_post_call_failure_deployment_hook(data, Boom("x"), "acompletion")
    kwargs = {
        "litellm_params": {"metadata": data["metadata"], "model_info": MODEL_INFO},
        "litellm_trace_id": "trace-2",
    }
    await logger.async_log_failure_event(kwargs, "x", datetime.now(), datetime.now())
    assert len(sink.rows) == 1


async def test_failure_that_never_reached_a_model_is_not_an_attempt() -> None:
    sink = Sink()
    logger = CallLogger(sink, source="proxy")
    kwargs = {
        "litellm_params": {"metadata": {"model_group": ""}},
        "litellm_trace_id": "t",
        "exception": Boom(),
    }
    await logger.async_log_failure_event(kwargs, None, datetime.now(), datetime.now())
    assert sink.rows == []


async def test_failure_event_alone_records_the_attempt_it_describes() -> None:
    sink = Sink()
    logger = CallLogger(sink, source="proxy")
    kwargs = {
        "litellm_params": {"metadata": failure_data()["metadata"], "model_info": MODEL_INFO},
        "litellm_trace_id": "trace-3",
        "exception": Boom("mid-stream failure"),
    }
    await logger.async_log_failure_event(kwargs, None, datetime.now(), datetime.now())
    assert [(r.request_id, r.attempt, r.status_code, r.model_id) for r in sink.rows] == [
        ("trace-3", 1, 503, "gemini-2.5-flash")
    ]


async def test_a_router_logger_ignores_other_routers_calls() -> None:
    sink = Sink()
    mine = CallLogger(sink, source="sdk", router_tag="router-a")
    await mine.async_log_success_event(
        success_kwargs(course_llm_router="router-b"), None, None, datetime.now()
    )
    await mine.async_log_success_event(success_kwargs(), None, None, datetime.now())
    await mine.async_log_success_event(
        success_kwargs(course_llm_router="router-a"), None, None, datetime.now()
    )
    assert len(sink.rows) == 1


# ---------------------------------------------------------------------------------------------
# Rows written on the request path


def deployment_kwargs(**metadata: Any) -> dict[str, Any]:
    """The kwargs LiteLLM passes to the deployment hooks (the deployment call's own kwargs)."""
    return {**failure_data(**metadata), "litellm_trace_id": "trace-4", "user": "student-9", "stream": False}


def model_response(prompt_tokens: int = 1000, completion_tokens: int = 200, **hidden: Any) -> Any:
    usage = SimpleNamespace(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return SimpleNamespace(usage=usage, _hidden_params={"custom_llm_provider": "gemini", **hidden})


def test_a_deployment_success_maps_to_a_full_row_priced_from_the_registry() -> None:
    now = datetime(2026, 11, 22, 10, 0, 2, tzinfo=UTC)
    record = record_from_deployment_success(
        deployment_kwargs(tenant_id="acme", tags={"course": "bio"}),
        model_response(response_cost=0.5),
        source="proxy",
        now=now,
    )
    started = datetime(2026, 11, 22, 10, 0, 0).astimezone().astimezone(UTC)
    assert (record.request_id, record.success, record.source, record.stream) == (
        "trace-4",
        True,
        "proxy",
        False,
    )
    assert (record.action, record.strategy, record.served_strategy) == (
        "course_structuring",
        "default",
        "default",
    )
    assert (record.provider, record.model_id) == ("gemini", "gemini-2.5-flash")
    assert (record.tokens_in, record.tokens_out) == (1000, 200)
    assert record.cost_usd == pytest.approx(1000 * 0.0003 / 1000 + 200 * 0.0025 / 1000)  # not 0.5
    assert record.created_at == started and record.latency_ms == pytest.approx(2000)
    assert (record.tenant_id, record.end_user) == ("acme", "student-9")
    assert record.metadata == {"tags": {"course": "bio"}}
    assert (record.status_code, record.error_class, record.error_message) == (None, None, None)


def test_a_deployment_success_without_registry_prices_keeps_litellms_cost() -> None:
    kwargs = {**deployment_kwargs(), "model_info": {"id": "course_structuring/default/gemini-2.5-flash"}}
    record = record_from_deployment_success(kwargs, model_response(response_cost=0.5), source="sdk")
    assert (record.model_id, record.cost_usd) == ("gemini-2.5-flash", 0.5)


def stream_end(outcome: StreamOutcome, **fields: Any) -> StreamEnd:
    return StreamEnd(
        outcome=outcome,
        model_info=MODEL_INFO,
        started=datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC),
        tokens_in=fields.pop("tokens_in", 100),
        tokens_out=fields.pop("tokens_out", 20),
        **fields,
    )


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (stream_end("complete"), (True, None, None, {})),
        (stream_end("complete", estimated=True), (True, None, None, {"usage_estimated": True})),
        (
            stream_end("incomplete", estimated=True),
            (False, None, "IncompleteStream", {"stream_incomplete": True, "usage_estimated": True}),
        ),
        (
            stream_end("disconnected", estimated=True),
            (False, None, "ClientDisconnected", {"client_disconnected": True, "usage_estimated": True}),
        ),
        (stream_end("failed", error=Boom("cut")), (False, 503, "Boom", {})),
        (
            stream_end(
                "failed", error=Boom("gone"), error_class="VertexAIError", tokens_in=None, tokens_out=None
            ),
            (False, 503, "VertexAIError", {}),
        ),
    ],
    ids=["complete", "estimated", "incomplete", "disconnected", "failed", "failed-noted"],
)
def test_a_stream_row_says_how_the_stream_ended(end: StreamEnd, expected: tuple[Any, ...]) -> None:
    now = datetime(2026, 11, 22, 10, 0, 3, tzinfo=UTC)
    record = record_from_stream({**deployment_kwargs(), "stream": True}, end, source="proxy", now=now)
    assert (record.success, record.status_code, record.error_class, record.metadata) == expected
    assert (record.stream, record.model_id, record.provider) == (True, "gemini-2.5-flash", "gemini")
    assert record.latency_ms == pytest.approx(3000)
    # Billed for what was received, whatever the outcome.
    billed = None if end.tokens_in is None else (100 * 0.0003 + 20 * 0.0025) / 1000
    assert record.cost_usd == (pytest.approx(billed) if billed is not None else None)


def test_a_stream_row_takes_the_serving_deployment_not_the_requests_first_one() -> None:
    served = {
        **MODEL_INFO,
        "id": "course_structuring/default/deepseek-chat",
        "course_llm_provider": "deepseek",
    }
    end = StreamEnd("complete", served, tokens_in=1, tokens_out=1)
    record = record_from_stream(deployment_kwargs(), end, source="proxy")  # its model_info: gemini
    assert (record.model_id, record.provider) == ("deepseek-chat", "deepseek")


async def test_a_success_recorded_on_the_path_is_not_recorded_again_by_the_background_event() -> None:
    sink = Sink()
    logger = CallLogger(sink, source="sdk")
    data = deployment_kwargs()
    # Typed `-> None`: LiteLLM keeps its response (a hook's non-None result would replace it).
    await logger.async_post_call_success_deployment_hook(data, model_response(), "acompletion")
    background = success_kwargs()
    background["litellm_trace_id"] = background["standard_logging_object"]["trace_id"] = "trace-4"
    await logger.async_log_success_event(background, None, None, datetime.now())
    await logger.async_log_failure_event(
        {**background, "exception": Boom("late")}, None, datetime.now(), datetime.now()
    )
    assert [(r.request_id, r.attempt, r.success) for r in sink.rows] == [("trace-4", 1, True)]


async def test_the_background_success_event_still_records_calls_no_path_hook_saw() -> None:
    sink = Sink()
    logger = CallLogger(sink, source="sdk")
    # Another endpoint (embeddings) and a streamed call pass the path hook unrecorded …
    await logger.async_post_call_success_deployment_hook(deployment_kwargs(), model_response(), "aembedding")
    stream = {**deployment_kwargs(), "stream": True}
    await logger.async_post_call_success_deployment_hook(stream, model_response(), "acompletion")
    assert sink.rows == []
    # … so LiteLLM's later event (a cache hit, say) is their row.
    await logger.async_log_success_event(success_kwargs(), None, None, datetime.now())
    assert [(r.request_id, r.success) for r in sink.rows] == [("trace-1", True)]


async def test_a_claimed_request_gets_no_row_from_litellms_late_events() -> None:
    sink = Sink()
    logger = CallLogger(sink, source="proxy")
    logger.claim("trace-1")
    await logger.async_log_success_event(success_kwargs(), None, None, datetime.now())
    kwargs = {
        "litellm_params": {"metadata": failure_data()["metadata"], "model_info": MODEL_INFO},
        "litellm_trace_id": "trace-1",
        "exception": Boom("the stream broke"),
    }
    await logger.async_log_failure_event(kwargs, None, datetime.now(), datetime.now())
    assert sink.rows == []


async def test_a_claimed_request_s_late_success_event_builds_no_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's usual case (issue 12): the row was written on the request path, so LiteLLM's
    background event must cost a lookup, not a whole row built and thrown away."""
    import course_llm.recording.callback as callback_module

    built: list[str] = []
    original = callback_module.record_from_success

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append("row")
        return original(*args, **kwargs)

    monkeypatch.setattr(callback_module, "record_from_success", counting)
    logger = CallLogger(Sink(), source="proxy")
    logger.claim("trace-1")
    await logger.async_log_success_event(success_kwargs(), None, None, datetime.now())
    assert built == []
    from course_llm.recording.payload import REQUEST_ID_KEY

    unclaimed = success_kwargs(**{REQUEST_ID_KEY: "request-2"})
    await logger.async_log_success_event(unclaimed, None, None, datetime.now())
    assert built == ["row"]  # not claimed: built and recorded as before


@pytest.mark.parametrize("payload", GARBAGE)
async def test_a_bad_payload_never_raises_from_the_path_success_hook(payload: Any) -> None:
    sink = Sink()
    logger = CallLogger(sink, source="proxy")
    await logger.async_post_call_success_deployment_hook(payload, object(), "acompletion")
    assert sink.rows == []


@pytest.mark.parametrize(
    ("given", "stored"),
    [("acme", "acme"), (42, "42"), (float("nan"), None), ({"a": 1}, None), ([1], None), (True, None)],
)
def test_only_text_or_integer_attribution_becomes_a_label(given: Any, stored: str | None) -> None:
    from course_llm.recording.payload import attribution

    tenant, operation, _ = attribution({"tenant_id": given, "operation": given})
    assert (tenant, operation) == (stored, stored)
