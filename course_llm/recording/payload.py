"""Reading what LiteLLM hands to a hook: metadata, attribution, request ids, usage, deployment.

The record builders (`rows.py`) and the proxy's stream recorder read the same few places of
LiteLLM's payloads: the metadata course_llm and proxy clients put on a request, the usage of a
response, the deployment (and so the registry model and its prices) that served an attempt.
Plain functions over plain mappings: no LiteLLM import and no I/O, tested through the rows they
build (tests/test_callback.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeGuard

from course_llm.recording.records import BUDGET_KEY, BUDGET_MARK_KEY
from course_llm.routing.compiler import parse_deployment_id
from course_llm.routing.registry import DEFAULT_STRATEGY

#: Metadata key the facade sets so each router's logger only records its own calls.
ROUTER_TAG = "course_llm_router"
#: Metadata key for caller metadata that is not attribution (lands in the row's metadata column).
EXTRA_KEY = "course_llm_extra"
#: The group the caller asked for (`<action>/<strategy>`), when course_llm serves the request by
#: another (a budget's downgrade): the row's `strategy`. LiteLLM rewrites its own
#: `original_model_group` to the group it was called with, so course_llm keeps its own key.
ASKED_GROUP_KEY = "course_llm_asked_group"
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


def is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # A dict (what LiteLLM hands over) without the ABC check, a third of a microsecond each: the
    # hooks ask this about ten times per attempt on the request path.
    return type(value) is dict or isinstance(value, Mapping)


def int_or_none(value: Any) -> int | None:
    """A count from an upstream payload; None for anything that is not a finite number (an
    upstream may report NaN or Infinity, and `int()` of those raises)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None


def metadata_of(container: Any) -> Mapping[str, Any]:
    """`container["metadata"]` when it is a mapping, else an empty one (payloads are untrusted)."""
    value = container.get("metadata") if is_mapping(container) else None
    return value if is_mapping(value) else {}


def call_details(request_data: Mapping[str, Any]) -> Mapping[str, Any]:
    """`model_call_details` of the attempt's LiteLLM Logging object (start time, provider …)."""
    details = getattr(request_data.get("litellm_logging_obj"), "model_call_details", None)
    return details if is_mapping(details) else {}


def attribution(metadata: Mapping[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """tenant_id, operation and the row's metadata JSON (tags + caller extras)."""
    requester = metadata.get("requester_metadata")
    caller: Mapping[str, Any] = requester if is_mapping(requester) else metadata
    extra: dict[str, Any] = {}
    facade_extra = metadata.get(EXTRA_KEY)
    if is_mapping(facade_extra):
        extra.update(facade_extra)
    elif caller is requester:
        # A proxy client's own `budget` key would pass for a downgrade's mark: only ours is kept.
        extra.update({k: v for k, v in caller.items() if _caller_key(k) and k != BUDGET_KEY})
        if isinstance(mark := metadata.get(BUDGET_MARK_KEY), str):
            extra[BUDGET_KEY] = mark
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
    if is_mapping(value):
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
    return int_or_none(getattr(usage, "prompt_tokens", None)), int_or_none(
        getattr(usage, "completion_tokens", None)
    )


def deployment_of(model_info: Mapping[str, Any] | None, fallback_group: str | None) -> tuple[str, str, str]:
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
