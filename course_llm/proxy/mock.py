"""`course-llm serve --mock`: every model answers offline from a fake OpenAI endpoint on the proxy.

The compiled config is rewritten so every deployment calls `openai/<model id>` at
`http://127.0.0.1:<port>/_mock/v1` on the proxy itself. Requests still travel the real path
(LiteLLM Router, retries, fallbacks, logging, streaming with usage); rows keep the registry's
provider, model id and prices. Token counts are estimated from the text (about 4 characters a
token), so costs look like real ones.

To try fallbacks, make models fail: `COURSE_LLM_MOCK_FAIL="gemini-2.5-flash=503,claude-sonnet=429"`
in the environment, or a directive anywhere in the prompt: `[mock-fail gemini-2.5-flash=503]`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

MOCK_PATH = "/_mock/v1"
MOCK_KEY = "course-llm-mock"
_DIRECTIVE = re.compile(r"\[mock-fail\s+([^\]]+)\]")


def mock_proxy_config(config: dict[str, Any], base_url: str) -> dict[str, Any]:
    """A copy of a compiled proxy config whose deployments all call the mock endpoint."""
    mocked = copy.deepcopy(config)
    for deployment in mocked["model_list"]:
        params = deployment["litellm_params"]
        params["model"] = f"openai/{deployment['model_info']['course_llm_model_id']}"
        params["api_base"] = base_url
        params["api_key"] = MOCK_KEY
    return mocked


def _failures(text: str) -> dict[str, int]:
    failures: dict[str, int] = {}
    sources = [os.environ.get("COURSE_LLM_MOCK_FAIL", ""), *_DIRECTIVE.findall(text)]
    for source in sources:
        for item in re.split(r"[,\s]+", source.strip()):
            model, _, status = item.partition("=")
            if model and status.isdigit():
                failures[model] = int(status)
    return failures


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _text_of(messages: Any) -> str:
    parts: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def _reply(model: str, prompt: str, wants_json: bool) -> str:
    if wants_json:
        return json.dumps({"model": model, "summary": "mock answer", "items": ["one", "two", "three"]})
    first_line = prompt.strip().splitlines()[-1][:80] if prompt.strip() else ""
    return (
        f"[mock {model}] This is a canned answer so you can try course_llm without API keys. "
        f"You asked: {first_line!r}. Every attempt of this request is in llm_calls."
    )


def create_mock_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.post(f"{MOCK_PATH}/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model", "mock"))
        prompt = _text_of(body.get("messages"))
        status = _failures(prompt).get(model)
        if status:
            error = {
                "message": f"mock failure {status} for {model}",
                "type": "mock_error",
                "code": str(status),
            }
            return JSONResponse({"error": error}, status_code=status)
        wants_json = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
        text = _reply(model, prompt, wants_json)
        usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        ident, created = f"chatcmpl-mock-{time.time_ns()}", int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _stream(ident, created, model, text, usage, include_usage), media_type="text/event-stream"
        )

    return router


async def _stream(
    ident: str, created: int, model: str, text: str, usage: dict[str, int], include_usage: bool
) -> AsyncIterator[bytes]:
    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        return f"data: {json.dumps({**chunk, **extra})}\n\n".encode()

    words = text.split(" ")
    for i, word in enumerate(words):
        delta = {"content": word + (" " if i < len(words) - 1 else "")}
        if i == 0:
            delta["role"] = "assistant"
        yield event([{"index": 0, "delta": delta, "finish_reason": None}])
        await asyncio.sleep(0)
    yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        yield event([], usage=usage)
    yield b"data: [DONE]\n\n"
