"""The compiler: a registry in, LiteLLM Router configuration out; and the checked-in proxy config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from course_llm.routing.compiler import compile_proxy_config, compile_router_config, render_proxy_config
from course_llm.routing.registry import Registry, load_registry, parse_registry

ROOT = Path(__file__).parent.parent

SMALL: dict[str, Any] = {
    "models": {
        "fast": {
            "provider": "openai",
            "model": "gpt-fast",
            "capabilities": ["x"],
            "max_context": 1000,
            "cost_per_1k": {"input": 0.0003, "output": 0.0025},
        },
        "smart": {
            "provider": "anthropic",
            "capabilities": ["x"],
            "max_context": 1000,
            "cost_per_1k": {"input": 0.003, "output": 0.015},
        },
        "cheap": {
            "provider": "deepseek",
            "api_base": "https://api.deepseek.com",
            "api_key_env": "DS_KEY",
            "capabilities": ["x"],
            "max_context": 1000,
            "cost_per_1k": {"input": 0.0001, "output": 0.0002},
        },
    },
    "actions": {"summarise": {"requires": ["x"]}},
    "routing": {
        "summarise": {"default": ["fast", "cheap"], "quality": ["smart", "fast"], "budget": ["cheap"]}
    },
}


@pytest.fixture
def small() -> Registry:
    return parse_registry(SMALL)


def _group(config: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [d for d in config["model_list"] if d["model_name"] == name]


def test_each_chain_becomes_one_group_with_ordered_deployments(small: Registry) -> None:
    config = compile_router_config(small)
    quality = _group(config, "summarise/quality")
    assert [d["litellm_params"]["model"] for d in quality] == ["anthropic/smart", "openai/gpt-fast"]
    assert [d["litellm_params"]["order"] for d in quality] == [1, 2]
    assert [d["model_info"]["id"] for d in quality] == ["summarise/quality/smart", "summarise/quality/fast"]
    assert {d["model_name"] for d in config["model_list"]} == {
        "summarise/default",
        "summarise/quality",
        "summarise/budget",
    }


def test_prices_become_per_token_costs_and_keys_env_references(small: Registry) -> None:
    cheap = _group(compile_router_config(small), "summarise/budget")[0]
    assert cheap["litellm_params"] == {
        "model": "deepseek/cheap",
        "api_key": "os.environ/DS_KEY",
        "order": 1,
        "api_base": "https://api.deepseek.com",
    }
    # In model_info, so LiteLLM registers them once (tests/test_litellm_workarounds.py).
    prices = {k: v for k, v in cheap["model_info"].items() if "cost" in k and not k.startswith("course_llm")}
    assert prices == {
        "input_cost_per_token": 1e-07,
        "output_cost_per_token": 2e-07,
        "cache_read_input_token_cost": 1e-07,
        "cache_creation_input_token_cost": 1e-07,
    }


def test_litellm_registers_the_compiled_prices_without_a_warning(small: Registry) -> None:
    """LiteLLM warns once per model it does not know unless cache prices come with the others."""
    import logging

    from course_llm._litellm import load_litellm

    litellm = load_litellm()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    emitter = logging.getLogger("LiteLLM")
    emitter.addHandler(handler)
    try:
        router = litellm.Router(model_list=compile_router_config(small)["model_list"])
    finally:
        emitter.removeHandler(handler)
    assert router.get_model_names()  # the deployments were registered
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_strategies_fall_back_to_default_and_default_has_no_fallback(small: Registry) -> None:
    settings = compile_router_config(small)["router_settings"]
    assert settings["fallbacks"] == [
        {"summarise/quality": ["summarise/default"]},
        {"summarise/budget": ["summarise/default"]},
    ]


def test_fallback_strategy_follows_the_default_chain(small: Registry) -> None:
    settings = compile_router_config(small, fallback_strategy="budget")["router_settings"]
    assert settings["fallbacks"] == [
        {"summarise/default": ["summarise/budget"]},
        {"summarise/quality": ["summarise/default", "summarise/budget"]},
        {"summarise/budget": ["summarise/default"]},
    ]
    assert settings["max_fallbacks"] == 2 + 2 + 1 - 1


def test_context_window_and_content_policy_errors_walk_the_rest_of_the_chain_first(small: Registry) -> None:
    """LiteLLM skips its order fallbacks for these errors (course_llm/routing/compiler.py
    `_rest_of_chain`): their own lists name the chain's later order levels, then `fallbacks`."""
    settings = compile_router_config(small, fallback_strategy="budget")["router_settings"]
    rest = [
        {"summarise/default": [{"model": "summarise/default", "_target_order": 2}, "summarise/budget"]},
        {
            "summarise/quality": [
                {"model": "summarise/quality", "_target_order": 2},
                "summarise/default",
                "summarise/budget",
            ]
        },
        {"summarise/budget": ["summarise/default"]},
    ]
    assert settings["context_window_fallbacks"] == rest
    assert settings["content_policy_fallbacks"] == rest
    assert settings["content_policy_fallbacks"] is not settings["context_window_fallbacks"]


