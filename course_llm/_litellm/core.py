"""Importing LiteLLM with course_llm's environment, and the callback list every logger joins.

`import litellm` downloads the model cost map unless LITELLM_LOCAL_MODEL_COST_MAP is set, so every
course_llm module that needs LiteLLM gets it from `load_litellm()`, which sets that first and puts
course_llm's rules in place on LiteLLM's Router (`retries.py`, `context.py`) and its proxy
(`workarounds.py`).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from course_llm._litellm.context import install_context_skip_report
from course_llm._litellm.retries import install_retry_wait_bound, install_status_code_retry_rule
from course_llm._litellm.workarounds import install_proxy_workarounds
from course_llm.errors import CourseLLMError

#: How the ERROR LiteLLM's Router logs once every fallback of a request failed begins
#: (litellm/router.py, `async_function_with_fallbacks`); the facade and the proxy replace it.
ALL_FALLBACKS_FAILED_LOG = "litellm.router.py::async_function_with_fallbacks() - Error occurred"


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

    install_status_code_retry_rule(Router)
    install_retry_wait_bound(Router)
    install_context_skip_report(litellm)
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


#: The LiteLLM proxy feature whose routes forward a request to a provider as it is (litellm
#: 1.106.2: `litellm/proxy/_lazy_features.py`, mounted on the first request under a prefix).
PASSTHROUGH_FEATURE = "llm_passthrough"
#: Prefixes refused even if LiteLLM stops listing them there (the ones of 1.106.2 for the
#: providers a registry names most).
PASSTHROUGH_PREFIXES = tuple(
    """/openai/ /openai_passthrough/ /anthropic/ /gemini/ /vertex_ai/ /vertex-ai/ /bedrock/ /azure/
    /azure_ai/ /mistral/ /cohere/""".split()  # noqa: SIM905 (a word list reads better)
)


@functools.cache
def passthrough_prefixes() -> tuple[str, ...]:
    """The path prefixes of LiteLLM's provider pass-through routes, which send a client's request
    to the provider with the proxy's own credentials, past the Router and its hooks."""
    configure_environment()
    from litellm.proxy import _lazy_features

    features = getattr(_lazy_features, "LAZY_FEATURES", ())
    listed = [f.path_prefixes for f in features if getattr(f, "name", None) == PASSTHROUGH_FEATURE]
    return tuple(sorted({*PASSTHROUGH_PREFIXES, *(prefix for group in listed for prefix in group)}))


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
