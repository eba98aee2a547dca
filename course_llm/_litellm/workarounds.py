"""Workarounds for LiteLLM's per-request waste in its proxy.


Workarounds for LiteLLM's per-request waste (measured on litellm 1.106.2 with py-spy against a
fake upstream; tests/test_litellm_workarounds.py pins each and fails when LiteLLM changes):
- the failing OTel logger import that LiteLLM's proxy auth retries on every request: a guarded,
  idempotent no-op in its place (`install_proxy_workarounds`, below);
- the cost-map index LiteLLM rebuilds on every call when prices come as call arguments: removed
  by configuration, course_llm/routing/compiler.py puts the prices in `model_info` (its module
  docstring says why).
`load_litellm()` installs them, so both `course-llm serve` and plain `litellm --config` with
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

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
        """No-op: LiteLLM's OTel logger cannot be imported here (course_llm/_litellm/workarounds.py)."""
        return None

    _seed_request_destinations.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(_seed_request_destinations, PATCH_MARK, True)
    setattr(auth, SEED_DESTINATIONS, _seed_request_destinations)
    return True
