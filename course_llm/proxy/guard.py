"""What a proxy client may send: the allow-list of request parameters and the checks of their values.

Proxy clients are untrusted (docs/architecture.md, "Untrusted clients"). A chat request may carry
the OpenAI chat-completion parameters in `CHAT_PARAMETERS` and nothing else: LiteLLM honours many
more top-level keys (`mock_response`, `api_base`, `num_retries`, `fallbacks`, …) that would forge
rows or steer a request past the registry. Each check here is a pure function from the parsed body
to a `Refusal` (an HTTP status and a message that names the parameter and the reason) or None, so
the proxy can refuse a request before LiteLLM sees it: before any upstream call and with no row.
The values are checked as far as a bad one would otherwise reach an upstream (a temperature of
"hot", NaN, a message without a role, `n` in the millions); attribution values in `metadata` are
cleaned when stored, not refused here.

`endpoint_of` tells which paths these checks are for; `parse_json_object` reads the body once, as
LiteLLM would, so the proxy can hand LiteLLM the parsed body (course_llm/proxy/routes.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from course_llm._litellm import pricing_parameters
from course_llm.errors import UnknownActionError
from course_llm.recording.payload import split_group

#: The OpenAI chat-completion parameters a client may send, plus `metadata` (attribution).
CHAT_PARAMETERS = frozenset(
    """model messages stream stream_options temperature top_p max_tokens max_completion_tokens stop n
    presence_penalty frequency_penalty seed response_format tools tool_choice parallel_tool_calls
    logprobs top_logprobs logit_bias user metadata""".split()  # noqa: SIM905 (a word list reads better)
)
#: The legacy text-completion parameters (`/v1/completions`), plus `metadata`.
COMPLETION_PARAMETERS = frozenset(
    """model prompt suffix echo best_of stream stream_options temperature top_p max_tokens stop n
    user presence_penalty frequency_penalty seed logprobs logit_bias metadata""".split()  # noqa: SIM905 (word list)
)
#: LiteLLM's routing, credential and test controls. Other LLM endpoints (responses, messages, …)
#: take parameters of their own, so there these (and any `mock_…` or `litellm_…` key) are refused.
LITELLM_CONTROLS = frozenset(
    """api_base base_url api_key api_version organization custom_llm_provider model_list user_config
    num_retries max_retries fallbacks context_window_fallbacks content_policy_fallbacks
    disable_fallbacks timeout stream_timeout caching cache no-cache input_cost_per_token
    output_cost_per_token base_model tags""".split()  # noqa: SIM905 (a word list reads better)
)
_CONTROL_PREFIXES = ("mock_", "litellm_")
#: True while LiteLLM handles a request the proxy's guard (routes.py) has checked whole: the
#: pre-call hook need not check it again. Never set under plain `litellm --config`.
BODY_CHECKED: ContextVar[bool] = ContextVar("course_llm_body_checked", default=False)

Endpoint = Literal["chat", "completion"]
_ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/chat/completions": "chat",
    "/queue/chat/completions": "chat",
    "/v1/completions": "completion",
    "/completions": "completion",
}
#: Azure- and engine-style paths name the model in the path; LiteLLM prefers it to the body's.
_MODEL_PATH_PREFIXES = ("/engines/", "/openai/deployments/")
_MODEL_PATH_SUFFIXES: dict[str, Endpoint] = {"/chat/completions": "chat", "/completions": "completion"}

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ROLES_WITH_CONTENT = frozenset({"system", "developer", "user"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
_RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
#: Bounds of the values (OpenAI's own where it has one).
MAX_MODEL_CHARS, MAX_TOKENS, MAX_N, MAX_TOOLS, MAX_STOP, MAX_LOGIT_BIAS = 256, 1_000_000, 128, 128, 4, 1024
_INT64 = 2**63
_NAMES_SHOWN = 5
_JSON_KINDS = {list: "a list", str: "a string", bool: "true or false", type(None): "null"}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the HTTP status, a message for the client, the parameter at fault."""

    status: int
    message: str
    param: str | None = None
    type: str = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        """The error in the OpenAI shape LiteLLM answers with, so every client can read it."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": error | {"code": str(self.status)}}


def _show(value: Any) -> str:
    """A short, safe rendering of a client's value for an error message."""
    text = (
        repr(value) if isinstance(value, str | int | float | bool) or value is None else type(value).__name__
    )
    return text if len(text) <= 40 else text[:37] + "..."


def _name(key: Any) -> str:
    return _show(str(key))


# ------------------------------------------------------------------------------------------------
# The body as bytes


