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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeGuard

from course_llm.recording.prompts import preview_of, prompt_hashes, response_preview
from course_llm.recording.records import CallRecord, Source, redact, status_code_of
from course_llm.routing.compiler import parse_deployment_id
from course_llm.routing.registry import DEFAULT_STRATEGY

#: Metadata key the facade sets so each router's logger only records its own calls.
ROUTER_TAG = "course_llm_router"
#: Metadata key for caller metadata that is not attribution (lands in the row's metadata column).
EXTRA_KEY = "course_llm_extra"
#: The request id course_llm gave the request (the proxy's LiteLLM failure events carry another).
REQUEST_ID_KEY = "course_llm_request_id"
#: The caller's tags as given (a mapping or a list); LiteLLM itself gets `litellm_tags(tags)`.
TAGS_KEY = "course_llm_tags"
_ATTRIBUTION_KEYS = frozenset({"tenant_id", "operation", "tags", TAGS_KEY, REQUEST_ID_KEY})
#: What LiteLLM's proxy adds to the caller's metadata: request headers (credentials, cookies) and
#: its own bookkeeping. Never stored in a row.
_LITELLM_KEYS = frozenset({"headers", "used_client_oauth_token", "requester_metadata"})
_LITELLM_PREFIXES = ("user_api_key", "litellm", "course_llm")

#: error_class of a stream whose upstream stopped without saying it had finished.
INCOMPLETE_STREAM = "IncompleteStream"
#: error_class of a stream whose client hung up before it ended.
CLIENT_DISCONNECTED = "ClientDisconnected"

StreamOutcome = Literal["complete", "incomplete", "failed", "disconnected"]


def _caller_key(key: Any) -> bool:
    name = str(key)
    return (
        name not in _ATTRIBUTION_KEYS and name not in _LITELLM_KEYS and not name.startswith(_LITELLM_PREFIXES)
    )


def litellm_tags(tags: Any) -> list[str]:
    """Tags in LiteLLM's own form, a list of strings: `{"course": "bio"}` → `["course:bio"]`.

    LiteLLM fails to build its logging payload (and so drops tokens and the trace id) when
    `metadata.tags` is anything but a list.
    """
    if isinstance(tags, Mapping):
        return [f"{key}:{value}" for key, value in tags.items()]
    if isinstance(tags, list | tuple | set | frozenset):
        return [str(tag) for tag in tags]
    return [str(tags)] if tags else []


def split_group(group: str | None) -> tuple[str, str]:
    """`"video_analysis/quality"` → `("video_analysis", "quality")`; a bare action means default."""
    if not group:
        return "", ""
    action, _, strategy = group.partition("/")
    return action, strategy or DEFAULT_STRATEGY


