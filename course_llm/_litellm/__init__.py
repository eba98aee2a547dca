"""The one door to LiteLLM: environment before import, and the rules course_llm adds to it.

- `core.py`: `load_litellm()` (sets LITELLM_LOCAL_MODEL_COST_MAP before `import litellm`, then
  installs the rules below), the callback list, and draining LiteLLM's logging worker;
- `retries.py`: retries by HTTP status, Retry-After waits with a bound;
- `context.py`: rows for the models LiteLLM's pre-call context check leaves out;
- `workarounds.py`: LiteLLM's per-request waste in its proxy, removed;
- `cache.py`: LiteLLM's response cache as the registry's `cache:` section asks for it.

Every other course_llm module reaches LiteLLM through the names re-exported here (only the
callback and `proxy/` also import LiteLLM's own modules).
"""

from course_llm._litellm.cache import cache_request_params, install_response_cache, tenant_namespace
from course_llm._litellm.context import CONTEXT_ERROR
from course_llm._litellm.core import (
    ALL_FALLBACKS_FAILED_LOG,
    add_callback,
    configure_environment,
    flush_logging_worker,
    load_litellm,
    passthrough_prefixes,
    pricing_parameters,
    remove_callback,
)
from course_llm._litellm.retries import (
    MAX_RETRY_WAIT_ATTRIBUTE,
    max_retry_wait_s,
    retry_after_s,
)
from course_llm._litellm.workarounds import (
    AUTH_MODULE,
    OTEL_LOGGER_MODULE,
    PATCH_MARK,
    SEED_DESTINATIONS,
    SEED_PARAMETERS,
    install_proxy_workarounds,
    otel_logger_importable,
)

__all__ = [
    "ALL_FALLBACKS_FAILED_LOG",
    "AUTH_MODULE",
    "CONTEXT_ERROR",
    "MAX_RETRY_WAIT_ATTRIBUTE",
    "OTEL_LOGGER_MODULE",
    "PATCH_MARK",
    "SEED_DESTINATIONS",
    "SEED_PARAMETERS",
    "add_callback",
    "cache_request_params",
    "configure_environment",
    "flush_logging_worker",
    "install_proxy_workarounds",
    "install_response_cache",
    "load_litellm",
    "max_retry_wait_s",
    "otel_logger_importable",
    "passthrough_prefixes",
    "pricing_parameters",
    "remove_callback",
    "retry_after_s",
    "tenant_namespace",
]
