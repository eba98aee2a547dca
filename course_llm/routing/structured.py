"""Structured output: the provider's native JSON schema where the model supports it, JSON mode elsewhere.

`ModelRouter.complete_structured` asks for an answer that fits a Pydantic model. A model whose
LiteLLM model map says `supports_response_schema` gets `response_format={"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}` and the prompt as the caller wrote it; any other model
gets JSON mode, `{"type": "json_object"}`, with the schema spelled out in the system prompt. Either
way the answer is validated here, and one that does not fit raises StructuredOutputError carrying
the raw text.

The choice is made per attempt, not per chain: a chain may mix both kinds of model and LiteLLM's
Router picks the deployment (and the next one on a failure) after the request has started. So
`StructuredFormatHook`, a LiteLLM CustomLogger, rewrites each attempt's request in
`async_pre_call_deployment_hook`, which litellm 1.106.2 runs in its client wrapper
(utils.py `wrapper_async`) for every `litellm.acompletion` the Router makes, after the Router
filled in the deployment's model and `metadata["model_info"]`. The hook acts only inside a
`structured_call` block (a ContextVar), so the proxy's and plain `complete` calls pass untouched.

Why not send `json_schema` always and let LiteLLM translate it: litellm 1.106.2 has no uniform
fallback for a model without schema support. Gemini puts the schema into the prompt itself
(llms/vertex_ai/gemini/transformation.py `transform_request_body`, `response_schema_prompt`), but
an OpenAI-compatible model receives `json_schema` whether it supports it or not
(llms/openai/chat/gpt_transformation.py passes `response_format` through), and the o-series config
drops `response_format` entirely under `drop_params` (o_series_transformation.py). What LiteLLM
does provide is used as is: `litellm.supports_response_schema(model=…, custom_llm_provider=…)` for
the decision (False, never an error, for a model it does not know), and
`type_to_response_format_param` for the schema, OpenAI's strict form of the Pydantic model, which
LiteLLM converts per provider (Gemini's response schema, Anthropic's output format or JSON tool).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from course_llm._litellm import add_callback, load_litellm
from course_llm.errors import StructuredOutputError
from course_llm.routing.mock_answers import expected_model
from course_llm.routing.registry import Registry

__all__ = [
    "StructuredFormatHook",
    "StructuredRequest",
    "json_mode_instruction",
    "native_response_format",
    "parse_structured",
    "structured_call",
    "supports_native_schema",
    "with_instruction",
]

T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
JSON_MODE: dict[str, str] = {"type": "json_object"}


def native_response_format(schema: type[BaseModel]) -> dict[str, Any]:
    """`{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` for `schema`.

    LiteLLM's `type_to_response_format_param` (the OpenAI SDK's strict conversion: every property
    required, no additional properties) where it can convert the model; the plain Pydantic schema,
    not strict, where it cannot.
    """
    try:
        converted = load_litellm().utils.type_to_response_format_param(schema)
    except Exception:  # a model the strict conversion refuses: the plain schema, not strict
        converted = None
    if isinstance(converted, dict):
        return converted
    spec = {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": False}
    return {"type": "json_schema", "json_schema": spec}


def json_mode_instruction(schema: type[BaseModel]) -> str:
    """The system-prompt text that carries the schema to a model in JSON mode."""
    return (
        "Reply with a single JSON object and nothing else. It must validate against this "
        f"JSON Schema:\n{json.dumps(schema.model_json_schema(), separators=(',', ':'))}"
    )


def with_instruction(system_prompt: str | None, instruction: str) -> str:
    return f"{system_prompt}\n\n{instruction}" if system_prompt else instruction


def supports_native_schema(model: str, custom_llm_provider: str | None = None) -> bool:
    """Whether LiteLLM's model map says `model` takes a JSON schema (False for models it does not know).

    Not cached: about 0.1 ms (litellm 1.106.2), and a `litellm.register_model` may change the answer.
    """
    litellm = load_litellm()
    return bool(litellm.supports_response_schema(model=model, custom_llm_provider=custom_llm_provider))


@dataclass(frozen=True, slots=True)
class StructuredRequest:
    """What the hook needs for the attempts of one structured call."""

    native_format: dict[str, Any]
    instruction: str
    #: Registry model id → its LiteLLM model, so that the decision follows the registry's model
    #: (an offline mock deployment decides as the real model would).
    litellm_models: Mapping[str, str]


_current: ContextVar[StructuredRequest | None] = ContextVar("course_llm_structured_request", default=None)


def _with_system_instruction(messages: Any, instruction: str) -> list[dict[str, Any]]:
    """A new message list whose system message ends with `instruction` (added first if none)."""
    copied = [dict(m) for m in messages] if isinstance(messages, list) else []
    if copied and copied[0].get("role") == "system" and isinstance(copied[0].get("content"), str):
        copied[0]["content"] = with_instruction(copied[0]["content"], instruction)
    else:
        copied.insert(0, {"role": "system", "content": instruction})
    return copied


class StructuredFormatHook:
    """The per-attempt rewrite; a LiteLLM CustomLogger subclass is made on first use (`_hook`)."""

    @staticmethod
    def deployment_model(kwargs: Mapping[str, Any], request: StructuredRequest) -> str:
        """The LiteLLM model this attempt stands for: the registry's, else the deployment's own."""
        metadata = kwargs.get("metadata")
        info = metadata.get("model_info") if isinstance(metadata, Mapping) else None
        model_id = info.get("course_llm_model_id") if isinstance(info, Mapping) else None
        return request.litellm_models.get(str(model_id)) or str(kwargs.get("model") or "")

    @classmethod
    def rewrite(cls, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The attempt's kwargs with this deployment's format, or None outside a structured call.

        Returns a new dict and new messages, never touching what it was given: the Router's request
        (messages included) serves the next attempt too, which may need the other format.
        """
        request = _current.get()
        if request is None:
            return None
        model = cls.deployment_model(kwargs, request)
        provider = kwargs.get("custom_llm_provider")
        if supports_native_schema(model, provider if isinstance(provider, str) else None):
            # A copy each time: LiteLLM's provider conversion may edit the schema it is given.
            return {**kwargs, "response_format": copy.deepcopy(request.native_format)}
        messages = _with_system_instruction(kwargs.get("messages"), request.instruction)
        return {**kwargs, "response_format": dict(JSON_MODE), "messages": messages}


