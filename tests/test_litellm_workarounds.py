"""LiteLLM's per-request waste that course_llm removes, one workaround per section (litellm 1.106.2).

Each section pins the observable effect (the cost map is not re-indexed between two calls; the
OTel import is not retried per request), the LiteLLM behaviour that makes the workaround
necessary (so a LiteLLM that fixed it fails a test, and the workaround can go), and that the
prices LiteLLM computes stay the registry's. Provider HTTP is mocked with respx: no network.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from course_llm._litellm import (
    AUTH_MODULE,
    OTEL_LOGGER_MODULE,
    PATCH_MARK,
    SEED_DESTINATIONS,
    SEED_PARAMETERS,
    add_callback,
    flush_logging_worker,
    install_proxy_workarounds,
    load_litellm,
    otel_logger_importable,
    remove_callback,
)
from course_llm.routing.compiler import compile_router_config
from course_llm.routing.registry import Registry, parse_registry

litellm = load_litellm()
import litellm.utils as litellm_utils  # noqa: E402 (after load_litellm's environment)
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402

PRICES = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
)
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
#: Prompt tokens, of them read from the provider's cache, and completion tokens, per answer.
PROMPT, CACHED, COMPLETION = 1200, 1000, 30


@pytest.fixture
def registry() -> Registry:
    model = {"capabilities": ["x"], "max_context": 100000}
    return parse_registry(
        {
            "models": {
                "fast": {
                    **model,
                    "provider": "openai",
                    "model": "course-llm-unknown-fast",
                    "cost_per_1k": {"input": 0.0003, "output": 0.0025},
                },
                "smart": {
                    **model,
                    "provider": "anthropic",
                    "model": "course-llm-unknown-smart",
                    "cost_per_1k": {"input": 0.003, "output": 0.015},
                },
            },
            "actions": {"summarise": {"requires": ["x"]}},
            "routing": {"summarise": {"default": ["fast"], "quality": ["smart"]}},
        }
    )


def _openai(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    usage = {
        "prompt_tokens": PROMPT,
        "completion_tokens": COMPLETION,
        "total_tokens": PROMPT + COMPLETION,
        "prompt_tokens_details": {"cached_tokens": CACHED},
    }
    if body.get("stream"):
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        chunks: list[dict[str, Any]] = [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": usage},
        ]
        frames = "".join(f"data: {json.dumps({**head, **chunk})}\n\n" for chunk in chunks)
        return httpx.Response(
            200, text=frames + "data: [DONE]\n\n", headers={"content-type": "text/event-stream"}
        )
    message = {"role": "assistant", "content": "hi"}
    return httpx.Response(
        200,
        json={
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        },
    )


def _anthropic(request: httpx.Request) -> httpx.Response:
    # Anthropic counts cache reads and cache writes apart from the other prompt tokens.
    usage = {
        "input_tokens": PROMPT - CACHED - 100,
        "cache_read_input_tokens": CACHED,
        "cache_creation_input_tokens": 100,
        "output_tokens": COMPLETION,
    }
    return httpx.Response(
        200,
        json={
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": json.loads(request.content)["model"],
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": usage,
        },
    )


@pytest.fixture
def upstream() -> Iterator[None]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        mock.post(OPENAI_URL).mock(side_effect=_openai)
        mock.post(ANTHROPIC_URL).mock(side_effect=_anthropic)
        yield


class _Costs(CustomLogger):
    """LiteLLM's `response_cost` per served model group."""

    def __init__(self) -> None:
        super().__init__()
        self.costs: list[tuple[str, float, int, int]] = []

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        slo = kwargs["standard_logging_object"]
        self.costs.append(
            (slo["model_group"], slo["response_cost"], slo["prompt_tokens"], slo["completion_tokens"])
        )


def _prices_in_litellm_params(config: dict[str, Any]) -> dict[str, Any]:
    """The config as course_llm compiled it before: prices in litellm_params."""
    config = copy.deepcopy(config)
    for deployment in config["model_list"]:
        for name in PRICES:
            deployment["litellm_params"][name] = deployment["model_info"].pop(name)
    return config


