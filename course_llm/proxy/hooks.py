"""The proxy side of the callback: one ProxyLogger per process, plus the proxy-only hooks.

ProxyLogger is the CallLogger of the LiteLLM proxy (`source="proxy"`). Besides recording every
attempt, it
- refuses, before routing, a request whose body breaks the client allow-list (course_llm/proxy/
  guard.py) or names an unknown action or strategy (HTTP 400 naming the valid ones). `course-llm
  serve` refuses those before LiteLLM even reads them (routes.py); this hook is the same check for
  plain `litellm --config`;
- records failures only of requests it admitted: a request refused before routing (bad key, bad
  body, forbidden parameter) has no row, whatever LiteLLM's failure event says about it;
- sends a bare action (`model="text_processing"`) on as `<action>/default`, so LiteLLM finds the
  default chain's fallbacks for it, the fallback strategy included (`default_group_of` says why);
- gives each request a time-ordered request id (`litellm_trace_id`) and returns it in the
  `x-course-llm-request-id` response header, so a caller can find its rows;
- asks the upstream for usage on streamed calls (`stream_options.include_usage`), hides the
  extra usage chunk from clients that did not ask for it, and records each streamed attempt
  before the stream ends (course_llm/proxy/streams.py);
- flushes pending rows when the proxy shuts down (SIGTERM included), in `course-llm serve` and in
  plain `litellm --config proxy_config.yaml` alike;
- logs a request whose every model failed as one `llm_request_failed` line listing its attempts,
  in place of LiteLLM's traceback of the last one (course_llm/proxy/proxy_log.py).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncGenerator, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from fastapi import HTTPException

from course_llm._litellm import tenant_namespace
from course_llm.control.controls import label
from course_llm.errors import AllModelsFailedError, AttemptSkippedError, BudgetExceededError
from course_llm.proxy.guard import (
    BODY_CHECKED,
    Refusal,
    controls_refusal,
    request_refusal,
    unknown_model_reason,
)
from course_llm.proxy.proxy_log import CURRENT_REQUEST, log_all_failed
from course_llm.proxy.recorder import MAX_TRACKED, ProxyRecorder
from course_llm.proxy.streams import StreamAttempts, StreamWatch, recorded_stream
from course_llm.proxy.unserved import PASSTHROUGH_CALL_TYPE, passthrough_refusal
from course_llm.recording.callback import (
    REQUEST_ID_KEY,
    TAGS_KEY,
    litellm_tags,
)
from course_llm.recording.payload import (
    ASKED_GROUP_KEY,
    attribution,
    metadata_of,
    split_group,
)
from course_llm.recording.records import BUDGET_MARK_KEY, new_id, status_code_of
from course_llm.recording.rows import StreamEnd
from course_llm.routing.compiler import group_name
from course_llm.routing.registry import DEFAULT_STRATEGY
from course_llm.settings import Settings

log = structlog.get_logger()

REQUEST_ID_HEADER = "x-course-llm-request-id"
#: The request metadata key LiteLLM's cache reads a per-request namespace from.
CACHE_NAMESPACE_KEY = "redis_namespace"
#: Metadata key of the mark the pre-call hook puts on the requests it admits.
_ADMITTED = "course_llm_admitted"
#: Router bookkeeping a client could send to rewrite which action/strategy a row records.
_ROUTER_KEYS = frozenset({"original_model_group", "model_group"})
_STRIP_USAGE = "course_llm_strip_usage"
#: Call types whose bodies the chat (or text-completion) allow-list governs.
_CHAT = frozenset({"acompletion", "completion"})
_TEXT_COMPLETION = frozenset({"atext_completion", "text_completion"})
#: Keys LiteLLM adds to its snapshot of the client's body (`proxy_server_request.body`).
_SNAPSHOT_EXTRAS = frozenset({"client_side_timeout"})

_instance: ProxyLogger | None = None


def proxy_logger() -> ProxyLogger:
    """The process-wide ProxyLogger (created on first use, from `Settings()`)."""
    global _instance
    if _instance is None:
        _instance = ProxyLogger(Settings())
        _instance.install_shutdown_flush()
        # LiteLLM loads callbacks during the proxy's start-up, inside its event loop: start the
        # writer there, so the database is migrated and any old spool replayed before traffic.
        _instance.writer.start()
    return _instance


class ProxyLogger(ProxyRecorder):
    """Records proxy attempts (`ProxyRecorder`) and guards requests."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # The pre-call hook marks each request it lets through with this process's secret, which
        # no client can put in a body: only such requests can fail as attempts.
        self._admission = secrets.token_hex(16)
        # The attempts of streamed requests that LiteLLM's hooks do not report (see streams.py).
        self._streams = StreamAttempts(self._emit, self.claim, source="proxy", max_tracked=MAX_TRACKED)

    # -- request guards ------------------------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> Any:
        if call_type == PASSTHROUGH_CALL_TYPE:  # past the registry: refused (course_llm/proxy/unserved.py)
            raise HTTPException(status_code=404, detail=passthrough_refusal().message)
        if not isinstance(data, dict) or "model" not in data:
            return data
        if not BODY_CHECKED.get():  # `course-llm serve` checked it before LiteLLM read it
            refusal = body_refusal(data, call_type)
            if refusal is None:
                reason = unknown_model_reason(str(data["model"]), *router_groups())
                refusal = Refusal(400, reason, "model") if reason else None
            if refusal is not None:
                raise HTTPException(status_code=refusal.status, detail={"error": refusal.message})
        if isinstance(data["model"], str):
            data["model"] = default_group_of(data["model"], *router_groups())
        # Always a new id: LiteLLM may have set litellm_trace_id from a client's trace or session
        # header, which many requests share; one course_llm request id must mean one request.
        request_id = str(new_id())
        data["litellm_trace_id"] = request_id
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            metadata = data["metadata"] = {}
        # Keys that steer the logger are ours to set, never the client's.
        for key in [k for k in metadata if str(k).startswith("course_llm_") or k in _ROUTER_KEYS]:
            metadata.pop(key)
        await self._apply_budgets(data, metadata)  # a spent budget refuses the request here (HTTP 429)
        # The response cache's namespace is the tenant's (course_llm/_litellm/cache.py), never
        # one a client names: it would read another tenant's answers.
        metadata.pop(CACHE_NAMESPACE_KEY, None)
        if (namespace := tenant_namespace(label(attribution(metadata)[0]))) is not None:
            metadata[CACHE_NAMESPACE_KEY] = namespace
        metadata[REQUEST_ID_KEY] = request_id
        metadata[_ADMITTED] = self._admission
        CURRENT_REQUEST.set(request_id)  # for the log lines LiteLLM writes about this request
        if "tags" in metadata and not _is_string_list(metadata["tags"]):
            metadata[TAGS_KEY] = metadata["tags"]
            metadata["tags"] = litellm_tags(metadata["tags"])
        if data.get("stream"):
            options = data.get("stream_options") or {}
            if not options.get("include_usage"):
                data["stream_options"] = {**options, "include_usage": True}
                metadata[_STRIP_USAGE] = True
        return data

    async def _apply_budgets(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Serve by the action's budget chain, or refuse, as the registry's budgets say."""
        if self.controls.book is None or not isinstance(data["model"], str):
            return
        await self.controls.ready()  # a process's first requests wait (briefly) for the first figures
        action, strategy = split_group(data["model"])
        tenant_id, operation, _ = attribution(metadata)
        try:
            plan = self.controls.plan(action, strategy, tenant_id, operation)
        except BudgetExceededError as exc:
            raise budget_refusal(exc) from None
        if plan.budget is not None:
            metadata[ASKED_GROUP_KEY] = data["model"]  # the row's `strategy`: as asked
            metadata[BUDGET_MARK_KEY] = plan.budget  # the row's `metadata.budget`
            data["model"] = group_name(action, plan.strategy)

    def _has_chain(self, action: str, strategy: str) -> bool:
        return group_name(action, strategy) in router_groups()[0]

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> HTTPException | None:
        """When every model failed, answer with the last attempt's status and list every attempt."""
        if not isinstance(request_data, dict):
            return None
        metadata = request_data.get("metadata")
        request_id = str(metadata.get(REQUEST_ID_KEY) or "") if isinstance(metadata, dict) else ""
        if not self.admitted(metadata):
            return None  # refused before routing; its metadata is the client's word, not ours
        if self._mine(metadata_of(request_data)):
            try:  # a streamed attempt no hook reported failed last: its row first
                self._streams.request_failed(request_data, original_exception)
            except Exception as exc:
                self._dropped("stream_request_failed", exc)
        attempts = self._failures.pop(request_id, None)
        if not attempts:
            return None  # rejected before any model was tried (bad key, bad body, unknown action)
        last = attempts[-1]
        error = AllModelsFailedError(
            last.action, last.strategy, request_id, [a.as_failed_attempt() for a in attempts]
        )
        status = last.status_code or status_code_of(original_exception) or 502
        log_all_failed(error, status)
        return HTTPException(status_code=status, detail=str(error))

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, object] | None = None,
    ) -> dict[str, str] | None:
        metadata = data.get("metadata") if isinstance(data, dict) else None
        request_id = metadata.get(REQUEST_ID_KEY) if isinstance(metadata, dict) else None
        return {REQUEST_ID_HEADER: str(request_id)} if request_id else None

    def _on_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """LiteLLM's failure event is a row only for a request the pre-call hook admitted: LiteLLM
        also sends one for a request refused earlier (a bad key, a refused body), and names a model
        for it when its chain has only one."""
        try:
            admitted = self.admitted(metadata_of((kwargs or {}).get("litellm_params")))
        except Exception as exc:
            self._dropped("failure", exc)
            return
        if admitted:
            super()._on_failure_event(kwargs, response_obj, start_time, end_time)

    def admitted(self, metadata: Any) -> bool:
        """Whether these request metadata are of a request the pre-call hook let through."""
        return isinstance(metadata, Mapping) and metadata.get(_ADMITTED) == self._admission

    # -- streams -------------------------------------------------------------------------------

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        metadata = metadata_of(request_data)
        strip = bool(metadata.get(_STRIP_USAGE))
        watch = self._watch(request_data)
        if watch is None:  # not a chat stream of ours: LiteLLM's own events record it
            async for chunk in response:
                if (
                    strip
                    and getattr(chunk, "usage", None) is not None
                    and not getattr(chunk, "choices", None)
                ):
                    continue
                yield chunk
            return
        async for chunk in recorded_stream(response, watch, strip_usage=strip, on_end=self._stream_ended):
            yield chunk

    def _watch(self, request_data: Any) -> StreamWatch | None:
        """Start following a stream (and claim its request); None leaves it to LiteLLM's events."""
        try:
            return self._streams.open(request_data) if self._mine(metadata_of(request_data)) else None
        except Exception as exc:
            self._dropped("stream_start", exc)
            return None

    def _stream_ended(self, watch: StreamWatch, end: StreamEnd) -> None:
        try:
            self._streams.close(watch, end)
        except Exception as exc:
            self._dropped("stream_end", exc)
        if end.outcome == "failed" and watch.delivered:
            # The client has a 200 and part of the answer: LiteLLM ends the stream with an error
            # frame, which an all-failed HTTPException from the failure hook would turn into a
            # dropped connection.
            self._failures.pop(watch.request_id, None)

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> None:
        """Settle the previous attempt of a streamed request before the next starts, so attempts
        keep their order (see streams.py), then ask the gate whether this one may go upstream
        (CallLogger's `admit`: an open circuit ends it here). Returns None: the call is never
        modified."""
        try:
            if self._mine(metadata_of(kwargs)):
                self._streams.deployment_call(kwargs, call_type)
        except Exception as exc:
            self._dropped("stream_deployment_call", exc)
        try:
            self.admit(kwargs)
        except AttemptSkippedError:
            self._streams.deployment_failed(kwargs)  # the skip's row is written: nothing is owed
            raise

    async def async_post_call_failure_deployment_hook(
        self, request_data: Any, exception: Any, call_type: Any, fallback_depth: Any = None
    ) -> None:
        await super().async_post_call_failure_deployment_hook(
            request_data, exception, call_type, fallback_depth
        )
        try:
            self._streams.deployment_failed(request_data)
        except Exception as exc:
            self._dropped("stream_deployment_failed", exc)


