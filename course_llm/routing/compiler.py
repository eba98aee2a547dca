"""Compile a validated registry into LiteLLM Router configuration. A pure function: no I/O.

Each action×strategy chain becomes one model group `<action>/<strategy>` whose deployments carry
`litellm_params.order` 1, 2, 3 … in chain order. LiteLLM tries order 1 first and moves to the next
order level when a model fails, then follows the group's cross-group `fallbacks` (the action's
`default` chain, then the optional fallback strategy). Measured in ../shared/LITELLM_NOTES.md and
pinned by tests/test_routing.py.

Retries: `num_retries = max_attempts - 1` attempts more on the same model for transient errors.
Permanent errors (400, 401, 403, 404) are never retried: `course_llm._litellm` installs that rule,
because LiteLLM's own `retry_policy` classifies by exception class, not by status code.
Context-window and content-policy 400s move on down the chain like the others, through
LiteLLM's `context_window_fallbacks` / `content_policy_fallbacks` (`_rest_of_chain` says why).
Cooldowns are off: every request walks its chain in order, so each attempt is a row and the
chain a user configured is the chain that runs. `disable_provider` is the run-time switch.

Prices: a call costs its tokens times the registry's `cost_per_1k`, whatever the provider
caches. So each deployment carries the input price for cached prompt tokens too (cache reads and
cache writes). LiteLLM asks for those two prices on every model missing from its own cost map,
and without them warns at every start-up (`register_model … cache cost`) and prices cached
tokens at 0.

The prices sit in `model_info`, not in `litellm_params` (measured on litellm 1.106.2). The Router
registers a deployment's prices from either place once, when it adds the deployment
(router.py `Router._deployment_model_cost_payload`), and prices a call from that entry whenever
model_info names a price (litellm_logging.py `use_custom_pricing_for_model`). But prices in
`litellm_params` reach `litellm.completion` as arguments, and main.py
`_register_custom_pricing_for_request` then calls `register_model` on every call; that empties
LiteLLM's case-insensitive cost-map index and its model-info caches
(utils.py `_invalidate_model_cost_lowercase_map`), so the next cost lookup rebuilds an index of
the whole cost map (`_rebuild_model_cost_lowercase_map`): about 1 ms of CPU per request.
tests/test_litellm_workarounds.py pins both halves: the same `response_cost`, and no rebuild.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from course_llm.control.sections import CacheConfig
from course_llm.routing.registry import DEFAULT_STRATEGY, ModelConfig, Registry

#: LiteLLM resolves this dotted path to the proxy's logger instance (course_llm/proxy/callback.py).
PROXY_CALLBACK = "course_llm.proxy.callback.logger"
#: The proxy's auth function: the master key only, 401 otherwise (course_llm/proxy/auth.py).
PROXY_AUTH = "course_llm.proxy.auth.user_api_key_auth"
MASTER_KEY_REF = "os.environ/LITELLM_MASTER_KEY"
#: Top-level key of the proxy config holding the registry's control sections (LiteLLM ignores it).
CONTROLS_KEY = "course_llm"
#: Where the proxy's Redis (response cache, router state) is (settings.py `redis_url`).
REDIS_URL_ENV = "COURSE_LLM_REDIS_URL"
#: Seconds LiteLLM's router may wait for that Redis (a connect or a command).
ROUTER_REDIS_TIMEOUT_S = 0.5


def group_name(action: str, strategy: str) -> str:
    return f"{action}/{strategy}"


def deployment_id(action: str, strategy: str, model_id: str) -> str:
    """The deployment id LiteLLM reports per attempt: `<action>/<strategy>/<model id>`."""
    return f"{action}/{strategy}/{model_id}"


def parse_deployment_id(value: str) -> tuple[str, str, str] | None:
    """Inverse of deployment_id; None for ids course_llm did not make."""
    parts = value.split("/", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def _per_token(per_1k: float) -> float:
    # Decimal keeps 0.0003/1000 at 3e-07 instead of 2.9999999999999997e-07 in the golden file.
    return float(Decimal(str(per_1k)) / 1000)


def _deployment(action: str, strategy: str, order: int, model: ModelConfig) -> dict[str, Any]:
    input_per_token = _per_token(model.cost_per_1k.input)
    params: dict[str, Any] = {
        "model": model.litellm_model,
        "api_key": f"os.environ/{model.key_env}",
        "order": order,
    }
    if model.api_base:
        params["api_base"] = model.api_base
    return {
        "model_name": group_name(action, strategy),
        "litellm_params": params,
        "model_info": {
            "id": deployment_id(action, strategy, model.id),
            "course_llm_model_id": model.id,
            "course_llm_provider": model.provider,
            "course_llm_cost_per_1k_input": model.cost_per_1k.input,
            "course_llm_cost_per_1k_output": model.cost_per_1k.output,
            "max_input_tokens": model.max_context,
            # LiteLLM's prices, in model_info so they are registered once (module docstring).
            "input_cost_per_token": input_per_token,
            "output_cost_per_token": _per_token(model.cost_per_1k.output),
            # Cached prompt tokens are prompt tokens at the registry's price (module docstring).
            "cache_read_input_token_cost": input_per_token,
            "cache_creation_input_token_cost": input_per_token,
        },
    }


def _fallback_strategies(strategy: str, fallback_strategy: str | None, available: list[str]) -> list[str]:
    order = [DEFAULT_STRATEGY, fallback_strategy] if fallback_strategy else [DEFAULT_STRATEGY]
    return [s for s in order if s is not None and s != strategy and s in available]


def _rest_of_chain(group: str, chain_sizes: dict[str, int]) -> list[dict[str, Any]]:
    """The chain's models after the first, as LiteLLM's own order fallbacks name them.

    LiteLLM behaviour (litellm 1.106.2, router.py `async_function_with_fallbacks_common_utils`):
    a failed attempt moves on to the group's next `order` level through fallback entries
    `{"model": group, "_target_order": n}`, but not for `ContextWindowExceededError` and
    `ContentPolicyViolationError` (`_skip_order_fallback`). Those follow `context_window_fallbacks`
    / `content_policy_fallbacks` instead, and without them the cross-group `fallbacks`: so a
    context-window 400 on a default chain's first model ended the request, and one on a quality
    chain jumped to the default chain. Compiling both lists as the rest of the chain in the same
    entry form, then the cross-group fallbacks, makes them walk on like any other permanent
    error. An entry already tried for the request (a level reached by an ordinary failure
    before) is skipped by LiteLLM (`run_async_fallback`, `attempted_targets`), so the same list
    serves whichever level failed.
    """
    return [{"model": group, "_target_order": order} for order in range(2, chain_sizes[group] + 1)]


def compile_router_config(
    registry: Registry,
    *,
    max_attempts: int = 2,
    fallback_strategy: str | None = None,
    timeout_s: float = 600.0,
    disabled_providers: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """`{"model_list": [...], "router_settings": {...}}` for `litellm.Router(**...)`.

    Models of `disabled_providers` are left out of every chain; a chain left empty has no group.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    model_list: list[dict[str, Any]] = []
    chain_sizes: dict[str, int] = {}
    strategies: dict[str, list[str]] = {}
    for action, strategy, model_ids in registry.chains():
        models = [
            registry.models[m] for m in model_ids if registry.models[m].provider not in disabled_providers
        ]
        if not models:
            continue
        strategies.setdefault(action, []).append(strategy)
        chain_sizes[group_name(action, strategy)] = len(models)
        model_list.extend(_deployment(action, strategy, i, m) for i, m in enumerate(models, start=1))

    fallbacks: list[dict[str, list[str]]] = []
    same_chain_fallbacks: list[dict[str, list[Any]]] = []
    longest_walk = 1
    for action, available in strategies.items():
        for strategy in available:
            targets = [
                group_name(action, s) for s in _fallback_strategies(strategy, fallback_strategy, available)
            ]
            if targets:
                fallbacks.append({group_name(action, strategy): targets})
            walk_on = _rest_of_chain(group_name(action, strategy), chain_sizes) + targets
            if walk_on:
                same_chain_fallbacks.append({group_name(action, strategy): walk_on})
            walk = chain_sizes[group_name(action, strategy)] + sum(chain_sizes[t] for t in targets)
            longest_walk = max(longest_walk, walk)

    return {
        "model_list": model_list,
        "router_settings": {
            "num_retries": max_attempts - 1,
            "retry_after": 0,
            "disable_cooldowns": True,
            # A model whose max_context is below the prompt's token count is not tried; LiteLLM
            # drops it without a word, so course_llm/_litellm/context.py makes each skip a row.
            "enable_pre_call_checks": True,
            "fallbacks": fallbacks,
            # Context-window and content-policy 400s walk on like any permanent error: the rest of
            # the chain, then the same cross-group fallbacks (`_rest_of_chain` says why).
            "context_window_fallbacks": same_chain_fallbacks,
            "content_policy_fallbacks": copy.deepcopy(same_chain_fallbacks),  # no YAML alias
            # Each model after the first is one fallback hop; allow the longest walk there is.
            "max_fallbacks": max(longest_walk - 1, 1),
            "timeout": timeout_s,
            # A bare action name means its default strategy (`model="video_analysis"`). LiteLLM
            # 1.106.2 follows an alias's deployments but not its target's `fallbacks`
            # (BerriAI/litellm#10317), so the proxy's pre-call hook sends a bare action on as
            # `<action>/default` (course_llm/proxy/hooks.py `default_group_of`); the facade
            # always names the group.
            "model_group_alias": {action: group_name(action, DEFAULT_STRATEGY) for action in strategies},
        },
    }


