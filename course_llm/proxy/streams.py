"""Streamed answers in the proxy: one row per streamed attempt, recorded on the request path.

LiteLLM logs a stream's success from a task it starts once the stream is exhausted, i.e. after
the proxy has sent `[DONE]`; a stream that breaks, or whose client hangs up, gets at most one
failure event per request (none when an earlier attempt already failed). So the proxy records
each attempt of a streamed request itself (`StreamAttempts`), and claims the request when its
stream starts so that LiteLLM's later events for it add no second row.

How LiteLLM 1.106.2 behaves here (measured; tests/test_streams_e2e.py pins it):
- Every deployment call is announced by `async_pre_call_deployment_hook`. A call that fails
  while sending the request gets `async_post_call_failure_deployment_hook`. A Gemini stream is
  opened lazily by the Router after that call returned: an HTTP error there gets no hook and no
  failure event at all, and neither does a stream that breaks before its first chunk (the Router
  then moves on to the next model inside the same stream). Both show only as the next deployment
  call (whose `metadata.previous_models` names the error) or, for the last one, as the request's
  failure (`async_post_call_failure_hook`). So a deployment call of a streamed request stays
  "owed" until a hook records it; the next call, the request's failure or its stream's end pays.
- The stream hook's `response` is the Router's stream wrapper (behind a pass-through boundary).
  Its `chunks` list holds what the first streaming deployment sent, usage chunks included; a
  finish reason is in there only when the upstream sent one (the client gets a synthetic "stop"
  either way). After a fallback inside the stream, that list is the broken stream's, not the
  served one's.
- `metadata.model_info` of the request data stays the first deployment's after a fallback; the
  request's Logging object (`litellm_logging_obj`) follows the deployment being called.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import structlog

from course_llm._litellm import load_litellm
from course_llm.recording.payload import REQUEST_ID_KEY, as_utc, call_details, metadata_of, usage_of
from course_llm.recording.prompts import preview_chars, stream_text
from course_llm.recording.records import CallRecord, Source
from course_llm.recording.rows import StreamEnd, StreamOutcome, record_from_stream

log = structlog.get_logger()

#: The call types that are chat completions (the only streams recorded here).
CHAT_CALL_TYPES = frozenset({"acompletion", "completion"})
#: What an owed attempt's row is built from. `messages` (for the prompt hashes) is a reference to
#: the request's own list, not a copy; an owed entry lives as long as its request (max_tracked).
_ROW_KWARGS = (
    "metadata",
    "model_info",
    "model",
    "user",
    "stream",
    "litellm_trace_id",
    "litellm_call_id",
    "messages",
)
#: An HTTP status in an error body the Router kept only as text (Google's and OpenAI's shapes).
_STATUS_IN_TEXT = re.compile(r"\"code\"\s*:\s*\"?(\d{3})\b|\b(?:status[_ ]code|Error code)[=: ]+(\d{3})\b")


class UpstreamStreamError(Exception):
    """A streamed attempt that failed where no hook saw the exception; what the Router noted."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        match = _STATUS_IN_TEXT.search(message)
        self.status_code = int(match.group(1) or match.group(2)) if match else None


@dataclass
class Owed:
    """A deployment call of a streamed request whose row no hook has written yet."""

    kwargs: Mapping[str, Any]
    model_info: Mapping[str, Any]
    started: datetime


def _model_info(details: Mapping[str, Any]) -> Mapping[str, Any]:
    params = details.get("litellm_params")
    info = params.get("model_info") if isinstance(params, Mapping) else None
    return info if isinstance(info, Mapping) else {}


def _request_id(data: Any) -> str:
    return str(metadata_of(data).get(REQUEST_ID_KEY) or "")