def parse_json_object(raw: bytes) -> dict[str, Any] | Refusal:
    """The request body as a JSON object, or why it is not one.

    Parsed like LiteLLM's own reader (http_parsing_utils.read_request_body), so the proxy can hand
    it the result: orjson first; for what orjson refuses (NaN, ±Infinity, numbers beyond a double)
    the standard library, unless the result cannot be encoded as UTF-8 (a lone surrogate escape)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        try:
            body = json.loads(raw.decode("utf-8"))
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except (ValueError, UnicodeError, RecursionError):
            return Refusal(400, f"Invalid JSON payload: {error}", "request_body")
    if not isinstance(body, dict):
        kind = _JSON_KINDS.get(type(body), "a number")
        return Refusal(400, f"the request body must be a JSON object, not {kind}", "request_body")
    return body


def endpoint_of(path: str) -> tuple[Endpoint, str | None] | None:
    """(kind, model named in the path) for the chat and text-completion paths; None for any other."""
    kind = _ENDPOINTS.get(path)
    if kind is not None:
        return kind, None
    for prefix in _MODEL_PATH_PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            for suffix, kind in _MODEL_PATH_SUFFIXES.items():  # chat first, as LiteLLM's routes match
                if rest.endswith(suffix) and len(rest) > len(suffix):
                    return kind, rest[: -len(suffix)]
    return None


# ------------------------------------------------------------------------------------------------
# Values


Check = Callable[[Any], str | None]
# The checks run on every request, so they test exact JSON types (`type(v) is int` is also how
# `true` is told from 1) and avoid generators and ABCs: about 3 µs for a typical body.
_NUMBERS = frozenset({int, float})


def _number(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if type(value) not in _NUMBERS:
            return f"must be a number from {low:g} to {high:g}, not {_show(value)}"
        if not (low <= value <= high):  # NaN compares false: refused too
            return f"must be a finite number from {low:g} to {high:g}, not {_show(value)}"
        return None

    return check


def _integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not int or not low <= value <= high:
            return f"must be an integer from {low} to {high}, not {_show(value)}"
        return None

    return check


def _boolean(value: Any) -> str | None:
    return None if value is True or value is False else f"must be true or false, not {_show(value)}"


def _string(value: Any) -> str | None:
    return None if type(value) is str else f"must be a string, not {_show(value)}"


def _model(value: Any) -> str | None:
    if type(value) is not str or not value:
        return f"must be a non-empty string such as 'text_processing/quality', not {_show(value)}"
    if len(value) > MAX_MODEL_CHARS or not value.isprintable():
        return "must be a printable action name of at most 256 characters"
    return None


def _parts(value: list[Any]) -> bool:
    for part in value:  # noqa: SIM110 (a loop: all() over a generator costs more on every request)
        if type(part) is not dict or type(part.get("type")) is not str:
            return False
    return True


def _strings(value: list[Any]) -> bool:
    for item in value:  # noqa: SIM110 (a loop: all() over a generator costs more on every request)
        if type(item) is not str:
            return False
    return True


def _messages(value: Any) -> str | None:
    if type(value) is not list or not value:
        return "must be a non-empty list of {role, content} objects"
    for index, message in enumerate(value):
        role = message.get("role") if type(message) is dict else None
        if type(role) is not str:
            return f"[{index}] must be an object with a string 'role'"
        if role not in ROLES:
            return f"[{index}].role must be one of {', '.join(sorted(ROLES))}, not {_show(role)}"
        content = message.get("content")
        if content is None:
            if role in _ROLES_WITH_CONTENT:
                return f"[{index}] ({role}) needs a 'content'"
        elif type(content) is not str and not (type(content) is list and _parts(content)):
            return f"[{index}].content must be a string or a list of {{type, …}} parts"
    return None


def _stop(value: Any) -> str | None:
    if type(value) is str or (type(value) is list and len(value) <= MAX_STOP and _strings(value)):
        return None
    return f"must be a string or a list of at most {MAX_STOP} strings"


def _stream_options(value: Any) -> str | None:
    if type(value) is not dict:
        return f"must be an object such as {{include_usage: true}}, not {_show(value)}"
    usage = value.get("include_usage")
    return None if usage is None or _boolean(usage) is None else "include_usage must be true or false"


def _response_format(value: Any) -> str | None:
    if type(value) is not dict or value.get("type") not in _RESPONSE_FORMATS:
        return f"must be an object whose type is one of {', '.join(sorted(_RESPONSE_FORMATS))}"
    return None


def _tools(value: Any) -> str | None:
    if type(value) is not list or len(value) > MAX_TOOLS or not _parts(value):
        return f"must be a list of at most {MAX_TOOLS} {{type, function}} objects"
    return None


def _tool_choice(value: Any) -> str | None:
    if type(value) is dict or (type(value) is str and value in _TOOL_CHOICES):
        return None
    return f"must be one of {', '.join(sorted(_TOOL_CHOICES))} or an object naming a tool"


_BIAS = _number(-100, 100)


def _logit_bias(value: Any) -> str | None:
    if type(value) is not dict or len(value) > MAX_LOGIT_BIAS:
        return f"must be an object of at most {MAX_LOGIT_BIAS} token ids"
    for key, bias in value.items():
        reason = _BIAS(bias)
        if reason:
            return f"[{_name(key)}] {reason}"
    return None


def _metadata(value: Any) -> str | None:
    if type(value) is not dict:
        return f"must be an object such as {{tenant_id, operation, tags}}, not {_show(value)}"
    for key in ("tenant_id", "operation"):
        item = value.get(key)
        if item is not None and type(item) is not str:
            return f".{key} must be a string, not {_show(item)}"
    tags = value.get("tags")
    if tags is None or (type(tags) is list and _strings(tags)):
        return None
    if type(tags) is dict:
        for tag in tags.values():
            if not (tag is None or type(tag) is str or (type(tag) in _NUMBERS and math.isfinite(tag))):
                break
        else:
            return None
    return ".tags must be a list of strings or an object of {name: value} (strings or numbers)"


def _prompt(value: Any) -> str | None:
    if type(value) is str or (type(value) is list and value and _strings(value)):
        return None
    return "must be a string or a non-empty list of strings"


_PENALTY = _number(-2, 2)
_TOKENS = _integer(1, MAX_TOKENS)
_SHARED: dict[str, Check] = {
    "model": _model,
    "stream": _boolean,
    "stream_options": _stream_options,
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_tokens": _TOKENS,
    "stop": _stop,
    "n": _integer(1, MAX_N),
    "presence_penalty": _PENALTY,
    "frequency_penalty": _PENALTY,
    "seed": _integer(-_INT64, _INT64 - 1),
    "logit_bias": _logit_bias,
    "user": _string,
    "metadata": _metadata,
}
CHAT_CHECKS: dict[str, Check] = _SHARED | {
    "messages": _messages,
    "max_completion_tokens": _TOKENS,
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "logprobs": _boolean,
    "top_logprobs": _integer(0, 20),
}
COMPLETION_CHECKS: dict[str, Check] = _SHARED | {
    "prompt": _prompt,
    "suffix": _string,
    "echo": _boolean,
    "best_of": _integer(1, 20),
    "logprobs": _integer(0, 5),
}
_REQUIRED: dict[Endpoint, tuple[str, ...]] = {"chat": ("messages",), "completion": ("prompt",)}


# ------------------------------------------------------------------------------------------------
# Whole requests


def _unknown(names: list[str], endpoint: str, allowed: Collection[str]) -> Refusal:
    shown = ", ".join(_name(name) for name in names[:_NAMES_SHOWN])
    more = f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
    noun = "parameter" if len(names) == 1 else "parameters"
    listed = ", ".join(sorted(allowed))
    message = f"{noun} not allowed in a {endpoint} request: {shown}{more}; allowed: {listed}"
    return Refusal(400, message, str(names[0])[:64])


def request_refusal(
    body: Mapping[str, Any], endpoint: Endpoint, path_model: str | None = None
) -> Refusal | None:
    """Why a chat (or text-completion) request must be refused before routing; None if it may go.

    `path_model` is the model an Azure- or engine-style path names, which LiteLLM prefers to the
    body's `model`."""
    checks = CHAT_CHECKS if endpoint == "chat" else COMPLETION_CHECKS
    unknown: list[str] = []
    for key, value in body.items():
        check = checks.get(key)
        if check is None:
            unknown.append(key)
        elif value is not None or key in ("model", "messages", "prompt"):
            reason = check(value)
            if reason:
                separator = "" if reason[0] in ".[" else " "
                return Refusal(400, f"{key}{separator}{reason}", key)
    if unknown:
        return _unknown(sorted(unknown, key=str), endpoint, checks)
    if body.get("stream_options") is not None and body.get("stream") is not True:
        return Refusal(400, "stream_options is only allowed with stream: true", "stream_options")
    if path_model is not None:
        reason = _model(path_model)
        if reason:
            return Refusal(400, f"the model in the path {reason}", "model")
    elif "model" not in body:
        return Refusal(400, "model is required: an action such as 'text_processing/quality'", "model")
    for key in _REQUIRED[endpoint]:
        if key not in body:
            return Refusal(400, f"{key} is required", key)
    return None