def as_utc(value: Any, default: datetime | None = None) -> datetime:
    """A LiteLLM time (naive local datetime, aware datetime or epoch float) as an aware UTC time."""
    if isinstance(value, datetime):
        # LiteLLM hands out naive local-time datetimes; `astimezone` reads a naive one as local.
        return value.astimezone(UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return default or datetime.now(UTC)


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # A dict (what LiteLLM hands over) without the ABC check, a third of a microsecond each: the
    # hooks ask this about ten times per attempt on the request path.
    return type(value) is dict or isinstance(value, Mapping)


def _int_or_none(value: Any) -> int | None:
    """A count from an upstream payload; None for anything that is not a finite number (an
    upstream may report NaN or Infinity, and `int()` of those raises)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None


def metadata_of(container: Any) -> Mapping[str, Any]:
    """`container["metadata"]` when it is a mapping, else an empty one (payloads are untrusted)."""
    value = container.get("metadata") if _is_mapping(container) else None
    return value if _is_mapping(value) else {}


def call_details(request_data: Mapping[str, Any]) -> Mapping[str, Any]:
    """`model_call_details` of the attempt's LiteLLM Logging object (start time, provider …)."""
    details = getattr(request_data.get("litellm_logging_obj"), "model_call_details", None)
    return details if _is_mapping(details) else {}


def _attribution(metadata: Mapping[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """tenant_id, operation and the row's metadata JSON (tags + caller extras)."""
    requester = metadata.get("requester_metadata")
    caller: Mapping[str, Any] = requester if _is_mapping(requester) else metadata
    extra: dict[str, Any] = {}
    facade_extra = metadata.get(EXTRA_KEY)
    if _is_mapping(facade_extra):
        extra.update(facade_extra)
    elif caller is requester:
        extra.update({k: v for k, v in caller.items() if _caller_key(k)})
    tags = metadata.get(TAGS_KEY) or caller.get(TAGS_KEY) or caller.get("tags", metadata.get("tags"))
    if tags:
        extra["tags"] = tags
    tenant = caller.get("tenant_id", metadata.get("tenant_id"))
    operation = caller.get("operation", metadata.get("operation"))
    return (
        _label(tenant),
        _label(operation),
        _json_safe(extra),
    )


def _label(value: Any) -> str | None:
    """An attribution label (tenant_id, operation) as given: text, or an integer id spelled as
    text. Anything else a client may send (NaN, an object, a list) is no label: storing `'nan'` or
    a Python repr would group spend under a tenant nobody named."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _json_safe(value: Any) -> Any:
    if _is_mapping(value):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def request_id_of(metadata: Mapping[str, Any], *fallbacks: Any) -> str:
    """course_llm's request id, else the first non-empty fallback (LiteLLM's trace id …)."""
    for candidate in (metadata.get(REQUEST_ID_KEY), *fallbacks):
        if candidate:
            return str(candidate)
    return ""


def usage_of(response_obj: Any) -> tuple[int | None, int | None]:
    """(prompt tokens, completion tokens) of a response or chunk with an OpenAI-shaped `usage`."""
    usage = getattr(response_obj, "usage", None)
    return _int_or_none(getattr(usage, "prompt_tokens", None)), _int_or_none(
        getattr(usage, "completion_tokens", None)
    )


def _deployment(model_info: Mapping[str, Any] | None, fallback_group: str | None) -> tuple[str, str, str]:
    """(action, served strategy, registry model id) of the deployment that ran the attempt."""
    info = model_info or {}
    parsed = parse_deployment_id(str(info.get("id") or ""))
    if parsed:
        return parsed
    action, strategy = split_group(fallback_group)
    return action, strategy, str(info.get("course_llm_model_id") or "")


def registry_cost(
    model_info: Mapping[str, Any] | None, tokens_in: int | None, tokens_out: int | None
) -> float | None:
    """tokens × the registry's per-1k prices carried in the deployment's model_info."""
    info = model_info or {}
    price_in, price_out = info.get("course_llm_cost_per_1k_input"), info.get("course_llm_cost_per_1k_output")
    if not isinstance(price_in, int | float) or not isinstance(price_out, int | float):
        return None
    if tokens_in is None and tokens_out is None:
        return None
    return ((tokens_in or 0) * price_in + (tokens_out or 0) * price_out) / 1000


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
    requested = metadata.get("original_model_group") or slo.get("model_group") or metadata.get("model_group")
    action, strategy = split_group(requested)
    served_action, served_strategy, model_id = _deployment(model_info, slo.get("model_group"))
    started = as_utc(kwargs.get("api_call_start_time") or start_time)
    ended = as_utc(end_time)
    tokens_in = _int_or_none(slo.get("prompt_tokens"))
    tokens_out = _int_or_none(slo.get("completion_tokens"))
    if tokens_in is None and tokens_out is None:
        tokens_in, tokens_out = usage_of(response_obj)
    cost = registry_cost(model_info, tokens_in, tokens_out)
    if cost is None and isinstance(slo.get("response_cost"), int | float):
        cost = float(slo["response_cost"])
    tenant, operation, extra = _attribution(metadata)
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
        cache_hit=bool(slo.get("cache_hit") or kwargs.get("cache_hit")),
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
    requested = metadata.get("original_model_group") or metadata.get("model_group")
    action, strategy = split_group(requested)
    served_action, served_strategy, model_id = _deployment(info, metadata.get("model_group"))
    details = call_details(request_data)
    ended = now or datetime.now(UTC)
    started = started or as_utc(details.get("api_call_start_time"), default=ended)
    tenant, operation, extra = _attribution(metadata)
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


def record_from_deployment_success(
    request_data: Mapping[str, Any], response: Any, *, source: Source, now: datetime | None = None
) -> CallRecord:
    """The row for a non-streamed success, from `async_post_call_success_deployment_hook` arguments.

    That hook runs before LiteLLM has priced the response, so the cost is the registry's (every
    compiled deployment carries its prices), else whatever LiteLLM already put in the response.
    """
    hidden = getattr(response, "_hidden_params", None)
    hidden = hidden if _is_mapping(hidden) else {}
    record = _attempt(
        request_data, source=source, success=True, now=now, provider=hidden.get("custom_llm_provider")
    )
    record.tokens_in, record.tokens_out = usage_of(response)
    info = request_data.get("model_info") or metadata_of(request_data).get("model_info") or {}
    record.cost_usd = registry_cost(info, record.tokens_in, record.tokens_out)
    if record.cost_usd is None and isinstance(hidden.get("response_cost"), int | float):
        record.cost_usd = float(hidden["response_cost"])
    record.cache_hit = bool(hidden.get("cache_hit"))
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
    record.tokens_in, record.tokens_out = end.tokens_in, end.tokens_out
    record.cost_usd = registry_cost(end.model_info, end.tokens_in, end.tokens_out)
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