@dataclass
class StreamWatch:
    """One open stream: its request, what reached the client, and whether the Router moved on."""

    request_id: str
    request_data: Mapping[str, Any]
    logging_obj: Any
    delivered: int = 0
    saw_finish: bool = False
    final_usage: tuple[int | None, int | None] | None = None
    fell_back: bool = False
    #: What reached the client since the Router moved on inside the stream (see `end`).
    served: list[Any] = field(default_factory=list)

    def is_chat(self) -> bool:
        return str(getattr(self.logging_obj, "call_type", "") or "") in CHAT_CALL_TYPES

    def end(self, response: Any, outcome: StreamOutcome, error: BaseException | None) -> StreamEnd:
        """What the row says about the serving attempt, from the chunks as LiteLLM kept them."""
        # The Logging object describes the last deployment called: the one whose stream ran.
        details = call_details({"litellm_logging_obj": self.logging_obj})
        model_info = _model_info(details) or metadata_of(self.request_data).get("model_info") or {}
        raw = getattr(response, "chunks", None)
        # After a fallback inside the stream the wrapper's list is the broken stream's; what the
        # client got is then all there is (and its "stop" may be LiteLLM's own).
        raw_chunks = raw if isinstance(raw, list) and not self.fell_back else None
        counted = raw_chunks if raw_chunks is not None else self.served
        finished = _has_finish(raw_chunks) if raw_chunks is not None else self.saw_finish
        if outcome == "complete" and not finished:
            outcome = "incomplete"  # LiteLLM made up the "stop" the client saw
        tokens = self.final_usage if outcome == "complete" else None
        if tokens is None and counted:
            tokens = _count(counted, self.request_data.get("messages"))
        upstream_usage = self.final_usage is not None if raw_chunks is None else _has_usage(raw_chunks)
        provider = details.get("custom_llm_provider")
        # A stream replayed from LiteLLM's response cache (caching/caching_handler.py: the
        # Logging object's `caching_details`, and the wrapper's provider "cached_response").
        caching = getattr(self.logging_obj, "caching_details", None)
        cache_hit = bool(caching.get("cache_hit") if isinstance(caching, Mapping) else False) or (
            getattr(response, "custom_llm_provider", None) == "cached_response"
        )
        return StreamEnd(
            outcome=outcome,
            model_info=model_info,
            started=as_utc(details.get("api_call_start_time")),
            tokens_in=tokens[0] if tokens else None,
            tokens_out=tokens[1] if tokens else None,
            estimated=not upstream_usage,
            error=error,
            provider=str(provider) if provider and not cache_hit else None,
            cache_hit=cache_hit,
            # Joining every chunk's text only when a preview is kept (off by default).
            text=stream_text(counted) if preview_chars() else None,
        )


def _hidden_usage(chunk: Any) -> tuple[int | None, int | None] | None:
    """The usage LiteLLM keeps on a chunk's hidden params when the client asked for none.

    All zeros is not a count: on a chain of several models (a group with `order` levels) LiteLLM
    1.106.2 strips the upstream's usage chunk from what the client gets and leaves a zero
    `Usage` on the last chunk's hidden params; taken as the count, every such streamed row said
    0 tokens and cost 0. The stream's own chunk list still holds the upstream's usage (`end`).
    """
    hidden = getattr(chunk, "_hidden_params", None)
    usage = hidden.get("usage") if isinstance(hidden, Mapping) else None
    counts = usage_of(SimpleNamespace(usage=usage)) if usage is not None else None
    return counts if counts and any(counts) else None


def _has_usage(chunks: list[Any]) -> bool:
    return any(getattr(c, "usage", None) is not None for c in chunks)


def _has_finish(chunks: list[Any]) -> bool:
    return any(
        getattr(choice, "finish_reason", None) for c in chunks for choice in getattr(c, "choices", None) or []
    )


def _count(chunks: list[Any], messages: Any) -> tuple[int | None, int | None] | None:
    """Tokens of what was received: the upstream's usage when it sent some, else LiteLLM's count."""
    try:
        litellm = load_litellm()
        built = litellm.stream_chunk_builder(
            chunks=list(chunks), messages=messages if isinstance(messages, list) else None
        )
    except Exception as exc:  # a row without tokens beats no row
        log.warning("llm_stream_tokens_uncounted", error=repr(exc))
        return None
    return usage_of(built) if built is not None else None


def _noted_error(kwargs: Mapping[str, Any], owed: Owed) -> UpstreamStreamError:
    """The error the Router noted (`previous_models`) for the owed attempt's deployment."""
    previous = metadata_of(kwargs).get("previous_models")
    deployment = owed.model_info.get("id")
    for entry in reversed(previous if isinstance(previous, list | tuple) else []):
        if isinstance(entry, Mapping) and entry.get("deployment_id") == deployment:
            error_class = str(entry.get("exception_type") or "") or UpstreamStreamError.__name__
            return UpstreamStreamError(error_class, str(entry.get("exception_string") or ""))
    return UpstreamStreamError(UpstreamStreamError.__name__, "the stream failed before its first chunk")


