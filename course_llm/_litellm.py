"""The one door to LiteLLM: environment before import, and the rules course_llm adds to its Router.

`import litellm` downloads the model cost map unless LITELLM_LOCAL_MODEL_COST_MAP is set, so every
course_llm module that needs LiteLLM gets it from `load_litellm()`, which sets that first.

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
tests/test_routing_stage2.py pins it; bench/bench_retry_wait.py times it.

Workarounds for LiteLLM's per-request waste (measured on litellm 1.106.2 with py-spy against a
fake upstream; tests/test_litellm_workarounds.py pins each and fails when LiteLLM changes):
- the failing OTel logger import that LiteLLM's proxy auth retries on every request: a guarded,
  idempotent no-op in its place (`install_proxy_workarounds`, below);
- the cost-map index LiteLLM rebuilds on every call when prices come as call arguments: removed
  by configuration, course_llm/routing/compiler.py puts the prices in `model_info` (its module
  docstring says why).
`load_litellm()` installs them, so both `course-llm serve` and plain `litellm --config` with
course_llm's callback get them (the callback imports course_llm once LiteLLM's proxy is loaded).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from course_llm.errors import CourseLLMError

#: Statuses that skip to the next model at once (docs/architecture.md, "Routing semantics").
PERMANENT_STATUS_CODES = frozenset({400, 401, 403, 404})
#: How the ERROR LiteLLM's Router logs once every fallback of a request failed begins
#: (litellm/router.py, `async_function_with_fallbacks`); the facade and the proxy replace it.
ALL_FALLBACKS_FAILED_LOG = "litellm.router.py::async_function_with_fallbacks() - Error occurred"

_PATCH_MARK = "_course_llm_status_code_rule"


def configure_environment() -> None:
    """Environment LiteLLM reads at import: never reach for the network for the cost map."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def load_litellm() -> ModuleType:
    """Import LiteLLM with course_llm's environment and install the status-code retry rule.

    Also installs the workarounds for LiteLLM's per-request waste (module docstring); those for
    the proxy only once LiteLLM's proxy is loaded.
    """
    configure_environment()
    import litellm
    from litellm.router import Router

    _install_status_code_retry_rule(Router)
    _install_retry_wait_bound(Router)
    install_proxy_workarounds()
    return litellm


@functools.cache
def pricing_parameters() -> frozenset[str]:
    """Every per-request pricing key LiteLLM takes from a call's arguments (litellm 1.106.2:
    `CustomPricingLiteLLMParams`, read by main.py `_register_custom_pricing_for_request`, which
    registers them process-wide). Derived from LiteLLM's own class, so a new key is covered."""
    load_litellm()
    from litellm.types.utils import CustomPricingLiteLLMParams

    return frozenset(CustomPricingLiteLLMParams.model_fields)


def _install_status_code_retry_rule(router_class: Any) -> None:
    original: Callable[..., Any] = router_class.should_retry_this_error
    if getattr(original, _PATCH_MARK, False):
        return

    def should_retry_this_error(self: Any, error: Exception, *args: Any, **kwargs: Any) -> Any:
        if getattr(error, "status_code", None) in PERMANENT_STATUS_CODES:
            raise error
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


def _install_retry_wait_bound(router_class: Any) -> None:
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


#: LiteLLM hands a finished call's success log to its worker from a task of this name, created
#: with asyncio.create_task when the call returns; until it has run, the worker's queue is empty.
_ENQUEUE_TASK = "_client_async_logging_helper"


