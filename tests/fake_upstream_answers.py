"""How the fake upstream answers: the scripted behaviour per model, and the wire formats of OpenAI Chat
Completions, Anthropic Messages and Gemini generateContent (plain and streamed, successes and errors).

The server around these handlers (control API, sockets, the `FakeUpstream` controller, the CLI) is
tests/fake_upstream.py; this module is what LiteLLM sees of an upstream, so a test that trips over a
provider's answer shape looks here.

A model whose name contains ``fail-<code>`` always answers that status, with no setup.
``error_message`` is the message of an error answer; ``{api_key}`` in it is replaced by the
credential the request carried (``Authorization: Bearer``, ``x-api-key``, ``x-goog-api-key`` or
``?key=``), as upstreams that echo a wrong key do.

Stream faults (any provider's streamed answer), after ``fault_after`` events of the stream:
``"cut"`` drops the connection mid-body (the client sees an incomplete chunked body, as when an
upstream dies); ``"no_finish"`` ends the body cleanly but sends no finish reason, no usage and no
``[DONE]`` (a truncated upstream stream). ``chunk_delay_ms`` waits before each streamed event, so a
client has time to hang up in the middle.
Token counts are estimates: ``max(1, characters // 4)`` of the prompt texts and of the reply.

Schema-aware answers: ``json_reply=FIT_SCHEMA`` makes a model answer a request for JSON as an
upstream that honours schemas does. Given a JSON schema (OpenAI ``response_format.json_schema``,
Gemini ``responseSchema`` / ``responseJsonSchema``, Anthropic ``output_format`` or the
``json_tool_call`` tool's ``input_schema``, whichever LiteLLM sent) it answers JSON made to fit that
schema (`example_for`); asked for JSON with no schema (``json_object``, a bare JSON mime type) it
answers ``NO_SCHEMA_REPLY``, a JSON object that fits no schema with a required property.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

FAIL_IN_NAME = re.compile(r"fail-(\d{3})")
AUTH_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")
_OPENAI_ERRORS = {400: "invalid_request_error", 401: "invalid_api_key", 403: "permission_denied"}
_OPENAI_ERRORS |= {404: "model_not_found", 429: "rate_limit_exceeded"}
_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}
_ANTHROPIC_ERRORS |= {404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}
_ANTHROPIC_ERRORS |= {529: "overloaded_error"}
_GEMINI_ERRORS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
_GEMINI_ERRORS |= {404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


#: `json_reply` value that makes a model answer JSON fitting the schema of the request (module docstring).
FIT_SCHEMA = "<fit the schema of the request>"
#: What a FIT_SCHEMA model answers to a request for JSON that carries no schema.
NO_SCHEMA_REPLY = '{"answer": "no schema was sent"}'


def example_for(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value that fits the JSON schema `schema` ($refs resolved in `root`; nullable recursion stops).

    Enough for the schemas Pydantic and LiteLLM's conversions of them produce, not all of JSON Schema.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return example_for(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key) or [] if isinstance(o, dict)]
        concrete = [o for o in options if str(o.get("type", "")).lower() != "null"]
        if options and (not concrete or (depth > 3 and len(concrete) < len(options))):
            return None  # deep in a recursive model: the null branch ends it
        if concrete:
            return example_for(concrete[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = str(kind or ("object" if "properties" in schema else "")).lower()
    if schema.get("nullable") and depth > 3:
        return None
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: example_for(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems") or 0))
        item = example_for(schema.get("items") or {}, root, depth + 1)
        return [f"{item}-{i}" if isinstance(item, str) else item for i in range(count)]
    if kind == "string":
        return "x" * max(7, int(schema.get("minLength") or 0))
    if kind in ("integer", "number"):
        return max(1, int(schema.get("minimum") or 0))
    return True if kind == "boolean" else None


def request_schema(provider: str, body: dict[str, Any]) -> Any:
    """The JSON schema a request for JSON carries, in the provider's wire format; None without one."""
    if provider == "openai":
        spec = (body.get("response_format") or {}).get("json_schema") or {}
        return spec.get("schema")
    if provider == "gemini":
        config = body.get("generationConfig") or {}
        for key in ("responseJsonSchema", "response_json_schema", "responseSchema", "response_schema"):
            if config.get(key) is not None:
                return config[key]
        return None
    output = body.get("output_format") or (body.get("output_config") or {}).get("format") or {}
    if output.get("schema") is not None:
        return output["schema"]
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name") == "json_tool_call"]
    return tools[0].get("input_schema") if tools else None


