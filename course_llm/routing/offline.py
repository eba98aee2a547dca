"""COURSE_LLM_MOCK=1: the facade's models answer in-process from the mock of `serve --mock`.

A mock router is the real one with each deployment's `litellm_params.model` rewritten to
`course_llm_mock/<registry model id>` (no key, no api_base), a LiteLLM custom provider whose
handler asks `mock_answers.answer` what to say. Everything else is unchanged: the LiteLLM Router
with its retries and fallbacks, the logger and its rows (which take provider, model id and prices
from the deployment's `model_info`, so they look like real calls), `AllModelsFailedError`.
Nothing is sent anywhere: the handler makes no request at all.

LiteLLM calls the handler's `acompletion` / `completion` by keyword with its whole set of
arguments (litellm/llms/custom_llm.py). A failure the mock was asked for raises `MockFailure`
carrying `status_code`, which LiteLLM maps to its exception for that status, so course_llm's
status-code retry rule treats it exactly like the proxy mock's HTTP error.

Without the mock and without API keys, every attempt fails; `missing_keys_note` names the unset
key variables for the facade's AllModelsFailedError, and says how to answer offline instead.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable
from typing import Any

from course_llm._litellm import load_litellm
from course_llm.routing.mock_answers import MockAnswer, answer
from course_llm.routing.registry import Registry

__all__ = [
    "PROVIDER",
    "MockFailure",
    "OfflineProvider",
    "install_offline_provider",
    "missing_keys_note",
    "offline_router_config",
]

#: The LiteLLM provider name of the in-process mock (`course_llm_mock/<model id>`).
PROVIDER = "course_llm_mock"


class MockFailure(Exception):
    """A failure the mock was asked for; LiteLLM reads `status_code` to pick its exception."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message
        super().__init__(message)


class OfflineProvider:
    """The handler LiteLLM calls for `course_llm_mock/...` models (its CustomLLM interface)."""

    def _respond(self, model: str, messages: Any, model_response: Any, optional_params: Any) -> Any:
        params = optional_params if isinstance(optional_params, dict) else {}
        result: MockAnswer = answer(model, messages, params.get("response_format"))
        if result.status is not None:
            raise MockFailure(result.status, f"{result.error_message} for {model}")
        model_response.choices[0].message.content = result.text
        model_response.choices[0].finish_reason = "stop"
        model_response.model = model
        model_response.created = int(time.time())
        model_response.usage = load_litellm().Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        return model_response

    def completion(
        self, *, model: str, messages: Any, model_response: Any, optional_params: Any, **_: Any
    ) -> Any:
        return self._respond(model, messages, model_response, optional_params)

    async def acompletion(
        self, *, model: str, messages: Any, model_response: Any, optional_params: Any, **_: Any
    ) -> Any:
        return self._respond(model, messages, model_response, optional_params)


def install_offline_provider() -> None:
    """Register the mock provider with LiteLLM once per process (a no-op when it is there)."""
    litellm = load_litellm()
    if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": OfflineProvider()})
    # LiteLLM learns custom provider names at each call's set-up; a Router built before the first
    # call must know it already.
    litellm.utils.custom_llm_setup()


def offline_router_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a compiled router config whose deployments all answer from the in-process mock."""
    mocked = copy.deepcopy(config)
    for deployment in mocked["model_list"]:
        params = deployment["litellm_params"]
        params["model"] = f"{PROVIDER}/{deployment['model_info']['course_llm_model_id']}"
        params.pop("api_key", None)
        params.pop("api_base", None)
    return mocked


def missing_keys_note(registry: Registry, model_ids: Iterable[str]) -> str | None:
    """A hint naming the API key variables of `model_ids` that are not set, or None if all are."""
    missing = {
        model.key_env: model_id
        for model_id in model_ids
        if (model := registry.models.get(model_id)) is not None and not os.environ.get(model.key_env)
    }
    if not missing:
        return None
    names = ", ".join(f"{env} ({model_id})" for env, model_id in sorted(missing.items()))
    return f"not set: {names}. Set them, or set COURSE_LLM_MOCK=1 to answer offline from mock models."