def controls_refusal(body: Mapping[str, Any], *, prefixed: bool = True) -> Refusal | None:
    """For the other LLM endpoints (responses, messages, embeddings …): refuse LiteLLM's controls
    (and, unless `prefixed` is False, any `mock_…` or `litellm_…` key)."""
    prefixes = _CONTROL_PREFIXES if prefixed else ()
    pricing = pricing_parameters()  # a client's price would be registered for every later call
    found = [k for k in body if k in LITELLM_CONTROLS or k in pricing or str(k).startswith(prefixes)]
    if not found:
        return None
    shown = ", ".join(_name(name) for name in sorted(found, key=str)[:_NAMES_SHOWN])
    message = f"LiteLLM control parameters are not allowed from clients: {shown}"
    return Refusal(400, message, str(found[0])[:64])


def unknown_model_reason(model: str, names: Collection[str], aliases: Mapping[str, str]) -> str | None:
    """Why `model` names no action/strategy the proxy serves, listing the valid ones; None if it does
    (or when the proxy has no router yet to ask)."""
    if not names or model in names or model in aliases:
        return None
    served = [split_group(name) for name in names if "/" in name]
    actions = sorted({action for action, _ in served})
    action, strategy = split_group(model)
    if action not in actions:
        return f"{UnknownActionError(action, None, actions)} (model is <action> or <action>/<strategy>)"
    return str(UnknownActionError(action, strategy, sorted({s for a, s in served if a == action})))