_hook: Any = None


def _installed_hook() -> Any:
    """The process's one hook object, installed in LiteLLM's callbacks (checked on every call,
    since an application may have emptied `litellm.callbacks` since)."""
    global _hook
    if _hook is None:

        class _Hook(load_litellm().CustomLogger):  # type: ignore[misc]
            async def async_pre_call_deployment_hook(
                self, kwargs: dict[str, Any], call_type: Any
            ) -> dict[str, Any] | None:
                return StructuredFormatHook.rewrite(kwargs)

        _hook = _Hook()
    add_callback(_hook)  # a no-op when it is there already
    return _hook


@contextmanager
def structured_call(
    schema: type[BaseModel], registry: Registry, system_prompt: str | None, params: Mapping[str, Any]
) -> Iterator[str | None]:
    """Within the block, each attempt asks for `schema` in the format its model supports.

    Yields the system prompt to send. A `response_format` in the caller's `params` stands for every
    attempt, and the schema goes into the system prompt, as before native schemas were used.
    Either way the offline mock learns which model to build an answer for (`expected_model`).
    """
    request = None
    if "response_format" in params:
        system_prompt = with_instruction(system_prompt, json_mode_instruction(schema))
    else:
        _installed_hook()
        models = {model.id: model.litellm_model for model in registry.models.values()}
        request = StructuredRequest(native_response_format(schema), json_mode_instruction(schema), models)
    token = _current.set(request)
    expecting = expected_model.set(schema)
    try:
        yield system_prompt
    finally:
        expected_model.reset(expecting)
        _current.reset(token)


def parse_structured(text: str, schema: type[T], request_id: str) -> T:
    """`text` (bare or in a ```json fence) as `schema`; StructuredOutputError when it does not fit."""
    match = _FENCE.match(text)
    try:
        return schema.model_validate_json(match.group(1) if match else text)
    except ValidationError as exc:
        detail = exc.errors()[0]["msg"] if exc.errors() else str(exc)
        raise StructuredOutputError(text, schema.__name__, detail, request_id) from exc
