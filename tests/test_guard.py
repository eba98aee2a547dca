"""The client allow-list (course_llm/proxy/guard.py) and the request guard's pure helpers (routes.py).

Every check is a pure function of the parsed body, so each promise is one table row here; the
real proxy process is driven by the same kinds of input in tests/test_adversarial_e2e.py.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from litellm.types.utils import CallTypes

from course_llm.proxy.guard import (
    CHAT_CHECKS,
    CHAT_PARAMETERS,
    COMPLETION_CHECKS,
    COMPLETION_PARAMETERS,
    Refusal,
    controls_refusal,
    endpoint_of,
    parse_json_object,
    request_refusal,
    unknown_model_reason,
)
from course_llm.proxy.hooks import ProxyLogger, body_refusal
from course_llm.proxy.routes import presented_key, refusal_for_exception
from course_llm.recording.callback import REQUEST_ID_KEY
from course_llm.recording.records import CallRecord
from course_llm.settings import Settings

MESSAGES = [{"role": "user", "content": "hi"}]
ONE_MODEL = "video_analysis/budget"
GROUPS = {"text_processing/default", "text_processing/budget", "video_analysis/default"}


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "text_processing", "messages": MESSAGES, **extra}


#: A valid value for every parameter of the allow-list.
VALID: dict[str, Any] = {
    "model": "text_processing/budget",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "42", "tool_call_id": "t1"},
    ],
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.2,
    "top_p": 1,
    "max_tokens": 100,
    "max_completion_tokens": 200,
    "stop": ["\n", "END"],
    "n": 2,
    "presence_penalty": -1.5,
    "frequency_penalty": 2,
    "seed": -(2**63),
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "parallel_tool_calls": False,
    "logprobs": True,
    "top_logprobs": 20,
    "logit_bias": {"50256": -100},
    "user": "student-42",
    "metadata": {"tenant_id": "acme", "operation": "grade", "tags": {"course": "bio", "year": 2}, "x": [1]},
}


def test_the_allow_list_is_the_contracts_and_each_parameter_has_a_check() -> None:
    assert set(VALID) == CHAT_PARAMETERS
    assert set(CHAT_CHECKS) == CHAT_PARAMETERS and set(COMPLETION_CHECKS) == COMPLETION_PARAMETERS


def test_a_body_using_every_allowed_parameter_passes() -> None:
    assert request_refusal(VALID, "chat") is None


@pytest.mark.parametrize("name", sorted(CHAT_PARAMETERS - {"model", "messages"}))
def test_null_for_an_optional_parameter_means_absent(name: str) -> None:
    assert request_refusal(chat(**{name: None}), "chat") is None


@pytest.mark.parametrize(
    "name",
    [
        "mock_response",
        "api_base",
        "base_url",
        "api_key",
        "model_list",
        "user_config",
        "num_retries",
        "fallbacks",
        "disable_fallbacks",
        "timeout",
        "caching",
        "tags",
        "litellm_trace_id",
        "functions",
    ],
)
def test_any_other_top_level_parameter_is_refused_by_name(name: str) -> None:
    refusal = request_refusal(chat(**{name: "x"}), "chat")
    assert refusal is not None and refusal.status == 400 and refusal.param == name
    assert refusal.message.startswith(f"parameter not allowed in a chat request: {name!r}; allowed: ")


def test_several_unknown_parameters_are_listed_sorted_and_capped() -> None:
    body = chat(**{f"p{i}": 1 for i in range(8)})
    refusal = request_refusal(body, "chat")
    assert refusal is not None
    assert (
        "parameters not allowed in a chat request: 'p0', 'p1', 'p2', 'p3', 'p4' and 3 more" in refusal.message
    )


def test_a_hostile_parameter_name_is_shown_escaped_and_short() -> None:
    refusal = request_refusal(chat(**{"evil\x00" + "x" * 500: 1}), "chat")
    assert refusal is not None
    assert "\x00" not in refusal.message and "\\x00" in refusal.message
    assert len(refusal.message) < 600 and refusal.param is not None and len(refusal.param) <= 64


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"temperature": "hot"}, "temperature must be a number from 0 to 2, not 'hot'"),
        ({"temperature": math.nan}, "temperature must be a finite number from 0 to 2, not nan"),
        ({"temperature": math.inf}, "temperature must be a finite number"),
        ({"temperature": 2.5}, "temperature must be a finite number from 0 to 2, not 2.5"),
        ({"temperature": True}, "temperature must be a number"),
        ({"top_p": -0.1}, "top_p must be a finite number from 0 to 1"),
        ({"max_tokens": 10**12}, "max_tokens must be an integer from 1 to 1000000"),
        ({"max_tokens": 1.5e29}, "max_tokens must be an integer"),
        ({"max_tokens": 0}, "max_tokens must be an integer from 1"),
        ({"max_completion_tokens": "9"}, "max_completion_tokens must be an integer"),
        ({"n": 10**6}, "n must be an integer from 1 to 128, not 1000000"),
        ({"seed": 2**63}, "seed must be an integer"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop must be a string or a list of at most 4 strings"),
        ({"stop": 7}, "stop must be a string or a list"),
        ({"presence_penalty": -3}, "presence_penalty must be a finite number from -2 to 2"),
        ({"frequency_penalty": "0"}, "frequency_penalty must be a number"),
        ({"stream": "yes"}, "stream must be true or false, not 'yes'"),
        ({"stream": True, "stream_options": "usage"}, "stream_options must be an object"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "include_usage must be true or false"),
        ({"stream_options": {"include_usage": True}}, "stream_options is only allowed with stream: true"),
        ({"response_format": {"type": "yaml"}}, "response_format must be an object whose type is one of"),
        ({"response_format": "json"}, "response_format must be an object"),
        ({"tools": {"type": "function"}}, "tools must be a list of at most 128"),
        ({"tools": [{"type": "function"}] * 129}, "tools must be a list of at most 128"),
        ({"tool_choice": "always"}, "tool_choice must be one of auto, none, required"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls must be true or false"),
        ({"logprobs": 1}, "logprobs must be true or false"),
        ({"top_logprobs": 21}, "top_logprobs must be an integer from 0 to 20"),
        ({"logit_bias": {"1": 101}}, "logit_bias['1'] must be a finite number from -100 to 100"),
        ({"logit_bias": [1]}, "logit_bias must be an object"),
        ({"user": 42}, "user must be a string, not 42"),
        ({"metadata": "acme"}, "metadata must be an object such as {tenant_id, operation, tags}, not 'acme'"),
        ({"metadata": [1]}, "metadata must be an object"),
        ({"metadata": {"tenant_id": 7}}, "metadata.tenant_id must be a string, not 7"),
        ({"metadata": {"operation": {"x": 1}}}, "metadata.operation must be a string, not dict"),
        ({"metadata": {"tags": "bio"}}, "metadata.tags must be a list of strings or an object"),
        ({"metadata": {"tags": [1, 2]}}, "metadata.tags must be a list of strings"),
        ({"metadata": {"tags": {"a": {"b": 1}}}}, "metadata.tags must be a list of strings or an object"),
        ({"metadata": {"tags": {"a": math.nan}}}, "metadata.tags must be"),
        ({"model": "text\x00processing"}, "model must be a printable action name"),
        ({"model": "x" * 300}, "model must be a printable action name of at most 256 characters"),
        ({"model": ""}, "model must be a non-empty string"),
        ({"model": ["text_processing"]}, "model must be a non-empty string"),
        ({"model": None}, "model must be a non-empty string"),
        ({"messages": "hi"}, "messages must be a non-empty list of {role, content} objects"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": None}, "messages must be a non-empty list"),
        ({"messages": ["hi"]}, "messages[0] must be an object with a string 'role'"),
        ({"messages": [{"content": "x"}]}, "messages[0] must be an object with a string 'role'"),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0] must be an object with a string 'role'"),
        ({"messages": [*MESSAGES, {"role": "root", "content": "x"}]}, "messages[1].role must be one of"),
        ({"messages": [{"role": "user"}]}, "messages[0] (user) needs a 'content'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string or a list"),
        (
            {"messages": [{"role": "user", "content": ["x"]}]},
            "messages[0].content must be a string or a list",
        ),
    ],
)
def test_a_bad_value_is_a_400_naming_the_parameter_and_the_reason(extra: dict[str, Any], words: str) -> None:
    refusal = request_refusal(chat(**extra), "chat")
    assert refusal is not None and refusal.status == 400
    assert words in refusal.message
    assert refusal.param == list(extra)[-1]


def test_free_metadata_keys_may_hold_anything_the_row_cleaner_handles() -> None:
    metadata = {"score": math.nan, "blob": "x" * 100_000, "nested": {"a": [None]}, "tags": ["a", "b"]}
    assert request_refusal(chat(metadata=metadata), "chat") is None


def test_model_and_messages_are_required() -> None:
    missing_model = request_refusal({"messages": MESSAGES}, "chat")
    assert missing_model is not None and missing_model.param == "model"
    assert "model is required" in missing_model.message
    missing_messages = request_refusal({"model": "text_processing"}, "chat")
    assert missing_messages == Refusal(400, "messages is required", "messages")


def test_a_model_named_in_the_path_stands_in_for_the_bodys() -> None:
    assert request_refusal({"messages": MESSAGES}, "chat", path_model="text_processing") is None
    refusal = request_refusal({"messages": MESSAGES}, "chat", path_model="bad\x00")
    assert refusal is not None and "the model in the path must be a printable" in refusal.message


def test_text_completions_have_their_own_allow_list() -> None:
    body = {"model": "text_processing", "prompt": "Once", "echo": True, "best_of": 2, "logprobs": 3}
    assert request_refusal(body, "completion") is None
    refusal = request_refusal({**body, "messages": MESSAGES}, "completion")
    assert refusal is not None and refusal.param == "messages"
    missing = request_refusal({"model": "text_processing"}, "completion")
    assert missing is not None and missing.param == "prompt"


@pytest.mark.parametrize(
    "name",
    [
        "mock_response",
        "api_base",
        "num_retries",
        "fallbacks",
        "mock_x",
        "litellm_y",
        # LiteLLM registers a call's own prices process-wide (not just input/output per token).
        "cache_read_input_token_cost",
        "input_cost_per_second",
        "output_cost_per_token_batches",
    ],
)
def test_other_llm_endpoints_refuse_litellm_controls(name: str) -> None:
    refusal = controls_refusal({"model": "text_processing", "input": "hi", name: 1})
    assert refusal is not None and refusal.param == name and repr(name) in refusal.message
    assert controls_refusal({"model": "text_processing", "input": "hi", "instructions": "x"}) is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[1, 2]", "the request body must be a JSON object, not a list"),
        (b'"hello"', "not a string"),
        (b"42", "not a number"),
        (b"NaN", "not a number"),
        (b"null", "not null"),
        (b"true", "not true or false"),
        (b"{not json", "Invalid JSON payload: "),
        (b"", "Invalid JSON payload: "),
        (b'{"user": "\\ud800lone"}', "Invalid JSON payload: no low surrogate in string"),
        (b'{"user": "\xff\xfe"}', "Invalid JSON payload: "),
        (b'{"n": ' + b"9" * 5000 + b"}", "Invalid JSON payload: "),
        (b"[" * 100_000 + b"]" * 100_000, "Invalid JSON payload: "),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400(raw: bytes, words: str) -> None:
    refusal = parse_json_object(raw)
    assert isinstance(refusal, Refusal) and refusal.status == 400 and refusal.param == "request_body"
    assert refusal.message.startswith(words) or words in refusal.message


def test_what_orjson_refuses_but_json_allows_is_parsed_like_litellm_does() -> None:
    body = parse_json_object(b'{"metadata": {"score": NaN, "big": 1e400, "neg": -Infinity}}')
    assert isinstance(body, dict)
    score, big, neg = (body["metadata"][k] for k in ("score", "big", "neg"))
    assert math.isnan(score) and big == math.inf and neg == -math.inf
    refusal = request_refusal(chat(temperature=math.inf), "chat")
    assert refusal is not None and refusal.param == "temperature"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", ("chat", None)),
        ("/chat/completions", ("chat", None)),
        ("/v1/completions", ("completion", None)),
        ("/openai/deployments/text_processing/budget/chat/completions", ("chat", "text_processing/budget")),
        ("/engines/video_analysis/completions", ("completion", "video_analysis")),
        ("/v1/responses", None),
        ("/v1/chat/completions/", None),
        ("/openai/deployments/chat/completions", ("completion", "chat")),
        ("/usage/calls", None),
    ],
)
def test_the_guarded_endpoints_are_told_by_path(path: str, expected: Any) -> None:
    assert endpoint_of(path) == expected


def test_an_unknown_action_or_strategy_lists_the_valid_ones() -> None:
    assert unknown_model_reason("text_processing/budget", GROUPS, {}) is None
    assert unknown_model_reason("alias", GROUPS, {"alias": "text_processing/default"}) is None
    assert unknown_model_reason("anything", set(), {}) is None  # no router yet: LiteLLM decides
    action = unknown_model_reason("poetry", GROUPS, {})
    assert action is not None and "valid actions: text_processing, video_analysis" in action
    strategy = unknown_model_reason("video_analysis/cheap", GROUPS, {})
    assert strategy is not None and "valid strategies: default" in strategy


# -- routes.py: the key a request presents, and the answer to an unhandled exception ----------


@pytest.mark.parametrize("value", ["Bearer sk-1", "bearer sk-1", "Basic sk-1", "sk-1", "Bearer ", "Token x"])
def test_the_key_is_taken_from_authorization_as_litellm_takes_it(value: str) -> None:
    from litellm.proxy.auth.user_api_key_auth import get_bearer_token

    assert presented_key({"authorization": value}) == get_bearer_token(value)


def test_the_key_headers_are_read_in_litellms_order() -> None:
    assert presented_key({}) == ""
    assert presented_key({"authorization": "", "x-api-key": "k2"}) == "k2"  # empty: the next one
    assert presented_key({"authorization": "Bearer a", "api-key": "b"}) == "a"
    assert presented_key({"x-litellm-api-key": "Bearer c", "authorization": "Bearer a"}) == "c"
    assert presented_key({"x-litellm-api-key": "c"}) == "c"
    assert presented_key({"x-goog-api-key": "g", "ocp-apim-subscription-key": "o"}) == "g"


def _prisma_failure(original: Exception) -> ModuleNotFoundError:
    """What LiteLLM raises when its error handling imports prisma (not installed)."""
    try:
        try:
            raise original
        except Exception:
            raise ModuleNotFoundError("No module named 'prisma'", name="prisma") from None
    except ModuleNotFoundError as exc:
        exc.__context__ = original
        return exc


def test_litellms_refusal_behind_a_failed_prisma_import_is_a_400() -> None:
    original = ValueError(
        "Rejected Request: api_base is not allowed in request body. Clientside passthrough requires …"
    )
    refusal = refusal_for_exception(_prisma_failure(original))
    assert refusal == Refusal(400, "Rejected Request: api_base is not allowed in request body.")


def test_an_http_exception_keeps_its_status_and_detail() -> None:
    assert refusal_for_exception(HTTPException(401, "wrong key")) == Refusal(
        401, "wrong key", type="auth_error"
    )
    refusal = refusal_for_exception(HTTPException(400, {"error": "bad body"}))
    assert (refusal.status, refusal.message) == (400, "bad body")


def test_any_other_exception_is_a_500_that_tells_nothing_of_its_text() -> None:
    refusal = refusal_for_exception(
        _prisma_failure(AttributeError("'list' object has no attribute sk-secret"))
    )
    assert (refusal.status, refusal.type) == (500, "internal_server_error")
    assert "AttributeError" in refusal.message and "sk-secret" not in refusal.message
    assert refusal.body()["error"]["code"] == "500"


# -- hooks.py: the pre-call hook checks LiteLLM's snapshot of the body (plain `litellm --config`) --

MODEL_INFO = {"id": "video_analysis/budget/gemini-2.5-flash", "course_llm_model_id": "gemini-2.5-flash"}


def snapshot(body: dict[str, Any], **data: Any) -> dict[str, Any]:
    """The request data LiteLLM hands the pre-call hook: the body plus its own keys."""
    return {**body, "litellm_call_id": "c1", **data, "proxy_server_request": {"body": dict(body)}}


def test_the_hook_checks_the_clients_body_not_litellms_additions() -> None:
    body = chat(temperature=0.1)
    assert body_refusal(snapshot(body, metadata={"user_api_key": "x"}), "acompletion") is None
    timeout = snapshot({**body, "client_side_timeout": 3})  # LiteLLM's own copy of a timeout
    assert body_refusal(timeout, CallTypes.acompletion) is None
    refusal = body_refusal(snapshot(chat(num_retries=5)), "acompletion")
    assert refusal is not None and refusal.param == "num_retries"
    assert body_refusal({"model": "x", "messages": "nope"}, "acompletion") is None  # not a client's


def test_the_hook_holds_other_endpoints_to_litellms_controls_only() -> None:
    responses = {"model": "text_processing", "input": "hi", "litellm_metadata": {}}
    assert body_refusal(snapshot(responses), "aresponses") is None
    refusal = body_refusal(snapshot({**responses, "fallbacks": ["x"]}), "aresponses")
    assert refusal is not None and refusal.param == "fallbacks"
    completion = body_refusal(snapshot({"model": "t", "prompt": "p", "tools": []}), "atext_completion")
    assert completion is not None and completion.param == "tools"


async def test_a_refused_body_raises_a_400_before_any_request_id_is_given(tmp_path: Path) -> None:
    logger = ProxyLogger(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))
    data = snapshot(chat(messages=[{"content": "no role"}]))
    with pytest.raises(HTTPException) as caught:
        await logger.async_pre_call_hook(None, None, data, "acompletion")
    assert caught.value.status_code == 400
    detail: Any = caught.value.detail  # LiteLLM reads {"error": …} as the message
    assert detail == {"error": "messages[0] must be an object with a string 'role'"}
    assert REQUEST_ID_KEY not in data.get("metadata", {})


async def test_only_an_admitted_requests_failure_event_is_a_row(tmp_path: Path) -> None:
    logger = ProxyLogger(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))
    rows: list[CallRecord] = []
    logger._sink = rows.append  # the rows, not the writer

    def failure_event(metadata: dict[str, Any]) -> dict[str, Any]:
        params = {"metadata": {"original_model_group": ONE_MODEL, **metadata}, "model_info": MODEL_INFO}
        return {"litellm_params": params, "litellm_trace_id": "uuid4-trace", "exception": HTTPException(401)}

    # Refused by auth: LiteLLM still sends a failure event, naming the one model of the chain; a
    # client may even have put a request id of its own in the metadata.
    for metadata in ({}, {REQUEST_ID_KEY: "forged"}):
        await logger.async_log_failure_event(failure_event(metadata), None, datetime.now(), datetime.now())
    assert rows == []
    data = snapshot(chat(model=ONE_MODEL))
    await logger.async_pre_call_hook(None, None, data, "acompletion")
    admitted = failure_event(dict(data["metadata"]))  # the hook's metadata, as LiteLLM passes it on
    await logger.async_log_failure_event(admitted, None, datetime.now(), datetime.now())
    assert [(row.request_id, row.model_id, row.success) for row in rows] == [
        (data["metadata"][REQUEST_ID_KEY], "gemini-2.5-flash", False)
    ]


class Boom(Exception):
    status_code = 401


async def test_a_refused_request_cannot_claim_another_requests_failures(tmp_path: Path) -> None:
    logger = ProxyLogger(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))
    rows: list[CallRecord] = []
    logger._sink = rows.append
    data = snapshot(chat(model=ONE_MODEL))
    await logger.async_pre_call_hook(None, None, data, "acompletion")
    victim = data["metadata"][REQUEST_ID_KEY]
    event = {
        "litellm_params": {"metadata": dict(data["metadata"]), "model_info": MODEL_INFO},
        "exception": HTTPException(503),
    }
    await logger.async_log_failure_event(event, None, datetime.now(), datetime.now())
    logger._failures[victim] = list(rows)  # what the writer's sink keeps for the all-failed answer
    # A request refused by auth whose body names the victim's id: LiteLLM runs the failure hook.
    for metadata in ({REQUEST_ID_KEY: victim}, {REQUEST_ID_KEY: victim, "course_llm_admitted": "guess"}):
        forged = {"model": ONE_MODEL, "metadata": metadata}
        assert await logger.async_post_call_failure_hook(forged, HTTPException(401), None) is None
        event = {"litellm_params": {"metadata": metadata, "model_info": MODEL_INFO}, "exception": Boom()}
        await logger.async_log_failure_event(event, None, datetime.now(), datetime.now())
    assert len(rows) == 1 and logger._failures[victim] == rows
    answer = await logger.async_post_call_failure_hook(data, HTTPException(503), None)
    assert isinstance(answer, HTTPException) and f"(request {victim})" in str(answer.detail)


def test_the_refused_prices_are_litellm_s_own_list() -> None:
    from course_llm._litellm import pricing_parameters

    prices = pricing_parameters()
    # What LiteLLM 1.106.2 reads as a call's prices; if these go, the list came from elsewhere.
    assert {"input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost"} <= prices
    assert len(prices) > 20 and "model" not in prices and "input" not in prices