def compile_proxy_config(
    registry: Registry,
    *,
    max_attempts: int = 2,
    fallback_strategy: str | None = None,
    timeout_s: float = 600.0,
    shared_redis: bool = False,
) -> dict[str, Any]:
    """The LiteLLM proxy config: router config plus the course_llm logger and the master key.

    `shared_redis` (serve, with COURSE_LLM_REDIS_URL set): LiteLLM's router keeps its DualCache in
    that Redis too, as LiteLLM's multi-instance set-up asks. With the settings compiled here
    (cooldowns off, the default shuffle) it holds little; a router setting that counts across
    instances (rpm/tpm, usage-based routing) is then shared by every worker and replica."""
    router = compile_router_config(
        registry, max_attempts=max_attempts, fallback_strategy=fallback_strategy, timeout_s=timeout_s
    )
    if shared_redis:
        router["router_settings"]["redis_url"] = f"os.environ/{REDIS_URL_ENV}"
        # LiteLLM's router reads its Redis on the request path now and then (a batched cache
        # read): a Redis that accepts connections but never answers held calls 5-10 s at its
        # default timeouts, until LiteLLM's own Redis breaker opened.
        router["router_settings"]["cache_kwargs"] = {
            "socket_timeout": ROUTER_REDIS_TIMEOUT_S,
            "socket_connect_timeout": ROUTER_REDIS_TIMEOUT_S,
        }
    litellm_settings: dict[str, Any] = {
        "callbacks": [PROXY_CALLBACK],
        # Parameters a provider does not support (e.g. response_format on some models) are
        # dropped rather than failing the attempt.
        "drop_params": True,
    }
    if registry.cache is not None:
        litellm_settings.update(cache=True, cache_params=_cache_params(registry.cache))
        # LiteLLM's Router passes `caching=<cache_responses>` to every call, and False bypasses
        # the proxy's cache: without this the cache above is never read.
        router["router_settings"]["cache_responses"] = True
    controls = _controls(registry)
    return {
        **({CONTROLS_KEY: controls} if controls else {}),
        "model_list": router["model_list"],
        "router_settings": router["router_settings"],
        "litellm_settings": litellm_settings,
        "general_settings": {
            "master_key": MASTER_KEY_REF,
            "custom_auth": PROXY_AUTH,
            # Clients connect directly: X-Forwarded-For is not trusted. Saying so (rather than
            # leaving it unset, which LiteLLM treats the same) spares a warning at every start.
            "trusted_proxy_ranges": [],
        },
    }


def _controls(registry: Registry) -> dict[str, Any]:
    """The registry's control sections, for the proxy's logger (course_llm/proxy/recorder.py)."""
    controls: dict[str, Any] = {}
    if registry.circuit_breaker is not None:
        controls["circuit_breaker"] = registry.circuit_breaker.model_dump()
    if registry.budgets:
        controls["budgets"] = {
            name: budget.model_dump(exclude_none=True) for name, budget in registry.budgets.items()
        }
    return controls


def _cache_params(cache: CacheConfig) -> dict[str, Any]:
    """LiteLLM's `cache_params`: the registry's type and TTL; Redis at COURSE_LLM_REDIS_URL."""
    params: dict[str, Any] = {"type": cache.type, "ttl": cache.ttl_s}
    if cache.type == "redis":
        params["url"] = f"os.environ/{REDIS_URL_ENV}"
    return params


def render_proxy_config(config: dict[str, Any], source: str) -> str:
    """The proxy config as YAML text, with a header naming the registry it came from."""
    import yaml

    header = (
        f"# Generated by `course-llm compile` from {source}. Do not edit: change the registry and\n"
        "# run `make compile`. tests/test_compiler.py fails when this file and the registry drift.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100)
