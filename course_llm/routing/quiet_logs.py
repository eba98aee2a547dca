"""Keep LiteLLM from printing what the facade already reports when a request fails.

When every model of a request failed, LiteLLM's Router logs an ERROR whose text holds the last
attempt's whole exception chain (a traceback of a few hundred lines, for a missing API key too)
before it raises. The facade raises AllModelsFailedError right after, carrying every attempt and
its status, so that log line only buries the error the caller gets.

`facade_call()` marks the calls the facade makes (a context variable, so concurrent calls of other
code in the same process are not affected); a filter on LiteLLM's Router logger drops that one
message during them. Every other LiteLLM log line passes unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from course_llm._litellm import ALL_FALLBACKS_FAILED_LOG

__all__ = ["facade_call"]

#: LiteLLM's Router logger (litellm/_logging.py, `verbose_router_logger`).
_ROUTER_LOGGER = "LiteLLM Router"

_in_facade_call: ContextVar[bool] = ContextVar("course_llm_in_facade_call", default=False)


class _FacadeFailureFilter(logging.Filter):
    """Drops the Router's all-fallbacks-failed ERROR while a facade call runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_in_facade_call.get() and str(record.msg).startswith(ALL_FALLBACKS_FAILED_LOG))


_filter = _FacadeFailureFilter()


@contextmanager
def facade_call() -> Iterator[None]:
    """Mark the code inside as a facade call (installs the filter on first use)."""
    logger = logging.getLogger(_ROUTER_LOGGER)
    if _filter not in logger.filters:
        logger.addFilter(_filter)
    token = _in_facade_call.set(True)
    try:
        yield
    finally:
        _in_facade_call.reset(token)