class StreamAttempts:
    """Rows for the attempts of streamed proxy requests that LiteLLM's hooks do not report.

    `emit` numbers and stores a row (False when it cannot be attributed); `claim` stops LiteLLM's
    background events of a request from adding rows.
    """

    def __init__(
        self,
        emit: Callable[[CallRecord], bool],
        claim: Callable[[str], None],
        *,
        source: Source,
        max_tracked: int,
    ) -> None:
        self._emit = emit
        self._claim = claim
        self._source: Source = source
        self._max_tracked = max_tracked
        self._owed: OrderedDict[str, Owed] = OrderedDict()
        self._open: dict[str, StreamWatch] = {}

    def _pay(self, owed: Owed, error: BaseException, error_class: str | None = None) -> None:
        end = StreamEnd("failed", owed.model_info, owed.started, error=error, error_class=error_class)
        self._emit(record_from_stream(owed.kwargs, end, source=self._source))

    def deployment_call(self, kwargs: Mapping[str, Any], call_type: Any) -> None:
        """A deployment is about to be called. The previous call of the same streamed request, if
        still owed, returned a stream that failed before its first chunk: its row comes first."""
        request_id = _request_id(kwargs)
        chat = str(getattr(call_type, "value", call_type)) in CHAT_CALL_TYPES
        if not request_id or not kwargs.get("stream") or not chat:
            return
        owed = self._owed.pop(request_id, None)
        if owed is not None:
            error = _noted_error(kwargs, owed)
            self._pay(owed, error, error.error_class)
        if (watch := self._open.get(request_id)) is not None:
            watch.fell_back = True
        info = kwargs.get("model_info") or metadata_of(kwargs).get("model_info")
        row_kwargs = {key: kwargs.get(key) for key in _ROW_KWARGS}
        self._owed[request_id] = Owed(
            row_kwargs, info if isinstance(info, Mapping) else {}, datetime.now(UTC)
        )
        while len(self._owed) > self._max_tracked:  # requests that vanished without a last word
            self._owed.popitem(last=False)

    def deployment_failed(self, request_data: Any) -> None:
        """The failure hook recorded the current call."""
        self._owed.pop(_request_id(request_data), None)

    def request_failed(self, request_data: Any, exception: BaseException) -> None:
        """The whole request failed; a call still owed is the one that failed last.

        After fallbacks across model groups LiteLLM raises the first group's error (stamped with
        its `failed_deployment_id`), and the last call's own error is gone: the row then says so.
        """
        owed = self._owed.pop(_request_id(request_data), None)
        if owed is None:
            return
        stamped = getattr(exception, "failed_deployment_id", None)
        if stamped is None or stamped == owed.model_info.get("id"):
            self._pay(owed, exception)
        else:
            unknown = "the stream failed before its first chunk; LiteLLM kept no error for this attempt"
            self._pay(owed, UpstreamStreamError(UpstreamStreamError.__name__, unknown))

    def open(self, request_data: Mapping[str, Any]) -> StreamWatch | None:
        """A stream starts: follow it, and claim its request. None: not a chat stream we record."""
        request_id = _request_id(request_data)
        if not request_id:
            return None
        # Kept apart from request_data: LiteLLM's failure hook pops it from there.
        watch = StreamWatch(request_id, request_data, request_data.get("litellm_logging_obj"))
        if not watch.is_chat():
            self._owed.pop(request_id, None)
            return None
        self._claim(request_id)
        self._open[request_id] = watch
        return watch

    def close(self, watch: StreamWatch, end: StreamEnd) -> None:
        """The stream ended: its serving attempt is the one owed, and this is its row."""
        self._open.pop(watch.request_id, None)
        self._owed.pop(watch.request_id, None)
        self._emit(record_from_stream(watch.request_data, end, source=self._source))


async def recorded_stream(
    response: AsyncIterable[Any],
    watch: StreamWatch,
    *,
    strip_usage: bool,
    on_end: Callable[[StreamWatch, StreamEnd], None],
) -> AsyncGenerator[Any, None]:
    """Pass the stream through; when it ends, however it ends, hand its StreamEnd to `on_end`.

    `on_end` runs before this generator finishes, so before the proxy writes `[DONE]` (or its
    error frame). GeneratorExit / CancelledError (the client went away) are not Exceptions: they
    leave the outcome at "disconnected" and propagate untouched.
    """
    outcome: StreamOutcome = "disconnected"
    error: BaseException | None = None
    try:
        async for chunk in response:
            choices = getattr(chunk, "choices", None) or []
            if any(getattr(choice, "finish_reason", None) for choice in choices):
                watch.saw_finish = True
            if getattr(chunk, "usage", None) is not None:
                watch.final_usage = usage_of(chunk)
                if strip_usage and not choices:
                    continue  # the usage chunk the proxy asked for on the client's behalf
            elif (hidden := _hidden_usage(chunk)) is not None:
                watch.final_usage = hidden  # where LiteLLM puts it when no usage chunk was asked for
            if watch.fell_back:
                watch.served.append(chunk)
            watch.delivered += 1
            yield chunk
        outcome = "complete"
    except Exception as exc:
        outcome, error = "failed", exc
        raise
    finally:
        try:
            on_end(watch, watch.end(response, outcome, error))
        except Exception as exc:  # recording must never change what the client gets
            log.error("llm_stream_record_failed", request_id=watch.request_id, error=repr(exc))
