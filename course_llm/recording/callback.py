"""The LiteLLM callback: LiteLLM hook arguments → CallRecord rows → a sink that never blocks.

Two halves (STYLE.md): pure functions that map LiteLLM's payloads to a CallRecord, and the thin
`CallLogger` that receives hooks, numbers attempts and hands rows on.

Which hook records what (../shared/LITELLM_NOTES.md):
- success → `async_log_success_event` (runs on LiteLLM's background worker: adds no latency);
- every failed attempt → `async_post_call_failure_deployment_hook`, which fires per attempt in the
  SDK Router and the proxy alike. `async_log_failure_event` fires only once per proxy request, so
  it records a row only when no deployment hook did (a failure that skipped the deployment path).
Failure hooks run on the request path, so the logger only builds the row and enqueues it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from course_llm._litellm import load_litellm
from course_llm.recording.records import CallRecord, Source, redact, status_code_of
from course_llm.routing.compiler import parse_deployment_id
from course_llm.routing.registry import DEFAULT_STRATEGY

log = structlog.get_logger()

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


def _caller_key(key: Any) -> bool:
    name = str(key)
    return (
        name not in _ATTRIBUTION_KEYS and name not in _LITELLM_KEYS and not name.startswith(_LITELLM_PREFIXES)
    )


load_litellm()
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402 (after load_litellm's env)

# ---------------------------------------------------------------------------------------------
# Pure mapping


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


def _as_utc(value: Any, default: datetime | None = None) -> datetime:
    if isinstance(value, datetime):
        # LiteLLM hands out naive local-time datetimes; make them aware, then UTC.
        return (value if value.tzinfo else value.astimezone()).astimezone(UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return default or datetime.now(UTC)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _metadata(container: Mapping[str, Any] | None) -> Mapping[str, Any]:
    value = (container or {}).get("metadata")
    return value if isinstance(value, Mapping) else {}


def _attribution(metadata: Mapping[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """tenant_id, operation and the row's metadata JSON (tags + caller extras)."""
    requester = metadata.get("requester_metadata")
    caller: Mapping[str, Any] = requester if isinstance(requester, Mapping) else metadata
    extra: dict[str, Any] = {}
    facade_extra = metadata.get(EXTRA_KEY)
    if isinstance(facade_extra, Mapping):
        extra.update(facade_extra)
    elif caller is requester:
        extra.update({k: v for k, v in caller.items() if _caller_key(k)})
    tags = metadata.get(TAGS_KEY) or caller.get(TAGS_KEY) or caller.get("tags", metadata.get("tags"))
    if tags:
        extra["tags"] = tags
    tenant = caller.get("tenant_id", metadata.get("tenant_id"))
    operation = caller.get("operation", metadata.get("operation"))
    return (
        str(tenant) if tenant is not None else None,
        str(operation) if operation is not None else None,
        _json_safe(extra),
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _request_id(metadata: Mapping[str, Any], *fallbacks: Any) -> str:
    for candidate in (metadata.get(REQUEST_ID_KEY), *fallbacks):
        if candidate:
            return str(candidate)
    return ""


def _usage(response_obj: Any) -> tuple[int | None, int | None]:
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


def record_from_success(
    kwargs: Mapping[str, Any], response_obj: Any, start_time: Any, end_time: Any, *, source: Source
) -> CallRecord:
    """The row for a successful attempt (attempt number is set by the logger)."""
    slo: Mapping[str, Any] = kwargs.get("standard_logging_object") or {}
    params: Mapping[str, Any] = kwargs.get("litellm_params") or {}
    metadata = _metadata(params)
    model_info = params.get("model_info") or metadata.get("model_info") or {}
    requested = metadata.get("original_model_group") or slo.get("model_group") or metadata.get("model_group")
    action, strategy = split_group(requested)
    served_action, served_strategy, model_id = _deployment(model_info, slo.get("model_group"))
    started = _as_utc(kwargs.get("api_call_start_time") or start_time)
    ended = _as_utc(end_time)
    tokens_in = _int_or_none(slo.get("prompt_tokens"))
    tokens_out = _int_or_none(slo.get("completion_tokens"))
    if tokens_in is None and tokens_out is None:
        tokens_in, tokens_out = _usage(response_obj)
    cost = registry_cost(model_info, tokens_in, tokens_out)
    if cost is None and isinstance(slo.get("response_cost"), int | float):
        cost = float(slo["response_cost"])
    tenant, operation, extra = _attribution(metadata)
    slo_metadata = slo.get("metadata") or {}
    end_user = kwargs.get("user") or params.get("user") or slo.get("end_user")
    end_user = end_user or slo_metadata.get("user_api_key_end_user_id")
    return CallRecord(
        request_id=_request_id(
            metadata, slo.get("trace_id"), kwargs.get("litellm_trace_id"), kwargs.get("litellm_call_id")
        ),
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
        source=source,
        metadata=extra,
    )


def record_from_failure(
    request_data: Mapping[str, Any],
    exception: BaseException,
    *,
    source: Source,
    now: datetime | None = None,
    started: datetime | None = None,
) -> CallRecord:
    """The row for a failed attempt, from `async_post_call_failure_deployment_hook` arguments."""
    metadata = _metadata(request_data)
    model_info = request_data.get("model_info") or metadata.get("model_info") or {}
    requested = metadata.get("original_model_group") or metadata.get("model_group")
    action, strategy = split_group(requested)
    served_action, served_strategy, model_id = _deployment(model_info, metadata.get("model_group"))
    logging_obj = request_data.get("litellm_logging_obj")
    details: Mapping[str, Any] = getattr(logging_obj, "model_call_details", None) or {}
    ended = now or datetime.now(UTC)
    started = started or _as_utc(details.get("api_call_start_time"), default=ended)
    tenant, operation, extra = _attribution(metadata)
    end_user = request_data.get("user") or metadata.get("user_api_key_end_user_id")
    provider = model_info.get("course_llm_provider") or details.get("custom_llm_provider") or ""
    return CallRecord(
        request_id=_request_id(
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
        success=False,
        status_code=status_code_of(exception),
        error_class=type(exception).__name__,
        error_message=redact(str(exception)),
        stream=bool(request_data.get("stream")),
        tenant_id=tenant,
        operation=operation,
        end_user=str(end_user) if end_user else None,
        source=source,
        metadata=extra,
    )


# ---------------------------------------------------------------------------------------------
# The logger

Sink = Callable[[CallRecord], None]
K = TypeVar("K")
V = TypeVar("V")


def remember(cache: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    """Set `cache[key]` as the most recent entry, dropping the oldest beyond `limit` (an LRU)."""
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > limit:
        cache.popitem(last=False)


class CallLogger(CustomLogger):
    """Hands one CallRecord per attempt to `sink`. Never raises into LiteLLM; counts what it drops.

    `router_tag`: record only calls whose metadata carries this tag (a facade router's own calls);
    None records only untagged calls (the proxy's).
    """

    def __init__(
        self, sink: Sink, *, source: Source, router_tag: str | None = None, max_tracked: int = 50_000
    ):
        super().__init__()
        self._sink = sink
        self._source: Source = source
        # Public on purpose: LiteLLM de-duplicates loggers by class and public scalar attributes,
        # so without it a second router's logger would silently not be installed.
        self.router_tag = router_tag
        self._max_tracked = max_tracked
        # Attempt counters per request id. Kept (LRU-bounded) after a request ends, because LiteLLM
        # may deliver a late failure event for it that must be recognised as already recorded.
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self.events_dropped = 0
        self.rows_emitted = 0

    # -- bookkeeping ---------------------------------------------------------------------------

    def _mine(self, metadata: Mapping[str, Any]) -> bool:
        return metadata.get(ROUTER_TAG) == self.router_tag

    def _number(self, record: CallRecord) -> None:
        record.attempt = self._attempts.get(record.request_id, 0) + 1
        remember(self._attempts, record.request_id, record.attempt, self._max_tracked)

    def attempts_recorded(self, request_id: str) -> int:
        return self._attempts.get(request_id, 0)

    def _emit(self, record: CallRecord) -> None:
        if not record.request_id or not record.model_id or not record.action:
            # Not an attempt we can attribute (a payload missing its request or model): a row
            # would only pretend to be one.
            self._dropped("unattributable", ValueError(f"no request/model/action in {record.source} event"))
            return
        self._number(record)
        self._sink(record)
        self.rows_emitted += 1

    def _dropped(self, hook: str, exc: Exception) -> None:
        self.events_dropped += 1
        log.error("llm_call_log_failed", hook=hook, error=repr(exc), events_dropped=self.events_dropped)

    # -- success -------------------------------------------------------------------------------

    def _on_success(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            if not self._mine(_metadata(kwargs.get("litellm_params"))):
                return
            record = record_from_success(kwargs, response_obj, start_time, end_time, source=self._source)
            self._emit(record)
        except Exception as exc:  # a logger must never break the call it records
            self._dropped("success", exc)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._on_success(kwargs, response_obj, start_time, end_time)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._on_success(kwargs, response_obj, start_time, end_time)

    # -- failures ------------------------------------------------------------------------------

    def _on_deployment_failure(self, request_data: Any, exception: Any) -> None:
        try:
            if not self._mine(_metadata(request_data)):
                return
            self._emit(record_from_failure(request_data, exception, source=self._source))
        except Exception as exc:
            self._dropped("deployment_failure", exc)

    async def async_post_call_failure_deployment_hook(
        self, request_data: Any, exception: Any, call_type: Any, fallback_depth: Any = None
    ) -> None:
        self._on_deployment_failure(request_data, exception)

    def _on_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            params = kwargs.get("litellm_params") or {}
            metadata = _metadata(params)
            if not self._mine(metadata):
                return
            slo = kwargs.get("standard_logging_object") or {}
            request_id = _request_id(metadata, slo.get("trace_id"), kwargs.get("litellm_trace_id"))
            model_info = params.get("model_info") or metadata.get("model_info") or {}
            # Recorded already by the deployment hook, or never reached a model: not an attempt.
            if not request_id or self.attempts_recorded(request_id) or not model_info.get("id"):
                return
            exception = kwargs.get("exception") or RuntimeError(str(response_obj or "unknown failure"))
            data = {
                **kwargs,
                "metadata": {**metadata, REQUEST_ID_KEY: request_id},
                "model_info": model_info,
                "user": kwargs.get("user"),
            }
            started = _as_utc(kwargs.get("api_call_start_time") or start_time)
            self._emit(
                record_from_failure(
                    data, exception, source=self._source, now=_as_utc(end_time), started=started
                )
            )
        except Exception as exc:
            self._dropped("failure", exc)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._on_failure_event(kwargs, response_obj, start_time, end_time)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._on_failure_event(kwargs, response_obj, start_time, end_time)