async def flush_logging_worker() -> None:
    """Wait until LiteLLM delivered the success events of every call finished so far."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    current = asyncio.current_task()
    enqueuing = [
        task
        for task in asyncio.all_tasks()
        if task is not current
        and not task.done()
        and getattr(task.get_coro(), "__name__", "") == _ENQUEUE_TASK
    ]
    if enqueuing:
        await asyncio.gather(*enqueuing, return_exceptions=True)
    await asyncio.sleep(0)
    await GLOBAL_LOGGING_WORKER.flush()


def add_callback(callback: Any) -> None:
    """Install a logger in each LiteLLM list that routes events to it, and check LiteLLM took it.

    `litellm.callbacks` carries the hooks on the request path; a call's set-up copies it into the
    per-event lists (background success and failure events), under the same cap. Each LiteLLM
    Router adds its own entries to those lists, so by the first call they may be full: adding to
    every list now, while there is room, turns a silently missing event into an error here.

    LiteLLM refuses a callback with only a log line when a list is full (100 entries) or holds an
    equal logger already (same class and public scalar attributes); a logger missing from a list
    records nothing for that kind of event, so either is a CourseLLMError.
    """
    litellm = load_litellm()
    manager = litellm.logging_callback_manager
    adders: dict[str, Callable[[Any], None]] = {
        "callbacks": manager.add_litellm_callback,
        "_async_success_callback": manager.add_litellm_async_success_callback,
        "_async_failure_callback": manager.add_litellm_async_failure_callback,
        "success_callback": manager.add_litellm_success_callback,
        "failure_callback": manager.add_litellm_failure_callback,
    }
    missing: list[str] = []
    for name, add in adders.items():
        if not _holds(getattr(litellm, name), callback):
            add(callback)
            if not _holds(getattr(litellm, name), callback):
                missing.append(name)
    if missing:
        from litellm.constants import MAX_CALLBACKS

        sizes = ", ".join(f"litellm.{name} holds {len(getattr(litellm, name))}" for name in missing)
        raise CourseLLMError(
            f"LiteLLM did not install course_llm's {type(callback).__name__}: {sizes} callbacks "
            f"(LiteLLM takes at most {MAX_CALLBACKS}, env LITELLM_MAX_CALLBACKS), or an equal logger "
            "already; calls would not be recorded"
        )


def _holds(callbacks: Any, callback: Any) -> bool:
    return isinstance(callbacks, list) and any(existing is callback for existing in callbacks)


def remove_callback(callback: Any) -> None:
    """Take a logger out of every LiteLLM callback list (assigning the list does not)."""
    litellm = load_litellm()
    for name in (
        "callbacks",
        "success_callback",
        "failure_callback",
        "_async_success_callback",
        "_async_failure_callback",
        "input_callback",
        "service_callback",
    ):
        callbacks = getattr(litellm, name, None)
        if isinstance(callbacks, list):
            while callback in callbacks:
                callbacks.remove(callback)


# -- workarounds for LiteLLM's per-request waste (module docstring) ------------------------------

#: Marks a function course_llm put in place of LiteLLM's; the original is its `__wrapped__`.
PATCH_MARK = "_course_llm_workaround"

#: LiteLLM's proxy auth module, and the step of it that retries a failing import per request.
AUTH_MODULE = "litellm.proxy.auth.user_api_key_auth"
SEED_DESTINATIONS = "_seed_request_destinations"
#: The module that step imports first; it needs `opentelemetry.sdk`, an optional dependency.
OTEL_LOGGER_MODULE = "litellm.integrations.otel.logger"
#: The parameters of `_seed_request_destinations` the no-op stands in for.
SEED_PARAMETERS = ("user_api_key_dict", "request")


#: Workaround name -> whether it is in place, for each one already decided in this process.
_decided: dict[str, bool] = {}


def install_proxy_workarounds() -> list[str]:
    """Install every workaround that applies now; the names of those in place after the call.

    Safe to call any number of times. A workaround for a proxy module waits until LiteLLM's
    proxy has imported that module (the SDK facade never does, and should not pay for it).
    """
    auth = sys.modules.get(AUTH_MODULE)
    if auth is not None and SEED_DESTINATIONS not in _decided:
        # Decided once per process: `load_litellm()` runs on some request paths too.
        _decided[SEED_DESTINATIONS] = _install_otel_seed_noop(auth)
    return [name for name, installed in _decided.items() if installed]


def otel_logger_importable() -> bool:
    """Whether LiteLLM's OpenTelemetry V2 logger imports here (it needs opentelemetry-sdk)."""
    try:
        importlib.import_module(OTEL_LOGGER_MODULE)
    except ImportError:
        return False
    return True


def _install_otel_seed_noop(auth: Any) -> bool:
    """Workaround: LiteLLM retries a failing import of its OTel logger on every request.

    LiteLLM behaviour (measured on litellm 1.106.2): proxy/auth/user_api_key_auth.py
    `user_api_key_auth` calls `_seed_request_destinations` on every request, custom auth
    included. That function first does `from litellm.integrations.otel.logger import
    fan_out_provider`; without `opentelemetry.sdk` installed the import fails, the exception is
    caught and logged at debug, and Python keeps no record of a failed import, so the next
    request searches for and executes the module again: 3-6 % of the proxy's CPU, 0.4-0.5 ms per
    request. The function only anchors per-tenant OTel destinations, which cannot exist without
    that module, so when the import fails once it always fails and the step does nothing: a
    no-op in its place changes nothing but the CPU (and a debug log line per request).

    Installed only when the import fails; with opentelemetry-sdk present LiteLLM's own function
    stays. Returns whether the no-op is in place.
    """
    original: Callable[..., Any] | None = getattr(auth, SEED_DESTINATIONS, None)
    if original is None:
        return False
    if getattr(original, PATCH_MARK, False):
        return True
    if tuple(inspect.signature(original).parameters) != SEED_PARAMETERS:
        return False  # LiteLLM changed the function: leave it alone (the tests say so)
    if otel_logger_importable():
        return False

    def _seed_request_destinations(user_api_key_dict: Any, request: Any = None) -> None:
        """No-op: LiteLLM's OTel logger cannot be imported here (course_llm/_litellm.py)."""
        return None

    _seed_request_destinations.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(_seed_request_destinations, PATCH_MARK, True)
    setattr(auth, SEED_DESTINATIONS, _seed_request_destinations)
    return True


def install_response_cache(kind: str, redis_url: str | None = None) -> None:
    """LiteLLM's response cache (`litellm.cache`) for the facade's requests, opt-in per request.

    LiteLLM keeps one cache per process, and with the default mode every LiteLLM call of the
    process would read and fill it, an application's own calls included. So course_llm makes it
    in LiteLLM's `default_off` mode, and only requests that carry `cache_request_params` use it
    (the facade's, when the registry has a `cache:` section). A cache the application set up
    already is kept as it is. Its key is LiteLLM's: the model group (action/strategy), the
    messages and the model parameters, not the caller's metadata.
    """
    litellm = load_litellm()
    if getattr(litellm, "cache", None) is not None:
        return
    if kind == "redis":
        if not redis_url:
            raise CourseLLMError("the registry's cache type redis needs COURSE_LLM_REDIS_URL")
        litellm.cache = litellm.Cache(type="redis", url=redis_url, mode="default_off")  # type: ignore[attr-defined]
    else:
        litellm.cache = litellm.Cache(type="local", mode="default_off")  # type: ignore[attr-defined]


def cache_request_params(ttl_s: float) -> dict[str, Any]:
    """The call arguments that make one request use the response cache, keeping hits `ttl_s`.

    LiteLLM's Router passes `caching=<its cache_responses>` (False) to every call unless the call
    says otherwise, and a `default_off` cache is used only with `cache={"use-cache": True}`.
    """
    return {"caching": True, "cache": {"use-cache": True, "ttl": ttl_s}}
