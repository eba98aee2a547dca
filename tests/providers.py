"""Provider HTTP mocked with respx: OpenAI, DeepSeek, Anthropic and Gemini, answering per model.

`ProviderMock` routes every provider's endpoint through one handler that reads the model name from
the request (the JSON body, or the URL for Gemini), answers with that provider's own success or
error shape, and counts the requests each model received. Tests script failures per model:

    providers.script("gemini-2.5-flash", 500, 500)   # two 500s, then the default 200
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any

import httpx
import respx

OPENAI_URL = "https://api.openai.com/v1/chat/completions"
DEEPSEEK_URL = re.compile(r"https://api\.deepseek\.com(/v1)?/chat/completions")
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
GEMINI_URL = re.compile(r"https://generativelanguage\.googleapis\.com/v1beta/models/([^:]+):generateContent")

TOKENS_IN = 120
TOKENS_OUT = 30


class ProviderMock:
    """One respx router for all four providers; `hits[model]` counts requests per upstream model."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, httpx.Request]] = []
        self._scripts: dict[str, list[int]] = defaultdict(list)
        self.replies: dict[str, str] = {}
        router.post(OPENAI_URL).mock(side_effect=lambda r: self._answer("openai", r))
        router.post(DEEPSEEK_URL).mock(side_effect=lambda r: self._answer("openai", r))
        router.post(ANTHROPIC_URL).mock(side_effect=lambda r: self._answer("anthropic", r))
        router.post(GEMINI_URL).mock(side_effect=lambda r: self._answer("gemini", r))

    def script(self, model: str, *statuses: int) -> None:
        """The next requests for `model` answer these statuses in order, then 200."""
        self._scripts[model].extend(statuses)

    def always(self, model: str, status: int) -> None:
        self._scripts[model] = [status] * 100

    def reply(self, model: str, text: str) -> None:
        self.replies[model] = text

    def _answer(self, shape: str, request: httpx.Request) -> httpx.Response:
        if shape == "gemini":
            match = GEMINI_URL.match(str(request.url))
            assert match is not None
            model = match.group(1)
        else:
            model = json.loads(request.content)["model"]
        self.hits[model] += 1
        self.requests.append((model, request))
        status = self._scripts[model].pop(0) if self._scripts[model] else 200
        if status != 200:
            return httpx.Response(status, json=_error(shape, status))
        return httpx.Response(
            200, json=_success(shape, model, self.replies.get(model, f"answer from {model}"))
        )


def _error(shape: str, status: int) -> dict[str, Any]:
    message = f"upstream says {status}"
    if shape == "anthropic":
        return {"type": "error", "error": {"type": "api_error", "message": message}}
    if shape == "gemini":
        return {"error": {"code": status, "message": message, "status": "UNAVAILABLE"}}
    return {"error": {"message": message, "type": "server_error", "code": str(status)}}


def _success(shape: str, model: str, text: str) -> dict[str, Any]:
    if shape == "anthropic":
        return {
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": TOKENS_IN, "output_tokens": TOKENS_OUT},
        }
    if shape == "gemini":
        return {
            "candidates": [
                {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": TOKENS_IN,
                "candidatesTokenCount": TOKENS_OUT,
                "totalTokenCount": TOKENS_IN + TOKENS_OUT,
            },
            "modelVersion": model,
        }
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": TOKENS_IN,
            "completion_tokens": TOKENS_OUT,
            "total_tokens": TOKENS_IN + TOKENS_OUT,
        },
    }
