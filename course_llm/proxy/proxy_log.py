"""The proxy's log: the LiteLLM lines that course_llm says better, and what it says instead.

LiteLLM's proxy logs, at ERROR:
- a request whose every model failed: the last attempt's exception and its traceback (about 55
  lines), after the Router's "Error occurred while trying to do fallbacks" (3 more). course_llm
  logs one `llm_request_failed` line listing every attempt instead (`log_all_failed`, called by the
  ProxyLogger's failure hook, which knows the attempts); the error messages stay in the rows.
- a request refused for its key (401) on a route the request guard (routes.py) does not stand in
  front of, or refused by a hook for its body (a 4xx HTTPException): two lines each. A refusal is
  the client's mistake, not the proxy's: one INFO `proxy_request_refused` line, as the guard logs.

And at every start, a WARNING that `custom_auth_run_common_checks` is unset: those checks read the
team and key records of LiteLLM's own database, which course_llm's proxy (one master key, no
LiteLLM database) does not have. It also prints (with `print`, not a logger) every deployment's
group name, one coloured line each, under "Proxy initialized with Config, Set models:": twenty
lines that `serve`'s banner already sums up. `quiet_model_list()` drops those lines from stdout
while the proxy starts; every other line passes.

`QuietProxyLog` is the logging filter on LiteLLM's proxy and router loggers that drops those
records (logging the replacement where there is one); every other record passes unchanged. Which
request a record is about comes from `CURRENT_REQUEST`, which the pre-call hook sets in the
request's own task, where LiteLLM writes those records.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import structlog
from starlette.exceptions import HTTPException

from course_llm._litellm import ALL_FALLBACKS_FAILED_LOG
from course_llm.errors import AllModelsFailedError

log = structlog.get_logger()

#: The course_llm request id of the request the current task serves (set by the pre-call hook).
CURRENT_REQUEST: ContextVar[str | None] = ContextVar("course_llm_current_request", default=None)

#: The loggers whose records QuietProxyLog judges.
LOGGERS = ("LiteLLM Proxy", "LiteLLM Router")
_REQUEST_EXCEPTION = "litellm.proxy.proxy_server._handle_llm_api_exception(): Exception occured"
_AUTH_EXCEPTION = "litellm.proxy.proxy_server.user_api_key_auth(): Exception occured"
_CUSTOM_AUTH_WARNING = "custom_auth is configured but 'custom_auth_run_common_checks' is not set"


def log_all_failed(error: AllModelsFailedError, status: int) -> None:
    """One line for a request whose every model failed: its attempts, and no error text, which
    could break the line in two (the rows hold it: `course-llm calls --request-id`)."""
    attempts = [
        f"#{a.attempt} {a.model_id} ({a.served_strategy}) {a.status_code or '-'} {a.error_class}"
        for a in error.attempts
    ]
    emit = log.error if status >= 500 else log.warning
    emit(
        "llm_request_failed",
        request_id=error.request_id,
        model=f"{error.action}/{error.strategy}",
        status=status,
        attempts=attempts,
    )


class QuietProxyLog(logging.Filter):
    """Drops LiteLLM's records that course_llm replaces (see the module docstring).

    `has_failed_attempts(request_id)` says whether a request has failed attempts and no success:
    when such a request ends in an exception, the failure hook logs `llm_request_failed`.
    """

    def __init__(self, has_failed_attempts: Callable[[str], bool]) -> None:
        super().__init__()
        self.has_failed_attempts = has_failed_attempts

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self._keep(record)
        except Exception:  # never lose a log line because of this filter
            return True

    def _keep(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if message.startswith(_CUSTOM_AUTH_WARNING):
            return False
        if message.startswith((_REQUEST_EXCEPTION, ALL_FALLBACKS_FAILED_LOG)):
            request_id = CURRENT_REQUEST.get()
            if request_id is not None and self.has_failed_attempts(request_id):
                return False
        if message.startswith((_REQUEST_EXCEPTION, _AUTH_EXCEPTION)):
            exception = next((a for a in record.args or () if isinstance(a, BaseException)), None)
            status = refusal_status(exception)
            if status is not None:
                log.info("proxy_request_refused", status=status, error=ascii(_detail(exception))[:200])
                return False
        return True


def refusal_status(exception: BaseException | None) -> int | None:
    """The 4xx status of a refusal by the proxy itself (course_llm's auth and hooks raise
    HTTPException, LiteLLM's checks ProxyException); None for anything else, such as an error
    a provider answered."""
    if isinstance(exception, HTTPException):
        status: Any = exception.status_code
    elif type(exception).__name__ == "ProxyException":
        status = getattr(exception, "code", None)
    else:
        return None
    try:
        code = int(status)
    except (TypeError, ValueError):
        return None
    return code if 400 <= code < 500 else None


def _detail(exception: BaseException | None) -> str:
    detail = getattr(exception, "detail", None) or getattr(exception, "message", None) or exception
    if isinstance(detail, dict):
        detail = detail.get("error", detail)
    return str(detail)


def install_quiet_proxy_log(has_failed_attempts: Callable[[str], bool]) -> None:
    """Put a QuietProxyLog on LiteLLM's proxy and router loggers (once per process), first: LiteLLM's
    own filter merges a record's arguments into its message, and QuietProxyLog reads them."""
    for name in LOGGERS:
        emitter = logging.getLogger(name)
        if not any(isinstance(existing, QuietProxyLog) for existing in emitter.filters):
            emitter.filters.insert(0, QuietProxyLog(has_failed_attempts))


#: The lines LiteLLM prints while it loads the config: its header, then one per deployment.
_MODEL_LIST_LINE = re.compile(
    r"\x1b\[32m(LiteLLM: Proxy initialized with Config, Set models:|    [^\n]*)\x1b\[0m"
)


class _WithoutModelList:
    """A text stream that writes through to `target`, except LiteLLM's model-list lines (`print`
    writes a line and its newline separately: the newline after a dropped line is dropped too)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._dropped = False

    def write(self, text: str) -> int:
        if self._dropped and text == "\n":
            self._dropped = False
            return len(text)
        self._dropped = _MODEL_LIST_LINE.fullmatch(text.rstrip("\n")) is not None
        if not self._dropped:
            self.target.write(text)
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding …
        return getattr(self.target, name)


def quiet_model_list() -> Callable[[], None]:
    """Drop LiteLLM's model-list print from stdout until the returned function is called."""
    original = sys.stdout
    sys.stdout = _WithoutModelList(original)

    def restore() -> None:
        if isinstance(sys.stdout, _WithoutModelList) and sys.stdout.target is original:
            sys.stdout = original

    return restore
