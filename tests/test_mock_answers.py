"""The mock's answers (course_llm/routing/mock_answers.py), and the proxy's mock upstream serving them.

`serve --mock` and COURSE_LLM_MOCK=1 share these answers; here they are checked directly and
over HTTP through the mock upstream's FastAPI router (no proxy process needed).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field, model_validator

from course_llm.proxy.mock import MOCK_PATH, create_mock_router
from course_llm.routing.mock_answers import MAX_MOCK_SIZE, answer, expected_model, failures

#: What an OpenAI client sends for `response_format=SomeModel` in strict mode: $defs and $ref,
#: enums, arrays of objects, a nullable field, no additional properties.
CLIENT_SCHEMA: dict[str, Any] = {
    "$defs": {
        "Lesson": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "level": {"type": "string", "enum": ["intro", "advanced"]},
                "minutes": {"type": "integer", "minimum": 5, "maximum": 90},
                "notes": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["title", "level", "minutes", "notes"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {
        "course": {"type": "string"},
        "lessons": {"type": "array", "items": {"$ref": "#/$defs/Lesson"}},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["course", "lessons", "tags"],
    "additionalProperties": False,
}


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "Outline", "schema": schema, "strict": True}}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_failures_come_from_the_environment_and_from_directives_in_the_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COURSE_LLM_MOCK_FAIL", "gemini-2.5-flash=503, claude-sonnet=429")

    found = failures("please [mock-fail deepseek-chat=401] and [mock-fail gpt-4o-mini=500 x=y]")

    assert found == {"gemini-2.5-flash": 503, "claude-sonnet": 429, "deepseek-chat": 401, "gpt-4o-mini": 500}


def test_a_model_named_in_a_directive_fails_and_another_answers_with_the_canned_text() -> None:
    prompt = user("Summarise this [mock-fail gemini-2.5-flash=503]")

    assert answer("gemini-2.5-flash", prompt).status == 503
    ok = answer("gemini-2.5-pro", prompt)
    assert ok.status is None and ok.text.startswith("[mock gemini-2.5-pro]")
    assert ok.prompt_tokens > 0 and ok.completion_tokens > 0


@pytest.mark.parametrize("attempt", range(5))  # made-up data differs every time
def test_a_json_schema_response_format_gets_an_answer_that_validates_against_it(attempt: int) -> None:
    result = answer("gpt-4o-mini", user("outline"), json_schema_format(CLIENT_SCHEMA))

    jsonschema.validate(json.loads(result.text), CLIENT_SCHEMA)


def test_the_facades_expected_model_is_used_when_set() -> None:
    from pydantic import BaseModel

    class Grade(BaseModel):
        student: str
        score: int

    token = expected_model.set(Grade)
    try:
        text = answer("deepseek-chat", user("grade"), {"type": "json_object"}).text
    finally:
        expected_model.reset(token)

    assert Grade.model_validate_json(text)


def test_a_schema_the_libraries_cannot_build_still_gets_a_json_object() -> None:
    recursive = {
        "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
        "$ref": "#/$defs/Node",
    }

    text = answer("gpt-4o-mini", user("tree"), json_schema_format(recursive)).text

    assert isinstance(json.loads(text), dict)


async def _post(body: dict[str, Any]) -> httpx.Response:
    app = FastAPI()
    app.include_router(create_mock_router())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mock") as client:
        return await client.post(f"{MOCK_PATH}/chat/completions", json=body)


async def test_the_proxy_mock_upstream_answers_a_json_schema_request_with_fitting_json() -> None:
    response = await _post(
        {
            "model": "gpt-4o-mini",
            "messages": user("outline"),
            "response_format": json_schema_format(CLIENT_SCHEMA),
        }
    )

    assert response.status_code == 200
    body = response.json()
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), CLIENT_SCHEMA)
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


async def test_the_proxy_mock_upstream_fails_a_model_named_in_a_directive_with_that_status() -> None:
    response = await _post({"model": "claude-sonnet", "messages": user("hi [mock-fail claude-sonnet=429]")})

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "429"


def test_huge_upper_limits_in_a_client_schema_are_met_with_small_values() -> None:
    schema = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "maxLength": 90_000_000},
            "items": {"type": "array", "items": {"type": "string"}, "maxItems": 10**9},
        },
        "required": ["text", "items"],
    }

    data = json.loads(answer("gpt-4o-mini", user("big"), json_schema_format(schema)).text)

    jsonschema.validate(data, schema)
    assert len(data["text"]) <= MAX_MOCK_SIZE and len(data["items"]) <= MAX_MOCK_SIZE


@pytest.mark.parametrize(
    "limit",
    [
        {"type": "string", "minLength": 50_000_000},
        {"type": "array", "items": {"type": "integer"}, "minItems": 5_000_000},
    ],
)
def test_a_client_schema_asking_for_millions_gets_generic_json_instead_of_holding_the_loop(
    limit: dict[str, Any],
) -> None:
    schema = {"type": "object", "properties": {"value": limit}, "required": ["value"]}

    data = json.loads(answer("gpt-4o-mini", user("huge"), json_schema_format(schema)).text)

    assert "value" not in data and data["summary"] == "mock answer"


class _Strict(BaseModel):
    """Refuses its own computed field back (extra="forbid")."""

    model_config = ConfigDict(extra="forbid")
    a: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def double(self) -> int:
        return self.a * 2


class _Aliased(BaseModel):
    """Validates `nm`/`name` but serialises `full_name`."""

    name: str = Field(validation_alias=AliasChoices("nm", "name"), serialization_alias="full_name")


class _Ordered(BaseModel):
    """Refuses about half of all random draws."""

    lo: int
    hi: int

    @model_validator(mode="after")
    def ordered(self) -> _Ordered:
        if self.lo > self.hi:
            raise ValueError("lo > hi")
        return self


@pytest.mark.parametrize("model", [_Strict, _Aliased, _Ordered])
@pytest.mark.parametrize("attempt", range(5))
def test_an_expected_model_gets_an_answer_it_validates_whatever_its_config(
    model: type[BaseModel], attempt: int
) -> None:
    token = expected_model.set(model)
    try:
        text = answer("gpt-4o-mini", user("fit"), {"type": "json_object"}).text
    finally:
        expected_model.reset(token)

    model.model_validate_json(text)


FULL_WIDTH_503 = "\uff15\uff10\uff13"


@pytest.mark.parametrize("status", ["5²", "99999", "200", "abc", "-503", FULL_WIDTH_503])
def test_a_directive_with_a_status_that_is_no_error_status_is_ignored(status: str) -> None:
    assert failures(f"[mock-fail gemini-2.5-flash={status}] [mock-fail claude-sonnet=429]") == {
        "claude-sonnet": 429
    }
