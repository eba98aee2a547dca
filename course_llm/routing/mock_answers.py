"""What the offline mock answers: one source for `serve --mock` and for COURSE_LLM_MOCK=1.

`answer(model_id, messages, response_format)` decides, for one attempt on one registry model,
whether it fails (and with which HTTP status) or what it says, and how many tokens that counts.
The proxy's mock upstream (course_llm/proxy/mock.py) sends it over HTTP; the facade's in-process
provider (course_llm/routing/offline.py) hands it to LiteLLM. Both therefore fail the same models
and give the same canned text, so fallbacks can be tried offline either way.

Failures are asked for in the environment, `COURSE_LLM_MOCK_FAIL="gemini-2.5-flash=503,…"`, or
anywhere in the prompt, `[mock-fail gemini-2.5-flash=503]`.

Structured answers fit the schema they were asked for. They are built by polyfactory's
`ModelFactory` from a Pydantic model: the facade's own (`expected_model`, set by
`complete_structured` for the duration of the call), or one that json-schema-to-pydantic builds
from a proxy client's `response_format: {"type": "json_schema", …}`. A schema neither library can
handle gets the generic JSON object, and a log line saying why.
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

__all__ = ["MOCK_FAIL_ENV", "MockAnswer", "answer", "expected_model", "fitting_json", "text_of"]

log = structlog.get_logger()

#: Environment variable naming the models that fail: `model=status` items, comma-separated.
MOCK_FAIL_ENV = "COURSE_LLM_MOCK_FAIL"
_DIRECTIVE = re.compile(r"\[mock-fail\s+([^\]]+)\]")

#: The Pydantic model the facade's `complete_structured` expects while its call runs (in-process
#: only: a proxy client's schema arrives as JSON Schema in `response_format`).
expected_model: ContextVar[type[BaseModel] | None] = ContextVar(
    "course_llm_mock_expected_model", default=None
)


@dataclass(frozen=True, slots=True)
class MockAnswer:
    """One attempt's outcome: `status` set means the attempt fails with that HTTP status."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    status: int | None = None

    @property
    def error_message(self) -> str:
        return f"mock failure {self.status}"


_ERROR_STATUS = re.compile(r"[45][0-9][0-9]")


def failures(text: str) -> dict[str, int]:
    """Model id → HTTP status, from COURSE_LLM_MOCK_FAIL and the `[mock-fail …]` directives in `text`."""
    found: dict[str, int] = {}
    for source in [os.environ.get(MOCK_FAIL_ENV, ""), *_DIRECTIVE.findall(text)]:
        for item in re.split(r"[,\s]+", source.strip()):
            model, _, status = item.partition("=")
            # An error status only (400-599, ASCII digits): anything else in a prompt is ignored,
            # never passed on as a status the mock server cannot send.
            if model and _ERROR_STATUS.fullmatch(status):
                found[model] = int(status)
    return found


