"""Retries by HTTP status, and Retry-After waits with a bound.

LiteLLM's `retry_policy` chooses retries by exception class; docs/architecture.md wants them by HTTP status
(an upstream 401 can surface as BadRequestError, a 403 as PermissionDeniedError, which the policy
does not know and which the Router retries when a group has several deployments). So course_llm
configures no retry_policy and wraps `Router.should_retry_this_error`: a permanent status is never
retried; everything else keeps LiteLLM's own decision. tests/test_routing.py pins the behaviour.

Retry waits are bounded (../shared/DESIGN.md, "Routing, second stage"): LiteLLM 1.106.2 waits for an
upstream's `Retry-After` of up to 60 s before a retry, waits again after the last retry failed
(when no attempt follows), and `retry_after: 0` bounds neither; a 429 with `retry-after: 20`
cost 41.9 s before the next chain. `_install_retry_wait_bound` makes a Retry-After above
`COURSE_LLM_MAX_RETRY_WAIT_S` end the model's attempts at once (the status-code rule raises, so
the chain moves on), caps every wait at that bound, and drops the wait after the last retry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from course_llm.errors import PERMANENT_STATUS_CODES, AttemptSkippedError

_PATCH_MARK = "_course_llm_status_code_rule"


def install_status_code_retry_rule(router_class: Any) -> None:
    original: Callable[..., Any] = router_class.should_retry_this_error
    if getattr(original, _PATCH_MARK, False):
        return

    def should_retry_this_error(self: Any, error: Exception, *args: Any, **kwargs: Any) -> Any:
        if getattr(error, "status_code", None) in PERMANENT_STATUS_CODES or isinstance(
            error, AttemptSkippedError
        ):
            raise error  # a skipped attempt is not retried either: the chain moves on at once
        wait = retry_after_s(error)
        if wait is not None and wait > max_retry_wait_s(self):
            raise error  # a longer Retry-After than course_llm waits: next model at once
        return original(self, error, *args, **kwargs)

    setattr(should_retry_this_error, _PATCH_MARK, True)
    router_class.should_retry_this_error = should_retry_this_error


#: Router attribute that overrides COURSE_LLM_MAX_RETRY_WAIT_S for one Router (tests, benchmarks).
MAX_RETRY_WAIT_ATTRIBUTE = "course_llm_max_retry_wait_s"
_WAIT_PATCH_MARK = "_course_llm_retry_wait_bound"


def max_retry_wait_s(router: Any = None) -> float:
    """The longest wait before a retry: the Router's own bound, else COURSE_LLM_MAX_RETRY_WAIT_S.

    Read when an attempt failed (never on a successful call), so `serve`, plain
    `litellm --config` and the facade all honour the environment of their process.
    """
    own = getattr(router, MAX_RETRY_WAIT_ATTRIBUTE, None)
    if isinstance(own, int | float):
        return float(own)
    from course_llm.settings import Settings

    return Settings().max_retry_wait_s


def retry_after_s(error: Exception) -> float | None:
    """The Retry-After of an upstream error in seconds, as LiteLLM reads it; None without one."""
    from litellm.utils import _get_retry_after_from_exception_header

    headers = getattr(error, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    value = _get_retry_after_from_exception_header(headers)
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def install_retry_wait_bound(router_class: Any) -> None:
    """Workaround: LiteLLM waits up to 60 s for Retry-After, and once more after the last retry.

    LiteLLM behaviour (litellm 1.106.2, router.py `async_function_with_retries`): it sleeps
    `_time_to_sleep_before_retry(...)` before the first retry and again after every failed retry,
    the last included (`remaining_retries=0`, when no attempt follows); the sleep is the
    upstream's Retry-After when 0 < it <= 60 (utils.py `calculate_retry_after`), whatever the
    Router's `retry_after`, and 0 (no wait at all) when the group has other healthy deployments,
    which in course_llm's ordered chains means the retry hits the same model at once. The
    wrapper keeps LiteLLM's decision but: no wait when no attempt follows; the upstream's
    Retry-After when it has one (it is within the bound, or the status-code rule already moved
    on); never more than the bound. Idempotent; LiteLLM's function is its `__wrapped__`.
    """
    original: Callable[..., Any] = router_class._time_to_sleep_before_retry
    if getattr(original, _WAIT_PATCH_MARK, False):
        return
    signature = inspect.signature(original)
    if not {"e", "remaining_retries"} <= set(signature.parameters):
        return  # LiteLLM changed the function: leave it alone (tests/test_routing_stage2.py says so)

    def _time_to_sleep_before_retry(self: Any, *args: Any, **kwargs: Any) -> float:
        call = signature.bind(self, *args, **kwargs)
        if call.arguments.get("remaining_retries", 1) <= 0:
            return 0.0  # LiteLLM's wait after the last failure: nothing follows it
        bound = max_retry_wait_s(self)
        header = retry_after_s(call.arguments["e"])
        if header is not None and header > 0:
            return min(header, bound)
        return min(float(original(self, *args, **kwargs)), bound)

    _time_to_sleep_before_retry.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(_time_to_sleep_before_retry, _WAIT_PATCH_MARK, True)
    router_class._time_to_sleep_before_retry = _time_to_sleep_before_retry