async def _call(router: Any, group: str, *, stream: bool = False) -> None:
    messages = [{"role": "user", "content": "hi"}]
    if not stream:
        await router.acompletion(model=group, messages=messages)
        return
    response = await router.acompletion(
        model=group, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    async for _ in response:
        pass


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, function: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return function(*args, **kwargs)

        return counted


# ---------------------------------------------------------------------------------------------
# The cost map: prices in model_info are registered once (course_llm/routing/compiler.py)
# ---------------------------------------------------------------------------------------------


async def _cost_map_work_per_two_calls(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, int, int]:
    """(register_model calls, index rebuilds, cost-map mutations) over two calls after a warm-up."""
    router = litellm.Router(model_list=config["model_list"], **config["router_settings"])
    await _call(router, "summarise/default")  # warm-up: the first lookup builds the index
    await flush_logging_worker()
    registers, rebuilds = _Counter(), _Counter()
    monkeypatch.setattr(litellm, "register_model", registers.wrap(litellm.register_model))
    monkeypatch.setattr(
        litellm_utils,
        "_rebuild_model_cost_lowercase_map",
        rebuilds.wrap(litellm_utils._rebuild_model_cost_lowercase_map),
    )
    generation = litellm_utils.get_model_cost_mutation_generation()
    for _ in range(2):
        await _call(router, "summarise/default")
        await flush_logging_worker()  # the cost is computed in the success handler
    mutations = litellm_utils.get_model_cost_mutation_generation() - generation
    return registers.calls, rebuilds.calls, mutations


async def test_compiled_prices_leave_the_cost_map_alone_between_calls(
    registry: Registry, upstream: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = compile_router_config(registry)
    assert all(name not in d["litellm_params"] for d in config["model_list"] for name in PRICES)
    assert await _cost_map_work_per_two_calls(config, monkeypatch) == (0, 0, 0)


async def test_litellm_re_registers_prices_from_litellm_params_on_every_call(
    registry: Registry, upstream: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the prices moved: main.py `_register_custom_pricing_for_request` → `register_model`
    empties the cost-map index each call, and the next lookup rebuilds it. A LiteLLM that stops
    doing so fails here (the prices could then go back to litellm_params)."""
    config = _prices_in_litellm_params(compile_router_config(registry))
    registers, rebuilds, mutations = await _cost_map_work_per_two_calls(config, monkeypatch)
    assert registers >= 2
    assert rebuilds >= 2
    assert mutations >= 2


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_litellm_prices_calls_at_the_registry_prices_from_model_info(
    registry: Registry, upstream: None, stream: bool
) -> None:
    """LiteLLM's `response_cost` is tokens × the registry's per-1k prices, cached tokens at the
    input price, and the same as with the prices in litellm_params."""
    groups = (
        {"summarise/default": "fast"}
        if stream
        else {"summarise/default": "fast", "summarise/quality": "smart"}
    )
    results: dict[str, list[tuple[str, float, int, int]]] = {}
    for name, config in (
        ("model_info", compile_router_config(registry)),
        ("litellm_params", _prices_in_litellm_params(compile_router_config(registry))),
    ):
        capture = _Costs()
        add_callback(capture)
        try:
            router = litellm.Router(model_list=config["model_list"], **config["router_settings"])
            for group in groups:
                await _call(router, group, stream=stream)
            await flush_logging_worker()
        finally:
            remove_callback(capture)
        results[name] = sorted(capture.costs)
    assert results["model_info"] == results["litellm_params"]
    assert [row[0] for row in results["model_info"]] == sorted(groups)
    for group, cost, prompt_tokens, completion_tokens in results["model_info"]:
        price = registry.models[groups[group]].cost_per_1k
        assert (prompt_tokens, completion_tokens) == (PROMPT, COMPLETION)
        assert cost == pytest.approx((PROMPT * price.input + COMPLETION * price.output) / 1000, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# The OTel import in auth (course_llm/_litellm/workarounds.py `_install_otel_seed_noop`)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth() -> Any:
    """LiteLLM's proxy auth module, with course_llm's workarounds installed as the proxy has them."""
    module = importlib.import_module(AUTH_MODULE)
    load_litellm()
    return module


class _ImportAttempts:
    """A meta-path finder that counts attempts to import one module and finds nothing itself."""

    def __init__(self, name: str) -> None:
        self.name, self.attempts = name, 0

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == self.name:
            self.attempts += 1


@pytest.fixture
def otel_import_attempts(monkeypatch: pytest.MonkeyPatch) -> _ImportAttempts:
    finder = _ImportAttempts(OTEL_LOGGER_MODULE)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    return finder


def test_otel_logger_does_not_import_here() -> None:
    """The workaround's premise: opentelemetry-sdk is not installed, so LiteLLM's OTel V2 logger
    cannot load. Installing it makes this fail: the workaround then stays out, and this test and
    the two below need the other branch."""
    assert not otel_logger_importable()


def test_auth_calls_the_seed_step_through_its_module(auth: Any) -> None:
    """`user_api_key_auth` looks `_seed_request_destinations` up as a module global on each call,
    so replacing the module attribute replaces what every request runs."""
    function = inspect.unwrap(auth.user_api_key_auth)
    assert SEED_DESTINATIONS in function.__code__.co_names


def test_seed_step_is_a_marked_noop_in_place_of_litellms(auth: Any) -> None:
    seed = getattr(auth, SEED_DESTINATIONS)
    assert getattr(seed, PATCH_MARK, False)
    original = seed.__wrapped__
    assert original.__module__ == AUTH_MODULE
    assert tuple(inspect.signature(original).parameters) == SEED_PARAMETERS
    assert install_proxy_workarounds() == [SEED_DESTINATIONS]
    assert getattr(auth, SEED_DESTINATIONS) is seed  # installing again changes nothing


def test_auth_does_not_retry_the_otel_import_per_request(
    auth: Any, otel_import_attempts: _ImportAttempts
) -> None:
    from litellm.proxy._types import UserAPIKeyAuth

    for _ in range(2):
        getattr(auth, SEED_DESTINATIONS)(UserAPIKeyAuth(api_key="sk-test"), None)
    assert otel_import_attempts.attempts == 0


def test_litellm_retries_the_failed_otel_import_on_every_request(
    auth: Any, otel_import_attempts: _ImportAttempts
) -> None:
    """Why the no-op: LiteLLM's own step imports again on each call. A LiteLLM that remembers
    the failure fails here (the workaround could then go)."""
    from litellm.proxy._types import UserAPIKeyAuth

    original = getattr(auth, SEED_DESTINATIONS).__wrapped__
    for _ in range(2):
        original(UserAPIKeyAuth(api_key="sk-test"), None)
    assert otel_import_attempts.attempts == 2