def budget_refusal(error: BudgetExceededError) -> HTTPException:
    """HTTP 429 naming the spent budget and when it resets; `Retry-After` says the same in seconds."""
    wait = max(int((error.resets_at - datetime.now(UTC)).total_seconds()) + 1, 1)
    body = {
        "message": str(error),
        "type": "budget_exceeded",
        "param": None,
        "code": "429",
        "budget": error.budget,
        "spent_usd": round(error.spent_usd, 6),
        "limit_usd": error.limit_usd,
        "resets_at": error.resets_at.isoformat().replace("+00:00", "Z"),
    }
    return HTTPException(status_code=429, detail={"error": body}, headers={"retry-after": str(wait)})


def router_groups() -> tuple[Collection[str], Mapping[str, str]]:
    """The model groups (action/strategy) the proxy's router serves, and its aliases."""
    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    router = getattr(proxy_server, "llm_router", None)
    if router is None:
        return (), {}
    names = getattr(router, "model_names", None)  # the router keeps this set up to date
    if not isinstance(names, set | frozenset):
        names = set(router.get_model_names())
    return names, getattr(router, "model_group_alias", None) or {}


def default_group_of(model: str, names: Collection[str], aliases: Mapping[str, Any]) -> str:
    """`<action>/default` for a bare action the router serves as an alias of it; else `model`.

    The bare action must be exactly `<action>/default`, fallback strategy included. LiteLLM
    (1.106.2; BerriAI/litellm#10317, open) resolves a `model_group_alias` to pick deployments, but
    looks a failed request's `fallbacks` up by the name the client sent, so a bare request never
    reached the fallback strategy. Listing the fallbacks under the bare name as well is no cure:
    the fallback strategy's own fallback (`<action>/default`) is then a name the request has not
    attempted, and a request whose fallback strategy fails too walks the default chain twice.
    Renamed here, before LiteLLM routes it, the request is the `/default` one in every respect.
    """
    target = group_name(model, DEFAULT_STRATEGY)
    if "/" in model or aliases.get(model) != target or target not in names:
        return model
    return target


def body_refusal(data: Mapping[str, Any], call_type: Any) -> Refusal | None:
    """Why the client's body (LiteLLM's snapshot of it in `data`) must be refused; None if it may go."""
    server_request = data.get("proxy_server_request")
    body = server_request.get("body") if isinstance(server_request, Mapping) else None
    if not isinstance(body, Mapping):
        return None  # not a request from a proxy client
    if not _SNAPSHOT_EXTRAS.isdisjoint(body):
        body = {key: value for key, value in body.items() if key not in _SNAPSHOT_EXTRAS}
    kind = str(getattr(call_type, "value", call_type) or "")
    if kind in _CHAT or kind in _TEXT_COMPLETION:
        model = data.get("model")
        return request_refusal(
            body, "chat" if kind in _CHAT else "completion", None if "model" in body else str(model)
        )
    return controls_refusal(body, prefixed=False)  # LiteLLM adds `litellm_metadata` and the like


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
