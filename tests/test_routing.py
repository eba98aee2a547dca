"""Routing through the facade: chains, retries, fallbacks and errors, with provider HTTP mocked.

Every upstream call goes through respx (tests/providers.py) for openai, anthropic, gemini and
deepseek models; the tests count the requests each upstream model received.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from course_llm import AllModelsFailedError, StructuredOutputError, UnknownActionError, UnknownProviderError
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry, load_registry, parse_registry
from tests.providers import TOKENS_IN, TOKENS_OUT, ProviderMock

SHIPPED = load_registry("config/models.yaml")
CHAINS = [(a, s, c) for a, s, c in SHIPPED.chains()]


def upstream(registry: Registry, model_id: str) -> str:
    """The model name the provider sees for a registry model id."""
    return registry.models[model_id].provider_model


@pytest.fixture
async def router(registry: Registry) -> Any:
    async with ModelRouter(registry) as r:
        yield r


@pytest.mark.parametrize(("action", "strategy", "chain"), CHAINS, ids=[f"{a}/{s}" for a, s, _ in CHAINS])
async def test_each_strategy_is_served_by_the_first_model_of_its_chain(
    router: ModelRouter, providers: ProviderMock, action: str, strategy: str, chain: list[str]
) -> None:
    response = await router.complete(action, "Summarise photosynthesis.", strategy=strategy)
    first = SHIPPED.models[chain[0]]
    assert (response.model_id, response.provider, response.served_strategy) == (
        chain[0],
        first.provider,
        strategy,
    )
    assert response.content == f"answer from {first.provider_model}"
    assert dict(providers.hits) == {first.provider_model: 1}


async def test_default_strategy_is_used_when_none_is_named(
    router: ModelRouter, providers: ProviderMock
) -> None:
    response = await router.complete("text_processing", "hi")
    assert (response.model_id, response.strategy, response.served_strategy) == (
        "deepseek-chat",
        "default",
        "default",
    )
    assert dict(providers.hits) == {"deepseek-chat": 1}


@pytest.mark.parametrize("status", [500, 429, 503])
async def test_transient_error_is_retried_up_to_max_attempts_then_next_model_answers(
    router: ModelRouter, providers: ProviderMock, status: int
) -> None:
    providers.script("gemini-2.5-flash", status, status)
    response = await router.complete("course_structuring", "outline biology")
    assert response.model_id == "deepseek-chat"
    assert providers.hits["gemini-2.5-flash"] == 2
    assert providers.hits["deepseek-chat"] == 1


async def test_transient_error_then_success_stays_on_the_same_model(
    router: ModelRouter, providers: ProviderMock
) -> None:
    providers.script("gemini-2.5-flash", 500)
    response = await router.complete("course_structuring", "outline biology")
    assert response.model_id == "gemini-2.5-flash"
    assert dict(providers.hits) == {"gemini-2.5-flash": 2}


async def test_max_attempts_sets_how_often_one_model_is_tried(
    registry: Registry, providers: ProviderMock
) -> None:
    providers.script("claude-sonnet-4-5", 500, 500, 500)
    async with ModelRouter(registry, max_attempts=3) as router:
        response = await router.complete("text_processing", "x", strategy="quality")
    assert response.model_id == "gemini-2.5-flash"
    assert providers.hits["claude-sonnet-4-5"] == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404])
@pytest.mark.parametrize(
    ("model", "provider"), [("claude-sonnet-4-5", "anthropic"), ("gemini-2.5-pro", "gemini")]
)
async def test_permanent_error_moves_to_the_next_model_without_retry(
    registry: Registry, providers: ProviderMock, status: int, model: str, provider: str
) -> None:
    chain = (
        ["claude-sonnet", "gemini-2.5-pro", "gpt-4o-mini"]
        if provider == "anthropic"
        else ["gemini-2.5-pro", "claude-sonnet", "gpt-4o-mini"]
    )
    data = registry.model_dump(mode="json")
    data["routing"]["course_structuring"]["quality"] = chain
    custom = parse_registry(data)
    providers.always(model, status)
    async with ModelRouter(custom, max_attempts=3) as router:
        response = await router.complete("course_structuring", "x", strategy="quality")
    assert response.model_id == chain[1]
    assert providers.hits[model] == 1


async def test_exhausted_strategy_falls_back_to_the_default_chain(
    router: ModelRouter, providers: ProviderMock
) -> None:
    providers.always("claude-sonnet-4-5", 500)
    providers.always("gemini-2.5-pro", 403)
    response = await router.complete("course_structuring", "x", strategy="quality")
    assert (response.model_id, response.strategy, response.served_strategy) == (
        "gemini-2.5-flash",
        "quality",
        "default",
    )
    assert dict(providers.hits) == {"claude-sonnet-4-5": 2, "gemini-2.5-pro": 1, "gemini-2.5-flash": 1}


async def test_fallback_strategy_follows_the_default_chain(
    registry: Registry, providers: ProviderMock
) -> None:
    providers.always("claude-sonnet-4-5", 401)
    providers.always("gemini-2.5-flash", 401)
    providers.always("deepseek-chat", 401)
    data = registry.model_dump(mode="json")
    data["routing"]["text_processing"]["budget"] = ["gpt-4o-mini"]
    async with ModelRouter(parse_registry(data), fallback_strategy="budget") as router:
        response = await router.complete("text_processing", "x", strategy="quality")
    assert (response.model_id, response.served_strategy) == ("gpt-4o-mini", "budget")


async def test_everything_failing_raises_with_every_attempt_in_order(
    router: ModelRouter, providers: ProviderMock
) -> None:
    providers.always("claude-sonnet-4-5", 500)
    providers.always("gemini-2.5-pro", 404)
    providers.always("gemini-2.5-flash", 429)
    providers.always("deepseek-chat", 401)
    with pytest.raises(AllModelsFailedError) as caught:
        await router.complete("course_structuring", "x", strategy="quality")
    error = caught.value
    assert [(a.attempt, a.model_id, a.served_strategy, a.status_code) for a in error.attempts] == [
        (1, "claude-sonnet", "quality", 500),
        (2, "claude-sonnet", "quality", 500),
        (3, "gemini-2.5-pro", "quality", 404),
        (4, "gemini-2.5-flash", "default", 429),
        (5, "gemini-2.5-flash", "default", 429),
        (6, "deepseek-chat", "default", 401),
    ]
    assert all("upstream says" in a.message for a in error.attempts)
    assert error.attempts[0].error_class == "InternalServerError"
    assert (error.action, error.strategy) == ("course_structuring", "quality")
    assert error.request_id in str(error)


async def test_cost_uses_registry_prices_for_a_model_litellm_does_not_know(
    registry: Registry, providers: ProviderMock
) -> None:
    data = registry.model_dump(mode="json")
    data["models"]["house-model"] = {
        "provider": "openai",
        "model": "acme-house-model-2026",
        "capabilities": ["structured_output"],
        "max_context": 8000,
        "cost_per_1k": {"input": 0.5, "output": 2.0},
    }
    data["routing"]["text_processing"]["budget"] = ["house-model"]
    async with ModelRouter(parse_registry(data)) as router:
        response = await router.complete("text_processing", "x", strategy="budget")
    assert response.model_id == "house-model"
    assert (response.tokens_in, response.tokens_out) == (TOKENS_IN, TOKENS_OUT)
    assert response.cost_usd == pytest.approx(TOKENS_IN / 1000 * 0.5 + TOKENS_OUT / 1000 * 2.0)


class Outline(BaseModel):
    title: str
    modules: list[str]


async def test_complete_structured_returns_a_validated_object(
    router: ModelRouter, providers: ProviderMock
) -> None:
    providers.reply("deepseek-chat", '```json\n{"title": "Biology", "modules": ["cells", "genes"]}\n```')
    response = await router.complete_structured("text_processing", "outline biology", Outline)
    assert response.parsed == Outline(title="Biology", modules=["cells", "genes"])
    body = providers.requests[-1][1].content.decode()
    assert '"response_format"' in body and "modules" in body  # schema sent with the request


async def test_invalid_structured_answer_raises_with_the_raw_text(
    router: ModelRouter, providers: ProviderMock
) -> None:
    providers.reply("deepseek-chat", "Sure! The outline is: cells, genes")
    with pytest.raises(StructuredOutputError) as caught:
        await router.complete_structured("text_processing", "outline biology", Outline)
    assert caught.value.raw == "Sure! The outline is: cells, genes"
    assert caught.value.schema == "Outline"


async def test_a_disabled_provider_receives_no_request(router: ModelRouter, providers: ProviderMock) -> None:
    router.disable_provider("deepseek")
    response = await router.complete("text_processing", "x")
    assert response.model_id == "gemini-2.5-flash"
    budget = await router.complete("text_processing", "x", strategy="budget")  # only deepseek: default serves
    assert (budget.model_id, budget.served_strategy) == ("gemini-2.5-flash", "default")
    assert providers.hits["deepseek-chat"] == 0
    router.enable_provider("deepseek")
    assert (await router.complete("text_processing", "x")).model_id == "deepseek-chat"


async def test_disabling_every_provider_of_a_chain_fails_without_a_request(
    router: ModelRouter, providers: ProviderMock
) -> None:
    router.disable_provider("gemini")
    with pytest.raises(AllModelsFailedError, match="disabled") as caught:
        await router.complete("video_analysis", "x")
    assert caught.value.attempts == []
    assert sum(providers.hits.values()) == 0


def test_disabling_an_unknown_provider_lists_the_known_ones(router: ModelRouter) -> None:
    with pytest.raises(UnknownProviderError, match="anthropic, deepseek, gemini, openai"):
        router.disable_provider("gemnii")


@pytest.mark.parametrize(
    ("action", "strategy", "valid"),
    [
        ("poetry", "default", "course_structuring, presentation_analysis, text_processing, video_analysis"),
        ("presentation_analysis", "budget", "default, quality"),
    ],
)
async def test_unknown_action_or_strategy_fails_before_any_request(
    router: ModelRouter, providers: ProviderMock, action: str, strategy: str, valid: str
) -> None:
    with pytest.raises(UnknownActionError, match=valid):
        await router.complete(action, "x", strategy=strategy)
    assert providers.requests == []


async def test_system_prompt_and_params_reach_the_provider(
    router: ModelRouter, providers: ProviderMock
) -> None:
    await router.complete("text_processing", "hello", system_prompt="be brief", temperature=0.2)
    body = providers.requests[-1][1].content.decode()
    assert '"be brief"' in body and '"temperature": 0.2' in body.replace(
        '"temperature":0.2', '"temperature": 0.2'
    )
