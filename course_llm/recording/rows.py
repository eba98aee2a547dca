"""The pure half of the callback: what LiteLLM hands to a hook → one CallRecord (an llm_calls row).

No LiteLLM import and no I/O here, so every mapping is a plain function with plain tests
(tests/test_callback.py). Four shapes of input, one per way an attempt ends:
- `record_from_deployment_success`: a non-streamed success, from the arguments of
  `async_post_call_success_deployment_hook` (the request path);
- `record_from_success`: a success from `async_log_success_event` (LiteLLM's background worker),
  kept for calls that never pass a path hook, such as cache hits;
- `record_from_failure`: a failed attempt, from `async_post_call_failure_deployment_hook`;
- `record_from_stream`: a streamed attempt, however it ended (`StreamEnd`), from the proxy.
The attempt number is left at 0: the logger numbers attempts in the order it sees them. Every
row gets the request's prompt hashes, a success its response preview (`prompts.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from course_llm.recording.payload import (
    ASKED_GROUP_KEY,
    as_utc,
    attribution,
    call_details,
    deployment_of,
    int_or_none,
    is_mapping,
    metadata_of,
    registry_cost,
    request_id_of,
    split_group,
    usage_of,
)
from course_llm.recording.prompts import preview_of, prompt_hashes, response_preview
from course_llm.recording.records import (
    CLIENT_DISCONNECTED,
    CallRecord,
    Source,
    redact,
    status_code_of,
)

#: error_class of a stream whose upstream stopped without saying it had finished.
INCOMPLETE_STREAM = "IncompleteStream"

StreamOutcome = Literal["complete", "incomplete", "failed", "disconnected"]


def success_request_id(kwargs: Mapping[str, Any]) -> str:
    """The request id `record_from_success` would give the row, without building it."""
    slo: Mapping[str, Any] = kwargs.get("standard_logging_object") or {}
    metadata = metadata_of(kwargs.get("litellm_params") or {})
    return request_id_of(
        metadata, slo.get("trace_id"), kwargs.get("litellm_trace_id"), kwargs.get("litellm_call_id")
    )


def record_from_success(
    kwargs: Mapping[str, Any], response_obj: Any, start_time: Any, end_time: Any, *, source: Source
) -> CallRecord:
    """The row for a successful attempt, from `async_log_success_event` arguments."""
    slo: Mapping[str, Any] = kwargs.get("standard_logging_object") or {}
    params: Mapping[str, Any] = kwargs.get("litellm_params") or {}
    metadata = metadata_of(params)
    model_info = params.get("model_info") or metadata.get("model_info") or {}
    requested = (
        metadata.get(ASKED_GROUP_KEY)
        or metadata.get("original_model_group")
        or slo.get("model_group")
        or metadata.get("model_group")
    )
    action, strategy = split_group(requested)
    served_action, served_strategy, model_id = deployment_of(model_info, slo.get("model_group"))
    started = as_utc(kwargs.get("api_call_start_time") or start_time)
    ended = as_utc(end_time)
    tokens_in = int_or_none(slo.get("prompt_tokens"))
    tokens_out = int_or_none(slo.get("completion_tokens"))
    if tokens_in is None and tokens_out is None:
        tokens_in, tokens_out = usage_of(response_obj)
    cache_hit = bool(slo.get("cache_hit") or kwargs.get("cache_hit"))
    cost = 0.0 if cache_hit else registry_cost(model_info, tokens_in, tokens_out)
    if cost is None and isinstance(slo.get("response_cost"), int | float):
        cost = float(slo["response_cost"])
    tenant, operation, extra = attribution(metadata)
    slo_metadata = slo.get("metadata") or {}
    end_user = kwargs.get("user") or params.get("user") or slo.get("end_user")
    end_user = end_user or slo_metadata.get("user_api_key_end_user_id")
    system_hash, user_hash = prompt_hashes(kwargs.get("messages") or slo.get("messages"))
    return CallRecord(
        request_id=success_request_id(kwargs),
        attempt=0,
        created_at=started,
        action=action or served_action,
        strategy=strategy or served_strategy,
        served_strategy=served_strategy,
        provider=str(model_info.get("course_llm_provider") or slo.get("custom_llm_provider") or ""),
        model_id=model_id or str(slo.get("model") or ""),
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        latency_ms=max((ended - started).total_seconds() * 1000, 0.0),
        cost_usd=cost,
        success=True,
        stream=bool(kwargs.get("stream") or slo.get("stream")),
        cache_hit=cache_hit,
        tenant_id=tenant,
        operation=operation,
        end_user=str(end_user) if end_user else None,
        system_prompt_hash=system_hash,
        user_prompt_hash=user_hash,
        response_preview=preview_of(response_obj),
        source=source,
        metadata=extra,
    )


def _attempt(
    request_data: Mapping[str, Any],
    *,
    source: Source,
    success: bool,
    now: datetime | None,
    started: datetime | None = None,
    model_info: Mapping[str, Any] | None = None,
    provider: Any = None,
) -> CallRecord:
    """The columns every row built from a deployment call's kwargs shares (request path hooks).

    `model_info` overrides the kwargs' own: a proxy stream's request data keeps the first
    deployment's model_info after a fallback, so the stream passes the one that served.
    """
    metadata = metadata_of(request_data)
    info = model_info or request_data.get("model_info") or metadata.get("model_info") or {}
    requested = (
        metadata.get(ASKED_GROUP_KEY) or metadata.get("original_model_group") or metadata.get("model_group")
    )
    action, strategy = split_group(requested)
    served_action, served_strategy, model_id = deployment_of(info, metadata.get("model_group"))
    details = call_details(request_data)
    ended = now or datetime.now(UTC)
    started = started or as_utc(details.get("api_call_start_time"), default=ended)
    tenant, operation, extra = attribution(metadata)
    end_user = request_data.get("user") or metadata.get("user_api_key_end_user_id")
    provider = info.get("course_llm_provider") or provider or details.get("custom_llm_provider") or ""
    system_hash, user_hash = prompt_hashes(request_data.get("messages"))
    return CallRecord(
        request_id=request_id_of(
            metadata, request_data.get("litellm_trace_id"), request_data.get("litellm_call_id")
        ),
        attempt=0,
        created_at=started,
        action=action or served_action,
        strategy=strategy or served_strategy,
        served_strategy=served_strategy,
        provider=str(provider),
        model_id=model_id or str(request_data.get("model") or ""),
        latency_ms=max((ended - started).total_seconds() * 1000, 0.0),
        success=success,
        stream=bool(request_data.get("stream")),
        tenant_id=tenant,
        operation=operation,
        end_user=str(end_user) if end_user else None,
        system_prompt_hash=system_hash,
        user_prompt_hash=user_hash,
        source=source,
        metadata=extra,
    )


def _fail(record: CallRecord, exception: BaseException) -> CallRecord:
    record.status_code = status_code_of(exception)
    record.error_class = type(exception).__name__
    record.error_message = redact(str(exception))
    return record


def record_from_failure(
    request_data: Mapping[str, Any],
    exception: BaseException,
    *,
    source: Source,
    now: datetime | None = None,
    started: datetime | None = None,
) -> CallRecord:
    """The row for a failed attempt, from `async_post_call_failure_deployment_hook` arguments."""
    record = _attempt(request_data, source=source, success=False, now=now, started=started)
    return _fail(record, exception)


def record_from_skip(
    request_data: Mapping[str, Any],
    model_info: Mapping[str, Any],
    *,
    error_class: str,
    message: str,
    source: Source,
    now: datetime | None = None,
) -> CallRecord:
    """The row of an attempt course_llm or LiteLLM decided not to make: no upstream request, so no
    status, no tokens, latency 0, and `error_class` saying why."""
    moment = now or datetime.now(UTC)
    record = _attempt(
        request_data, source=source, success=False, now=moment, started=moment, model_info=model_info
    )
    record.error_class = error_class
    record.error_message = redact(message)
    return record


def record_from_deployment_success(
    request_data: Mapping[str, Any], response: Any, *, source: Source, now: datetime | None = None
) -> CallRecord:
    """The row for a non-streamed success, from `async_post_call_success_deployment_hook` arguments.

    That hook runs before LiteLLM has priced the response, so the cost is the registry's (every
    compiled deployment carries its prices), else whatever LiteLLM already put in the response.
    """
    hidden = getattr(response, "_hidden_params", None)
    hidden = hidden if is_mapping(hidden) else {}
    record = _attempt(
        request_data, source=source, success=True, now=now, provider=hidden.get("custom_llm_provider")
    )
    record.tokens_in, record.tokens_out = usage_of(response)
    info = request_data.get("model_info") or metadata_of(request_data).get("model_info") or {}
    record.cache_hit = bool(hidden.get("cache_hit"))
    # An answer from LiteLLM's response cache sent nothing upstream: it cost nothing.
    record.cost_usd = 0.0 if record.cache_hit else registry_cost(info, record.tokens_in, record.tokens_out)
    if record.cost_usd is None and isinstance(hidden.get("response_cost"), int | float):
        record.cost_usd = float(hidden["response_cost"])
    record.response_preview = preview_of(response)
    return record


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How one streamed attempt ended, as the proxy saw it (course_llm/proxy/streams.py).

    `model_info` and `started` are the serving deployment's; `tokens_in`/`tokens_out` count what
    was received (the upstream's own usage, else LiteLLM's count: `estimated`). `error_class`
    names the error when `error` only stands in for one that LiteLLM kept as text. `text` is what
    the stream delivered (`prompts.stream_text`), for the response preview.
    """

    outcome: StreamOutcome
    model_info: Mapping[str, Any]
    started: datetime | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    estimated: bool = False
    error: BaseException | None = None
    provider: str | None = None
    error_class: str | None = None
    text: str | None = None
    cache_hit: bool = False