def tokens(text: str) -> int:
    """About 4 characters a token, so mock costs look like real ones."""
    return max(1, len(text) // 4)


def text_of(messages: Any) -> str:
    """The text of chat messages (string contents and the text parts of multi-part contents)."""
    parts: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def _canned(model: str, prompt: str) -> str:
    last_line = prompt.strip().splitlines()[-1][:80] if prompt.strip() else ""
    return (
        f"[mock {model}] This is a canned answer so you can try course_llm without API keys. "
        f"You asked: {last_line!r}. Every attempt of this request is in llm_calls."
    )


def _generic_json(model: str) -> str:
    return json.dumps({"model": model, "summary": "mock answer", "items": ["one", "two", "three"]})


#: Random builds tried before giving up on a model (a `model_validator` may refuse some of them).
#: A validator that refuses half of all draws fails all 64 with odds of 2^-64; at 10 builds
#: (2^-10) a test that asks five times failed about once in 200 runs.
_BUILDS = 64


def fitting_json(model: type[BaseModel]) -> str:
    """A JSON document that validates against `model` (checked), made up by polyfactory.

    The dump leaves out computed fields (an `extra="forbid"` model refuses them back) and is tried
    with and without serialization aliases, since validation may accept only one of the two.
    """
    factory = _factory(model)
    refused: ValidationError | None = None
    for _ in range(_BUILDS):
        try:
            instance: BaseModel = factory.build()
        except ValidationError as exc:  # a validator refused this random draw
            refused = exc
            continue
        for by_alias in (True, False):
            text = instance.model_dump_json(by_alias=by_alias, exclude_computed_fields=True)
            try:
                model.model_validate_json(text)
            except ValidationError as exc:
                refused = exc
                continue
            return text
    raise ValueError(f"no built {model.__name__} validates: {_first_error(refused)}")


@lru_cache(maxsize=64)
def _factory(model: type[BaseModel]) -> Any:
    """polyfactory's factory for `model`, made once (making one costs more than a build)."""
    from polyfactory.factories.pydantic_factory import ModelFactory

    return ModelFactory.create_factory(model)


def _first_error(error: ValidationError | None) -> str:
    if error is None:
        return "nothing built"
    first = error.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"


#: The most characters, items or properties the mock makes for one value of a client's schema. A
#: schema may ask for millions (`minItems: 5000000`): building that would hold the event loop,
#: which the mock shares with the proxy, for minutes.
MAX_MOCK_SIZE = 64
_MAXIMA = ("maxLength", "maxItems", "maxProperties")
_MINIMA = ("minLength", "minItems", "minProperties")


def _bounded(schema: Any) -> Any:
    """A copy of a client's JSON Schema whose size limits the mock can meet quickly.

    Upper limits above MAX_MOCK_SIZE are lowered to it; a lower limit above it cannot be met
    cheaply, so the schema is refused (ValueError) and the mock answers generic JSON.
    """
    if isinstance(schema, list):
        return [_bounded(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {key: _bounded(value) for key, value in schema.items()}
    for key in _MINIMA:
        if isinstance(bounded.get(key), int | float) and bounded[key] > MAX_MOCK_SIZE:
            raise ValueError(f"{key} {bounded[key]} is more than the mock makes ({MAX_MOCK_SIZE})")
    for key in _MAXIMA:
        if isinstance(bounded.get(key), int | float) and bounded[key] > MAX_MOCK_SIZE:
            bounded[key] = MAX_MOCK_SIZE
    return bounded


@lru_cache(maxsize=64)
def _model_for_schema(schema_json: str) -> type[BaseModel]:
    # It ships no type hints (no py.typed); create_model returns a BaseModel subclass.
    from json_schema_to_pydantic import create_model  # type: ignore[import-untyped]

    model: type[BaseModel] = create_model(_bounded(json.loads(schema_json)))
    return model


def _json_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON Schema of an OpenAI `response_format: {"type": "json_schema", …}`, if that is one."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def _wants_json(response_format: Any) -> bool:
    return isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")


def _structured(model: str, response_format: Any) -> str:
    expected = expected_model.get()
    schema = _json_schema(response_format)
    try:
        if expected is not None:
            return fitting_json(expected)
        if schema is not None:
            return fitting_json(_model_for_schema(json.dumps(schema, sort_keys=True)))
    except Exception as exc:  # any schema the libraries cannot handle (RecursionError included)
        # One line: a ValidationError's text spans several.
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        log.warning("mock_schema_unsupported", model=model, error=reason)
    return _generic_json(model)


def answer(model: str, messages: Any, response_format: Any = None) -> MockAnswer:
    """The mock's answer for one attempt on registry model `model` (failure, JSON or canned text)."""
    prompt = text_of(messages)
    status = failures(prompt).get(model)
    if status:
        return MockAnswer("", tokens(prompt), 0, status=status)
    text = _structured(model, response_format) if _wants_json(response_format) else _canned(model, prompt)
    return MockAnswer(text, tokens(prompt), tokens(text))
