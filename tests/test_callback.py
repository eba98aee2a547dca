"""The callback's pure half (LiteLLM payload → CallRecord) and the logger's never-raise promise.

Payloads are shaped like the ones LiteLLM 1.106.2 hands to the hooks (captured from real calls,
SDK Router and proxy), trimmed to what the mapping reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from course_llm.recording.callback import CallLogger, record_from_failure, record_from_success, split_group
from course_llm.recording.records import CallRecord, redact

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