def record_from_stream(
    request_data: Mapping[str, Any], end: StreamEnd, *, source: Source, now: datetime | None = None
) -> CallRecord:
    """The row of a streamed attempt: a success only when the upstream finished it.

    A failed, truncated or abandoned stream is still billed for what was sent, so its row keeps
    the tokens and cost of what was received.
    """
    record = _attempt(
        request_data,
        source=source,
        success=end.outcome == "complete",
        now=now,
        started=end.started,
        model_info=end.model_info,
        provider=end.provider,
    )
    record.stream = True
    record.cache_hit = end.cache_hit
    record.tokens_in, record.tokens_out = end.tokens_in, end.tokens_out
    record.cost_usd = 0.0 if end.cache_hit else registry_cost(end.model_info, end.tokens_in, end.tokens_out)
    record.response_preview = response_preview(end.text)
    if end.estimated and (end.tokens_in is not None or end.tokens_out is not None):
        record.metadata["usage_estimated"] = True
    if end.outcome == "incomplete":
        record.error_class = INCOMPLETE_STREAM
        record.error_message = "the upstream stream ended without a finish reason"
        record.metadata["stream_incomplete"] = True
    elif end.outcome == "disconnected":
        record.error_class = CLIENT_DISCONNECTED
        record.error_message = "the client closed the stream before it ended"
        record.metadata["client_disconnected"] = True
    elif end.outcome == "failed":
        _fail(record, end.error or RuntimeError("the stream failed"))
        record.error_class = end.error_class or record.error_class
    return record