def test_a_bare_action_is_an_alias_of_its_default_group_and_keys_no_fallbacks(small: Registry) -> None:
    # Fallbacks listed under the bare name would make a request that fails everywhere walk the
    # default chain twice; the proxy renames a bare action instead (tests/test_routing_defaults.py).
    settings = compile_router_config(small, fallback_strategy="budget")["router_settings"]
    assert settings["model_group_alias"] == {"summarise": "summarise/default"}
    assert [key for entry in settings["fallbacks"] for key in entry if "/" not in key] == []


def test_retries_follow_max_attempts_and_cooldowns_are_off(small: Registry) -> None:
    settings = compile_router_config(small, max_attempts=3)["router_settings"]
    assert settings["num_retries"] == 2
    assert settings["disable_cooldowns"] is True
    assert "retry_policy" not in settings  # classification is by status code (course_llm._litellm)


def test_max_fallbacks_allows_the_longest_walk(small: Registry) -> None:
    # quality (2) then default (2): three hops after the first model
    assert compile_router_config(small)["router_settings"]["max_fallbacks"] == 3


def test_disabled_provider_leaves_every_chain_and_empty_groups_vanish(small: Registry) -> None:
    config = compile_router_config(small, disabled_providers=frozenset({"deepseek"}))
    assert {d["model_name"] for d in config["model_list"]} == {"summarise/default", "summarise/quality"}
    assert all(not d["litellm_params"]["model"].startswith("deepseek/") for d in config["model_list"])
    assert config["router_settings"]["fallbacks"] == [{"summarise/quality": ["summarise/default"]}]


def test_max_attempts_below_one_is_refused(small: Registry) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        compile_router_config(small, max_attempts=0)


def test_proxy_config_installs_the_logger_and_the_master_key(small: Registry) -> None:
    config = compile_proxy_config(small)
    assert config["litellm_settings"]["callbacks"] == ["course_llm.proxy.callback.logger"]
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert config["general_settings"]["trusted_proxy_ranges"] == []  # X-Forwarded-For not trusted


def test_with_shared_redis_litellms_router_keeps_its_state_in_that_redis(small: Registry) -> None:
    assert "redis_url" not in compile_proxy_config(small)["router_settings"]
    config = compile_proxy_config(small, shared_redis=True)
    assert config["router_settings"]["redis_url"] == "os.environ/COURSE_LLM_REDIS_URL"
    timeouts = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
    assert config["router_settings"]["cache_kwargs"] == timeouts
    # LiteLLM's Router takes it as its DualCache's Redis (the proxy resolves the os.environ/ ref).
    from litellm import Router

    settings = dict(config["router_settings"], redis_url="redis://127.0.0.1:6379/15")
    router = Router(model_list=config["model_list"], **settings)
    try:
        assert router.cache.redis_cache is not None
        kwargs = router.cache.redis_cache.init_async_client().connection_pool.connection_kwargs
        assert {key: kwargs.get(key) for key in timeouts} == timeouts
    finally:
        router.discard()


def test_checked_in_proxy_config_matches_the_registry() -> None:
    """Fails when config/models.yaml changed without `make compile`."""
    registry = load_registry(ROOT / "config" / "models.yaml")
    expected = render_proxy_config(compile_proxy_config(registry), "config/models.yaml")
    actual = (ROOT / "proxy_config.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(actual) == yaml.safe_load(expected)
    assert actual == expected, "proxy_config.yaml drifted from config/models.yaml: run `make compile`"
