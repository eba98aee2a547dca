"""The LiteLLM callback: `CallLogger` receives LiteLLM's hooks and hands one CallRecord per attempt on.

Two halves (STYLE.md): the pure mapping from hook arguments to a row lives in `rows.py`; this
module holds the thin `CustomLogger` that picks the hook, numbers attempts and hands rows to a
sink that never blocks (the writer journals each row before returning).

Answered means recorded (docs/architecture.md, "Durability"): every row must reach the sink on the request
path, before the caller has its answer. Which hook records what (../shared/LITELLM_NOTES.md):
- a non-streamed success → `async_post_call_success_deployment_hook`, awaited by LiteLLM right
  after the deployment answered (facade and proxy alike);
- every failed attempt → `async_post_call_failure_deployment_hook` (per attempt, SDK and proxy);
- a streamed attempt in the proxy → the proxy's stream hook (course_llm/proxy/streams.py), which
  claims the request when the stream starts;
- `async_log_success_event` / `async_log_failure_event` run later (LiteLLM's background worker, or
  once per proxy request), so they only record what no path hook did: a request already recorded
  or claimed is skipped; what is left are calls that never passed a path hook (a cache hit, other
  endpoints) and failures that never reached a deployment.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import structlog

from course_llm._litellm import load_litellm
from course_llm.errors import AttemptSkippedError
from course_llm.recording.payload import (
    EXTRA_KEY,
    REQUEST_ID_KEY,
    ROUTER_TAG,
    TAGS_KEY,
    as_utc,
    deployment_of,
    litellm_tags,
    metadata_of,
    registry_cost,
    request_id_of,
    split_group,
)
from course_llm.recording.records import CONTEXT_WINDOW_SKIPPED, CallRecord, Source
from course_llm.recording.rows import (
    record_from_deployment_success,
    record_from_failure,
    record_from_skip,
    record_from_success,
    success_request_id,
)

# Re-exported: the facade and the proxy import these names from here.
__all__ = [
    "EXTRA_KEY",
    "REQUEST_ID_KEY",
    "ROUTER_TAG",
    "TAGS_KEY",
    "CallLogger",
    "Gate",
    "Sink",
    "litellm_tags",
    "metadata_of",
    "record_from_failure",
    "record_from_success",
    "registry_cost",
    "remember",
    "split_group",
]

log = structlog.get_logger()

load_litellm()
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402 (after load_litellm's env)

#: Call types whose success the path hook records; other endpoints (embeddings, responses …)
#: answer in other shapes and keep their row from the background success event.
_CHAT_CALL_TYPES = frozenset({"acompletion", "completion"})

# ---------------------------------------------------------------------------------------------
# The logger

Sink = Callable[[CallRecord], None]
#: Asked before each attempt (its call's kwargs, its registry model id) whether it may go
#: upstream: None lets it go; otherwise the `(error_class, message)` of the row of an attempt not
#: made (the facade's and the proxy's circuit breakers, course_llm/control/breaker.py). Never
#: called for calls that are not ours, or that name no registry model.
Gate = Callable[[Mapping[str, Any], str], tuple[str, str] | None]
K = TypeVar("K")
V = TypeVar("V")


def remember(cache: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    """Set `cache[key]` as the most recent entry, dropping the oldest beyond `limit` (an LRU)."""
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > limit:
        cache.popitem(last=False)


def _call_type_name(call_type: Any) -> str:
    return str(getattr(call_type, "value", call_type) or "")


class CallLogger(CustomLogger):
    """Hands one CallRecord per attempt to `sink`. Never raises into LiteLLM; counts what it drops.

    `router_tag`: record only calls whose metadata carries this tag (a facade router's own calls);
    None records only untagged calls (the proxy's).
    """

    def __init__(
        self,
        sink: Sink,
        *,
        source: Source,
        router_tag: str | None = None,
        max_tracked: int = 50_000,
        gate: Gate | None = None,
    ):
        super().__init__()
        self._sink = sink
        self._gate = gate
        self._source: Source = source
        # Public on purpose: LiteLLM de-duplicates loggers by class and public scalar attributes,
        # so without it a second router's logger would silently not be installed.
        self.router_tag = router_tag
        self._max_tracked = max_tracked
        # Attempt counters per request id. Kept (LRU-bounded) after a request ends, because LiteLLM
        # may deliver a late failure event for it that must be recognised as already recorded.
        self._attempts: OrderedDict[str, int] = OrderedDict()
        # Requests whose final attempt a path hook recorded (or a stream is recording): LiteLLM's
        # later background events for them would be a second row. LRU-bounded like `_attempts`.
        self._claimed: OrderedDict[str, None] = OrderedDict()
        # (request id, deployment id) of the skips recorded: LiteLLM checks a group again for
        # each of its order levels, and a skip is one row. LRU-bounded like `_attempts`.
        self._skipped: OrderedDict[tuple[str, str], None] = OrderedDict()
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

    def claim(self, request_id: str) -> None:
        """From now on the background events of `request_id` add no row: a path hook records it."""
        if request_id:
            remember(self._claimed, request_id, None, self._max_tracked)

    def claimed(self, request_id: str) -> bool:
        return request_id in self._claimed

    def _emit(self, record: CallRecord) -> bool:
        """Number the row and hand it to the sink; False when it cannot be attributed."""
        if not record.request_id or not record.model_id or not record.action:
            # Not an attempt we can attribute (a payload missing its request or model): a row
            # would only pretend to be one.
            self._dropped("unattributable", ValueError(f"no request/model/action in {record.source} event"))
            return False
        self._number(record)
        self._sink(record)
        self.rows_emitted += 1
        return True

    def _dropped(self, hook: str, exc: Exception) -> None:
        self.events_dropped += 1
        log.error("llm_call_log_failed", hook=hook, error=repr(exc), events_dropped=self.events_dropped)

    # -- success on the request path -----------------------------------------------------------

    async def async_post_call_success_deployment_hook(
        self, request_data: Any, response: Any, call_type: Any
    ) -> None:
        """Record a non-streamed success before LiteLLM returns it. Returns None: the response is
        never modified."""
        try:
            if _call_type_name(call_type) not in _CHAT_CALL_TYPES or not self._mine(
                metadata_of(request_data)
            ):
                return
            if request_data.get("stream"):
                return  # a stream's row is written when the stream ends (the proxy's stream hook)
            record = record_from_deployment_success(request_data, response, source=self._source)
            if self._emit(record):
                self.claim(record.request_id)
        except Exception as exc:  # a logger must never break the call it records
            self._dropped("deployment_success", exc)

    # -- success in the background (fallback) --------------------------------------------------

    def _on_success(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            if not self._mine(metadata_of(kwargs.get("litellm_params"))):
                return
            if self.claimed(success_request_id(kwargs)):
                return  # recorded on the request path already (the proxy's usual case): no row to build
            self._emit(record_from_success(kwargs, response_obj, start_time, end_time, source=self._source))
        except Exception as exc:  # a logger must never break the call it records
            self._dropped("success", exc)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._on_success(kwargs, response_obj, start_time, end_time)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._on_success(kwargs, response_obj, start_time, end_time)

    # -- attempts not made -----------------------------------------------------------------------

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> None:
        """Ask the gate whether this attempt may go upstream. When not, its row is written here and
        AttemptSkippedError ends the attempt before any request (LiteLLM runs no failure hook for
        it, and course_llm's retry rule moves the chain on at once). Returns None: the call is
        never modified."""
        self.admit(kwargs)

    def admit(self, kwargs: Mapping[str, Any]) -> None:
        """The gate's check of one attempt (see `async_pre_call_deployment_hook`)."""
        if self._gate is None:
            return
        try:
            if not self._mine(metadata_of(kwargs)):
                return
            info = kwargs.get("model_info") or metadata_of(kwargs).get("model_info") or {}
            model_id = deployment_of(info, None)[2]
            verdict = self._gate(kwargs, model_id) if model_id else None
            if verdict is not None:
                error_class, message = verdict
                record = record_from_skip(
                    kwargs, info, error_class=error_class, message=message, source=self._source
                )
                self._emit(record)
        except Exception as exc:  # a gate that fails lets the attempt go: it never costs an answer
            self._dropped("gate", exc)
            return
        if verdict is not None:
            raise AttemptSkippedError(error_class, record.model_id, message)

    def record_context_skip(self, request_kwargs: Any, deployments: Any, tokens: int) -> None:
        """A row for each deployment LiteLLM's pre-call context check left out of the request
        (course_llm/_litellm/context.py calls this; `tokens` is LiteLLM's count of the prompt)."""
        try:
            if not self._mine(metadata_of(request_kwargs)):
                return
            for deployment in deployments:
                info = deployment.get("model_info") or {}
                limit = info.get("max_input_tokens")
                message = f"prompt of {tokens} tokens is over the model's max_context of {limit}: not sent"
                record = record_from_skip(
                    request_kwargs,
                    info,
                    error_class=CONTEXT_WINDOW_SKIPPED,
                    message=message,
                    source=self._source,
                )
                key = (record.request_id, str(info.get("id") or ""))
                if key in self._skipped:
                    continue
                remember(self._skipped, key, None, self._max_tracked)
                self._emit(record)
        except Exception as exc:  # a logger must never break the call it records
            self._dropped("context_skip", exc)

    # -- failures ------------------------------------------------------------------------------

    def _on_deployment_failure(self, request_data: Any, exception: Any) -> None:
        try:
            if not self._mine(metadata_of(request_data)):
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
            metadata = metadata_of(params)
            if not self._mine(metadata):
                return
            slo = kwargs.get("standard_logging_object") or {}
            request_id = request_id_of(metadata, slo.get("trace_id"), kwargs.get("litellm_trace_id"))
            model_info = params.get("model_info") or metadata.get("model_info") or {}
            # Recorded already by a path hook, or never reached a model: not an attempt.
            if (
                not request_id
                or self.claimed(request_id)
                or self.attempts_recorded(request_id)
                or not model_info.get("id")
            ):
                return
            exception = kwargs.get("exception") or RuntimeError(str(response_obj or "unknown failure"))
            data = {
                **kwargs,
                "metadata": {**metadata, REQUEST_ID_KEY: request_id},
                "model_info": model_info,
                "user": kwargs.get("user"),
            }
            started = as_utc(kwargs.get("api_call_start_time") or start_time)
            self._emit(
                record_from_failure(
                    data, exception, source=self._source, now=as_utc(end_time), started=started
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