def estimate_tokens(text: str) -> int:
    """The fake's token count for a text: a quarter of its characters, at least 1."""
    return max(1, len(text) // 4)


def _text_of(content: Any) -> str:
    """The text of a content field: a string, or a list of parts (OpenAI, Anthropic or Gemini)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text_of(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _pieces(text: str) -> list[str]:
    """The reply cut into word-sized streaming deltas (several chunks for any multi-word reply)."""
    return re.findall(r"\S+\s*|\s+", text) or [""]


STREAM_FAULTS = ("cut", "no_finish")


class StreamCut(Exception):
    """Raised inside a streamed body to make the server drop the connection mid-response."""


@dataclass
class Behaviour:
    statuses: list[int] = field(default_factory=lambda: [200])
    delay_ms: float = 0
    reply: str | None = None
    json_reply: str | None = None
    stream_fault: str | None = None
    fault_after: int = 2
    chunk_delay_ms: float = 0
    error_message: str | None = None


@dataclass(frozen=True)
class StreamPlan:
    """How a streamed answer misbehaves: `Behaviour`'s stream fields, for the SSE writer."""

    fault: str | None = None
    after: int = 2
    chunk_delay_ms: float = 0


class FakeState:
    """What the server was told and what it received; touched only from the server's event loop."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[dict[str, Any]] = []

    def record(
        self, request: Request, provider: str | None, model: str, body: dict[str, Any], status: int
    ) -> None:
        stream = bool(body.get("stream")) or "stream" in request.url.path.lower()  # Gemini: in the path
        auth = any(name in request.headers for name in AUTH_HEADERS)
        entry = {"provider": provider, "model": model, "path": request.url.path, "status": status}
        self.requests.append(entry | {"stream": stream, "auth": auth, "body": body, "time": time.time()})

    def behaviour(self, model: str) -> Behaviour:
        return self.behaviours.get(model) or self.behaviours.get("*") or Behaviour()

    def error_message(self, request: Request, model: str) -> str | None:
        """The scripted message of an error answer, with the request's credential filled in."""
        template = self.behaviour(model).error_message
        if template is None:
            return None
        credential = request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")
        credential = credential or request.query_params.get("key") or ""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not credential and scheme.lower() == "bearer":
            credential = token.strip()
        return template.replace("{api_key}", credential)

    def stream_plan(self, model: str) -> StreamPlan:
        behaviour = self.behaviour(model)
        return StreamPlan(behaviour.stream_fault, behaviour.fault_after, behaviour.chunk_delay_ms)

    async def answer(
        self, request: Request, provider: str, model: str, body: dict[str, Any], wants_json: bool
    ) -> tuple[int, str, bool]:
        """(status, reply text, whether the reply is the configured JSON) for this request, recorded."""
        behaviour = self.behaviour(model)
        if match := FAIL_IN_NAME.search(model):
            status = int(match.group(1))
        else:
            status = behaviour.statuses.pop(0) if len(behaviour.statuses) > 1 else behaviour.statuses[0]
        self.record(request, provider, model, body, status)
        if behaviour.delay_ms:
            await asyncio.sleep(behaviour.delay_ms / 1000)
        if wants_json and behaviour.json_reply == FIT_SCHEMA:
            schema = request_schema(provider, body)
            return status, NO_SCHEMA_REPLY if schema is None else json.dumps(example_for(schema)), True
        if wants_json and behaviour.json_reply is not None:
            return status, behaviour.json_reply, True
        return status, behaviour.reply or f"fake answer from {model}", False


def _error(provider: str, status: int, model: str, message: str | None = None) -> JSONResponse:
    message = message or f"fake upstream answered {status} for model {model!r}"
    if provider == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(status, "api_error")
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    elif provider == "gemini":
        kind = _GEMINI_ERRORS.get(status, "INTERNAL")
        body = {"error": {"code": status, "message": message, "status": kind}}
    else:
        kind = _OPENAI_ERRORS.get(status, "server_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return JSONResponse(body, status_code=status)


def _sse(events: Iterable[str], plan: StreamPlan | None = None) -> StreamingResponse:
    """The events as a text/event-stream body, misbehaving as `plan` says ("no_finish" is applied
    by each provider's writer, which knows which events carry the finish reason)."""
    plan = plan or StreamPlan()

    async def gen() -> AsyncIterator[str]:
        for sent, event in enumerate(events):
            if plan.fault == "cut" and sent >= plan.after:
                # uvicorn closes the connection when the body raises after the headers went out.
                raise StreamCut(f"fake upstream cut the stream after {sent} events")
            if plan.chunk_delay_ms:
                await asyncio.sleep(plan.chunk_delay_ms / 1000)
            yield event

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def request_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; {} for anything else, so a malformed request is still answered."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def fake_state(request: Request) -> FakeState:
    """The app's FakeState (replaced whole by ``/_control/reset``, so always read it from the app)."""
    state: FakeState = request.app.state.fake
    return state


async def openai_chat(request: Request) -> Response:
    body = await request_body(request)
    model, stream = str(body.get("model", "")), bool(body.get("stream"))
    wants_json = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
    status, reply, _ = await fake_state(request).answer(request, "openai", model, body, wants_json)
    if status != 200:
        return _error("openai", status, model, fake_state(request).error_message(request, model))
    prompt = estimate_tokens("".join(_text_of(m.get("content")) for m in body.get("messages", [])))
    completion = estimate_tokens(reply)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}
    head["system_fingerprint"] = "fp_fake"
    if not stream:
        message = {"role": "assistant", "content": reply, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": usage})
    # A model named "...no-usage..." ignores include_usage, as some OpenAI-compatible servers do.
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and "no-usage" not in model
    head |= {"object": "chat.completion.chunk"}
    tail: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice], **tail}

    plan = fake_state(request).stream_plan(model)
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in _pieces(reply)]
    if plan.fault == "no_finish":
        return _sse([f"data: {json.dumps(c)}\n\n" for c in chunks[: plan.after]], plan)
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append({**head, "choices": [], "usage": usage})
    return _sse([f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"], plan)


async def anthropic_messages(request: Request) -> Response:
    body = await request_body(request)
    model, stream = str(body.get("model", "")), bool(body.get("stream"))
    # LiteLLM asks for JSON with a forced "json_tool_call" tool, or natively with output_format.
    json_tool = any(t.get("name") == "json_tool_call" for t in body.get("tools") or [] if isinstance(t, dict))
    native_json = bool(body.get("output_format") or (body.get("output_config") or {}).get("format"))
    status, reply, is_json = await fake_state(request).answer(
        request, "anthropic", model, body, json_tool or native_json
    )
    if status != 200:
        return _error("anthropic", status, model, fake_state(request).error_message(request, model))
    prompt = _text_of(body.get("system"))
    prompt += "".join(_text_of(m.get("content")) for m in body.get("messages", []))
    usage = {"input_tokens": estimate_tokens(prompt), "output_tokens": estimate_tokens(reply)}
    as_tool = is_json and json_tool and not native_json
    block: dict[str, Any] = {"type": "text", "text": reply}
    if as_tool:
        block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": "json_tool_call"}
        block["input"] = json.loads(reply)
    stop_reason = "tool_use" if as_tool else "end_turn"
    message: dict[str, Any] = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "model": model}
    message["role"] = "assistant"
    if not stream:
        message |= {"content": [block], "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}
        return JSONResponse(message)
    message |= {"content": [], "stop_reason": None, "stop_sequence": None}
    message["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    if as_tool:
        start = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": reply}]
    else:
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(reply)]
    events: list[dict[str, Any]] = [{"type": "message_start", "message": message}]
    events.append({"type": "content_block_start", "index": 0, "content_block": start})
    events += [{"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas]
    plan = fake_state(request).stream_plan(model)
    if plan.fault == "no_finish":
        events = events[: plan.after]
    else:
        events.append({"type": "content_block_stop", "index": 0})
        end = {"delta": {"stop_reason": stop_reason, "stop_sequence": None}}
        events.append({"type": "message_delta", **end, "usage": {"output_tokens": usage["output_tokens"]}})
        events.append({"type": "message_stop"})
    return _sse((f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events), plan)


async def gemini_generate(request: Request) -> Response:
    model, _, action = request.path_params["target"].partition(":")
    if action not in ("generateContent", "streamGenerateContent"):
        return _error("gemini", 404, model)
    body = await request_body(request)
    stream = action == "streamGenerateContent"
    config = body.get("generationConfig") or {}
    wants_json = "application/json" in (config.get("responseMimeType"), config.get("response_mime_type"))
    status, reply, _ = await fake_state(request).answer(request, "gemini", model, body, wants_json)
    if status != 200:
        return _error("gemini", status, model, fake_state(request).error_message(request, model))
    prompt = _text_of((body.get("systemInstruction") or {}).get("parts"))
    prompt += "".join(_text_of(c.get("parts")) for c in body.get("contents", []))
    prompt_tokens, reply_tokens = estimate_tokens(prompt), estimate_tokens(reply)
    usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": reply_tokens}
    usage["totalTokenCount"] = prompt_tokens + reply_tokens
    rid = uuid.uuid4().hex[:20]

    def response(text: str, last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        shown = usage if last else {"promptTokenCount": prompt_tokens}
        return {"candidates": [candidate], "usageMetadata": shown, "modelVersion": model, "responseId": rid}

    if not stream:
        return JSONResponse(response(reply, last=True))
    plan = fake_state(request).stream_plan(model)
    pieces = _pieces(reply)
    events = [response(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
    if plan.fault == "no_finish":
        events = [response(p, last=False) for p in pieces][: plan.after]
    return _sse((f"data: {json.dumps(e)}\n\n" for e in events), plan)
