"""One CallLogger for every facade router of the process, and the table that routes its rows.

LiteLLM keeps at most 100 callbacks (`litellm.callbacks`) and refuses the 101st with only a
warning, so a logger per ModelRouter left the 101st open router logging nothing. Instead one SDK
logger is installed, checked again each time a router opens (something may have emptied LiteLLM's
list since), and every open router registers its sink under its own id.

The facade puts that id into each call's metadata (`ROUTER_ID_KEY`, inside the caller metadata
that becomes the row's metadata column); `RouterDispatch` takes it out of the row again and hands
the row to that router. Carrying the id with the call, rather than keeping a request id → router
map, needs no clean-up when a request ends, whichever hook produces the row: one on the request
path or LiteLLM's background worker, possibly after `complete()` has returned.

A row whose router is no longer open is counted (`rows_unrouted`) and logged, never written
elsewhere: a router's `aclose()` delivers LiteLLM's pending events before it unregisters, so only
a call still running while its router closes can end up there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from course_llm._litellm import add_callback, remove_callback
from course_llm.recording.callback import EXTRA_KEY, CallLogger, Gate, metadata_of
from course_llm.recording.records import CallRecord

__all__ = ["ROUTER_ID_KEY", "SDK_ROUTER_TAG", "RouterDispatch", "router_dispatch"]

log = structlog.get_logger()

#: The `ROUTER_TAG` every facade call carries: it tells the SDK logger the call is a facade's.
SDK_ROUTER_TAG = "course_llm-sdk"
#: Key of the router id inside the caller metadata of a facade call (removed before the row is
#: stored).
ROUTER_ID_KEY = "course_llm_router_id"

Sink = Callable[[CallRecord], None]


class RouterDispatch:
    """The process's SDK logger and the open routers it delivers rows to."""

    def __init__(self) -> None:
        self._sinks: dict[str, Sink] = {}
        self._gates: dict[str, Gate] = {}
        self.logger = CallLogger(self.dispatch, source="sdk", router_tag=SDK_ROUTER_TAG, gate=self.gate)
        self.rows_unrouted = 0

    def register(self, router_id: str, sink: Sink, gate: Gate | None = None) -> None:
        """Deliver the rows of calls carrying `router_id` to `sink`, from now until `unregister`;
        `gate` decides whether each of their attempts may go upstream (CallLogger's `Gate`).

        Raises CourseLLMError when LiteLLM does not take the logger (its callback list is full).
        """
        add_callback(self.logger)  # a no-op when installed; verified either way
        self._sinks[router_id] = sink
        if gate is not None:
            self._gates[router_id] = gate

    def unregister(self, router_id: str) -> None:
        """Stop delivering to `router_id`; the last router out takes the logger out of LiteLLM."""
        self._sinks.pop(router_id, None)
        self._gates.pop(router_id, None)
        if not self._sinks:
            remove_callback(self.logger)

    @property
    def open_routers(self) -> int:
        return len(self._sinks)

    def gate(self, kwargs: Mapping[str, Any], model_id: str) -> tuple[str, str] | None:
        """The logger's gate: the gate of the router that made the call, if it has one."""
        extra = metadata_of(kwargs).get(EXTRA_KEY)
        router_id = extra.get(ROUTER_ID_KEY) if isinstance(extra, Mapping) else None
        gate = self._gates.get(router_id) if isinstance(router_id, str) else None
        return gate(kwargs, model_id) if gate is not None else None

    def dispatch(self, record: CallRecord) -> None:
        """The logger's sink: hand `record` to the router that made the call, or count it unrouted."""
        metadata = record.metadata
        router_id = metadata.pop(ROUTER_ID_KEY, None) if isinstance(metadata, dict) else None
        sink = self._sinks.get(router_id) if isinstance(router_id, str) else None
        if sink is None:
            self.rows_unrouted += 1
            log.error(
                "llm_call_row_unrouted",
                request_id=record.request_id,
                router_id=router_id,
                rows_unrouted=self.rows_unrouted,
            )
            return
        sink(record)


_dispatch: RouterDispatch | None = None


def router_dispatch() -> RouterDispatch:
    """The process-wide RouterDispatch, made on first use (nothing is built at import)."""
    global _dispatch
    if _dispatch is None:
        _dispatch = RouterDispatch()
    return _dispatch
