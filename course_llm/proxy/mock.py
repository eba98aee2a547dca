"""`course-llm serve --mock`: every model answers offline from a fake OpenAI endpoint.

The compiled config is rewritten so every deployment calls `openai/<model id>` at
`http://127.0.0.1:<mock port>/_mock/v1`, a small server that `course-llm serve` runs next to the
proxy (course_llm/proxy/serve.py) and stops only after the proxy has drained, so requests in
flight at SIGTERM still reach it; `[mock-delay 2s]` in a prompt delays each attempt. Requests
still travel the real path (LiteLLM Router, retries, fallbacks, logging, streaming with usage);
rows keep the registry's provider, model id and prices. Token counts are estimated from the text
(about 4 characters a token), so costs look like real ones.

What each model says (canned text, JSON that fits a requested `json_schema`) and which models
fail is decided by course_llm/routing/mock_answers.py, the same source the facade uses offline
(COURSE_LLM_MOCK=1). To try fallbacks, make models fail:
`COURSE_LLM_MOCK_FAIL="gemini-2.5-flash=503,claude-sonnet=429"` in the environment, or a
directive anywhere in the prompt: `[mock-fail gemini-2.5-flash=503]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from course_llm.routing.mock_answers import answer

MOCK_PATH = "/_mock/v1"
MOCK_KEY = "course-llm-mock"


def mock_proxy_config(config: dict[str, Any], base_url: str) -> dict[str, Any]:
    """A copy of a compiled proxy config whose deployments all call the mock endpoint."""
    mocked = copy.deepcopy(config)
    for deployment in mocked["model_list"]:
        params = deployment["litellm_params"]
        params["model"] = f"openai/{deployment['model_info']['course_llm_model_id']}"
        params["api_base"] = base_url
        params["api_key"] = MOCK_KEY
    return mocked


def create_mock_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.post(f"{MOCK_PATH}/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model", "mock"))
        result = answer(model, body.get("messages"), body.get("response_format"))
        if result.status is not None:
            error = {
                "message": f"{result.error_message} for {model}",
                "type": "mock_error",
                "code": str(result.status),
            }
            return JSONResponse({"error": error}, status_code=result.status)
        text = result.text
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
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


# -- the server `serve --mock` runs it in ------------------------------------------------------------

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_DELAY = re.compile(rb"\[mock-delay\s+(\d+(?:\.\d+)?)\s*(ms|s)?\]")
#: The longest `[mock-delay …]` honoured: a prompt cannot hold the mock for longer.
MAX_MOCK_DELAY_S = 60.0


def mock_delay_s(body: bytes) -> float:
    """The delay a `[mock-delay 2s]` (or `500ms`) directive in a request body asks for."""
    found = _DELAY.search(body)
    if found is None:
        return 0.0
    seconds = float(found.group(1)) / (1000 if found.group(2) == b"ms" else 1)
    return min(seconds, MAX_MOCK_DELAY_S)


class _MockDelay:
    """ASGI middleware of the mock upstream: waits as long as the request's directive says."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        delay = mock_delay_s(body)
        if delay:
            await asyncio.sleep(delay)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def mock_upstream_app() -> Any:
    """The offline upstream of `--mock`: the OpenAI-compatible routes above, with delays."""
    from fastapi import FastAPI

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(create_mock_router())
    app.add_middleware(_MockDelay)
    return app


class QuietServer:
    """Mixin for a uvicorn server that leaves the process's signals to the proxy's server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
