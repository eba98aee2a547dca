"""Secrets stay out of log lines: LiteLLM's, uvicorn's and our own structlog events.

`install_log_masking()` is called by the entry points (the `course-llm` CLI, the proxy callback
module that LiteLLM imports in `course-llm serve` and in plain `litellm --config`). It puts a
`SecretMaskingFilter` on each logger in `LOGGERS` and `mask_structlog_event` into structlog's
chain, just before the renderer. Both apply `mask_secrets` (course_llm/recording/secrets.py):
the configured values and the key shapes. Measured in the proxy before: LiteLLM printed a Gemini
key 9 times in its log, in exception text and tracebacks, which the filter now masks too.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any

from course_llm.recording.secrets import MASK, mask_deep, mask_secrets

__all__ = ["LOGGERS", "SecretMaskingFilter", "install_log_masking", "mask_structlog_event"]

#: Loggers whose records get the filter. A filter on a logger sees only the records logged on that
#: very logger (not its children, not records propagating through it), so each emitter is named.
LOGGERS = (
    "LiteLLM",
    "LiteLLM Proxy",
    "LiteLLM Proxy.stdout",
    "LiteLLM Router",
    "litellm.proxy.health_check",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "httpx",
    "asyncio",
    "",  # the root logger
)


_MASKED = "course_llm_masked"


def _mask_arg(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if value is None or isinstance(value, int | float):
        return value
    text = str(value)
    masked = mask_secrets(text)
    return value if masked == text else masked


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in a log record's message, arguments, traceback and stack; drops nothing.

    Arguments are masked one by one rather than merged into the message, since some formatters
    read them (uvicorn's access log unpacks `record.args`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MASKED, False):  # a logger's filter and then its handler's
            return True
        setattr(record, _MASKED, True)
        try:
            if isinstance(record.msg, str):
                record.msg = mask_secrets(record.msg)
            elif record.msg is not None and not isinstance(record.msg, int | float):
                record.msg = _mask_arg(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_mask_arg(arg) for arg in record.args)
            elif isinstance(record.args, Mapping):
                record.args = {key: _mask_arg(arg) for key, arg in record.args.items()}
            if record.exc_info and record.exc_info[1] is not None:
                text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
                masked = mask_secrets(text)
                if masked != text:  # keep exc_info for other consumers when it is clean
                    record.exc_info, record.exc_text = None, masked
            elif record.exc_text:
                record.exc_text = mask_secrets(record.exc_text)
            if record.stack_info:
                record.stack_info = mask_secrets(record.stack_info)
        except Exception:  # a log line must never fail because of us; mask it whole instead
            record.msg, record.args = MASK, None
        return True


def mask_structlog_event(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: secrets masked in every value, a traceback rendered and masked."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            event_dict["exception"] = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    for key, value in event_dict.items():
        if isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = mask_deep(value, mask_secrets)
        else:
            event_dict[key] = _mask_arg(value)
    return event_dict


_FILTER = SecretMaskingFilter()


def install_log_masking() -> None:
    """Mask secrets in LiteLLM's, uvicorn's and the root logger's records, and in structlog's
    output (the processor goes just before the renderer). Idempotent; call from entry points.

    The filter goes on each logger and on the handlers it has now (LiteLLM's shared handler, once
    LiteLLM is imported), which also see records propagating from child loggers.
    """
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for filterer in (logger, *logger.handlers):
            if _FILTER not in filterer.filters:
                filterer.addFilter(_FILTER)
    import structlog

    processors = list(structlog.get_config()["processors"])
    if mask_structlog_event not in processors:
        processors.insert(max(len(processors) - 1, 0), mask_structlog_event)
        structlog.configure(processors=processors)
