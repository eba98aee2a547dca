"""LiteLLM's response cache, as the registry's `cache:` section asks for it in the facade.

The proxy gets the same cache from its compiled config (course_llm/routing/compiler.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

from course_llm._litellm.core import load_litellm
from course_llm.errors import CourseLLMError


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


def cache_request_params(ttl_s: float, tenant_id: str | None = None) -> dict[str, Any]:
    """The call arguments that make one request use the response cache, keeping hits `ttl_s`.

    LiteLLM's Router passes `caching=<its cache_responses>` (False) to every call unless the call
    says otherwise, and a `default_off` cache is used only with `cache={"use-cache": True}`.
    A tenant's requests get a namespace of their own (`tenant_namespace`).
    """
    controls: dict[str, Any] = {"use-cache": True, "ttl": ttl_s}
    if (namespace := tenant_namespace(tenant_id)) is not None:
        controls["namespace"] = namespace
    return {"caching": True, "cache": controls}


def tenant_namespace(tenant_id: str | None) -> str | None:
    """The cache namespace of a tenant's requests (None: no tenant, the shared namespace).

    LiteLLM's cache key is the model group, the messages and the model parameters: two tenants
    asking the same question would get each other's answers. A namespace per tenant (LiteLLM
    prefixes the key with it) keeps them apart; hashed, so no tenant id reaches a Redis key.
    """
    if not tenant_id:
        return None
    return "course_llm-tenant-" + hashlib.sha256(tenant_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
