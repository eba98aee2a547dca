"""Structured output asks each model the way it supports: native JSON schema, or JSON mode (issue 13).

Through the facade against the fake upstream (tests/fake_upstream.py). A model LiteLLM's model map
says `supports_response_schema` gets `response_format={"type": "json_schema", …}` carrying the
schema; any other model gets `{"type": "json_object"}` with the schema in the system prompt. The
choice is made per attempt, so a chain mixing both kinds falls back across them, each attempt in
its own format. `json_reply=FIT_SCHEMA` makes the fake answer as an upstream that honours schemas:
JSON fitting the schema it received, and an object that fits nothing when it got JSON mode only,
which is what the facade's old JSON-mode-only request got from such an upstream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from course_llm import StructuredOutputError
from course_llm._litellm import load_litellm
from course_llm.routing import offline
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry, parse_registry
from tests.fake_upstream import FakeUpstream
from tests.fake_upstream_answers import FIT_SCHEMA, NO_SCHEMA_REPLY, request_schema

ACTION = "outlining"
#: The start of the JSON-mode instruction the facade puts into the system prompt.
INSTRUCTION = "Reply with a single JSON object and nothing else."
FITTING = '{"title": "Biology", "modules": ["cells", "genes"]}'


class Outline(BaseModel):
    title: str
    modules: list[str]


#: Registry model → (provider, the model the provider sees, whether LiteLLM says it takes a schema).
MODELS = {
    "native-gpt": ("openai", "gpt-4o-mini", True),
    "native-gemini": ("gemini", "gemini-2.5-flash", True),
    "native-claude": ("anthropic", "claude-sonnet-4-5", True),
    "house-llm": ("openai", "house-llm", False),
}
CHAINS = {
    "default": ["native-gpt"],
    "gemini": ["native-gemini"],
    "claude": ["native-claude"],
    "plain": ["house-llm"],
    "plain_first": ["house-llm", "native-gpt"],
    "native_first": ["native-gpt", "house-llm"],
}


def make_registry(up: FakeUpstream) -> Registry:
    bases = {"openai": up.base_url, "gemini": up.gemini_base_url, "anthropic": up.anthropic_base_url}
    models = {
        model_id: {
            "provider": provider,
            "model": upstream_model,
            "api_base": bases[provider],
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "capabilities": ["structured_output"],
            "max_context": 128000,
            "cost_per_1k": {"input": 0.001, "output": 0.002},
        }
        for model_id, (provider, upstream_model, _) in MODELS.items()
    }
    return parse_registry(
        {
            "models": models,
            "actions": {ACTION: {"requires": ["structured_output"]}},
            "routing": {ACTION: CHAINS},
        }
    )


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def up(server: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    server.reset()
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "fake-key")
    return server


@pytest.fixture
async def router(up: FakeUpstream) -> AsyncIterator[ModelRouter]:
    async with ModelRouter(make_registry(up)) as r:
        yield r


def litellm_says_native(model_id: str) -> bool:
    provider, upstream_model, _ = MODELS[model_id]
    prefix = {"gemini": "gemini", "anthropic": "anthropic"}.get(provider, "openai")
    return bool(load_litellm().supports_response_schema(model=f"{prefix}/{upstream_model}"))


@pytest.mark.parametrize("model_id", list(MODELS))
def test_litellm_knows_which_of_the_test_models_take_a_schema(model_id: str) -> None:
    # The premise of every test below, from LiteLLM's own model map (LITELLM_LOCAL_MODEL_COST_MAP).
    assert litellm_says_native(model_id) is MODELS[model_id][2]


def formats(up: FakeUpstream, model: str) -> list[Any]:
    return [r["body"].get("response_format") for r in up.requests(model)]


def prompt_text(body: dict[str, Any]) -> str:
    """Every text of a request body (system, messages, tools), as one string to search."""
    return json.dumps(body)


@pytest.mark.parametrize(
    ("strategy", "model_id"),
    [("default", "native-gpt"), ("gemini", "native-gemini"), ("claude", "native-claude")],
)
async def test_a_model_that_takes_a_schema_receives_it_natively_and_its_answer_fits(
    router: ModelRouter, up: FakeUpstream, strategy: str, model_id: str
) -> None:
    provider, upstream_model, _ = MODELS[model_id]
    up.set_behaviour(upstream_model, json_reply=FIT_SCHEMA)

    response = await router.complete_structured(ACTION, "outline biology", Outline, strategy=strategy)

    [request] = up.requests(upstream_model)
    schema = request_schema(provider, request["body"])
    assert schema is not None, request["body"]  # LiteLLM sent the schema in the provider's own form
    assert set(schema["properties"]) == {"title", "modules"}
    assert INSTRUCTION not in prompt_text(request["body"])
    assert isinstance(response.parsed, Outline) and response.model_id == model_id


async def test_the_openai_request_is_a_strict_json_schema_named_after_the_model(
    router: ModelRouter, up: FakeUpstream
) -> None:
    up.set_behaviour("gpt-4o-mini", json_reply=FIT_SCHEMA)
    await router.complete_structured(ACTION, "outline biology", Outline)
    [sent] = formats(up, "gpt-4o-mini")
    assert sent["type"] == "json_schema"
    assert (sent["json_schema"]["name"], sent["json_schema"]["strict"]) == ("Outline", True)
    assert sent["json_schema"]["schema"]["required"] == ["title", "modules"]


async def test_a_model_without_schema_support_gets_json_mode_and_the_schema_in_the_system_prompt(
    router: ModelRouter, up: FakeUpstream
) -> None:
    up.set_behaviour("house-llm", json_reply=FITTING)

    response = await router.complete_structured(
        ACTION, "outline biology", Outline, strategy="plain", system_prompt="You are terse."
    )

    [request] = up.requests("house-llm")
    assert request["body"]["response_format"] == {"type": "json_object"}
    system = request["body"]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You are terse.\n\n" + INSTRUCTION)
    assert json.dumps(Outline.model_json_schema(), separators=(",", ":")) in system["content"]
    assert response.parsed == Outline(title="Biology", modules=["cells", "genes"])


async def test_an_upstream_that_honours_schemas_answers_json_mode_with_what_does_not_fit(
    router: ModelRouter, up: FakeUpstream
) -> None:
    # The case: no schema in response_format, so such an upstream's JSON fits nothing.
    up.set_behaviour("house-llm", json_reply=FIT_SCHEMA)
    with pytest.raises(StructuredOutputError) as caught:
        await router.complete_structured(ACTION, "outline biology", Outline, strategy="plain")
    assert (caught.value.raw, caught.value.schema) == (NO_SCHEMA_REPLY, "Outline")


@pytest.mark.parametrize(
    ("strategy", "failing", "answering"),
    [("plain_first", "house-llm", "gpt-4o-mini"), ("native_first", "gpt-4o-mini", "house-llm")],
)
async def test_a_mixed_chain_falls_back_each_attempt_in_its_own_models_format(
    router: ModelRouter, up: FakeUpstream, strategy: str, failing: str, answering: str
) -> None:
    up.set_behaviour(failing, statuses=[503])
    up.set_behaviour(answering, json_reply=FIT_SCHEMA if answering == "gpt-4o-mini" else FITTING)

    response = await router.complete_structured(ACTION, "outline biology", Outline, strategy=strategy)

    assert isinstance(response.parsed, Outline)
    assert response.model_id == {"gpt-4o-mini": "native-gpt", "house-llm": "house-llm"}[answering]
    assert len(up.requests(failing)) == 2  # a 503 is retried once on the same model (max_attempts 2)
    for model in (failing, answering):
        native = model == "gpt-4o-mini"
        for request in up.requests(model):  # every attempt, retries included, in its model's format
            assert request["body"]["response_format"]["type"] == ("json_schema" if native else "json_object")
            # The instruction one attempt got does not leak into the next model's messages.
            assert (INSTRUCTION in prompt_text(request["body"])) is not native


async def test_a_native_answer_that_does_not_fit_raises_with_the_raw_text(
    router: ModelRouter, up: FakeUpstream
) -> None:
    up.set_behaviour("gpt-4o-mini", json_reply='{"title": 5}')
    with pytest.raises(StructuredOutputError) as caught:
        await router.complete_structured(ACTION, "outline biology", Outline)
    assert caught.value.raw == '{"title": 5}'
    assert caught.value.request_id


async def test_a_response_format_the_caller_gives_is_sent_as_given_with_the_schema_in_the_prompt(
    router: ModelRouter, up: FakeUpstream
) -> None:
    up.set_behaviour("gpt-4o-mini", json_reply=FITTING)
    response = await router.complete_structured(
        ACTION, "outline biology", Outline, response_format={"type": "json_object"}
    )
    [request] = up.requests("gpt-4o-mini")
    assert request["body"]["response_format"] == {"type": "json_object"}
    assert INSTRUCTION in prompt_text(request["body"])
    assert isinstance(response.parsed, Outline)


async def test_a_plain_completion_is_left_alone(router: ModelRouter, up: FakeUpstream) -> None:
    up.set_behaviour("gpt-4o-mini", json_reply=FIT_SCHEMA)
    await router.complete_structured(ACTION, "outline biology", Outline)
    await router.complete(ACTION, "just talk")
    plain = up.requests("gpt-4o-mini")[-1]["body"]
    assert "response_format" not in plain and INSTRUCTION not in prompt_text(plain)


async def test_the_offline_mock_answers_both_formats_with_data_that_fits(
    up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    answer = offline.answer

    def recording(model: str, messages: Any, response_format: Any = None) -> Any:
        seen[model] = response_format
        return answer(model, messages, response_format)

    monkeypatch.setattr(offline, "answer", recording)
    async with ModelRouter(make_registry(up), mock=True) as router:
        for strategy in ("default", "plain"):
            for _ in range(3):  # made-up data differs every time: each answer must fit
                response = await router.complete_structured(ACTION, "outline", Outline, strategy=strategy)
                assert Outline.model_validate_json(response.content) == response.parsed
    # The mock deployments decide as their registry models would.
    assert seen["native-gpt"]["type"] == "json_schema"
    assert seen["house-llm"] == {"type": "json_object"}
    assert up.requests() == []  # nothing left the process


class Lesson(BaseModel):
    name: str
    minutes: int
    tags: set[str] = set()


class Course(BaseModel):
    title: str
    lessons: list[Lesson]
    prerequisite: Course | None = None


@pytest.mark.parametrize(
    ("strategy", "upstream_model"), [("default", "gpt-4o-mini"), ("gemini", "gemini-2.5-flash")]
)
async def test_a_nested_recursive_model_is_sent_natively_and_its_fitting_answer_parses(
    router: ModelRouter, up: FakeUpstream, strategy: str, upstream_model: str
) -> None:
    up.set_behaviour(upstream_model, json_reply=FIT_SCHEMA)
    response = await router.complete_structured(ACTION, "a course", Course, strategy=strategy)
    assert isinstance(response.parsed, Course) and response.parsed.lessons
    assert "Lesson" in json.dumps(up.requests(upstream_model)[0]["body"])  # the nested model went along
