"""The fake upstream is faithful enough for LiteLLM (and the official OpenAI client) to use it.

These call it the way the proxy and the facade will: through ``litellm.acompletion`` with the
``openai/``, ``anthropic/`` and ``gemini/`` prefixes and the fake's base URLs.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import select
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before LiteLLM is imported: no network fetch

import litellm
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler
from openai import AsyncOpenAI

from tests.fake_upstream import FakeUpstream, estimate_tokens

# LiteLLM 1.106.2 builds pydantic models over TypedDicts with ReadOnly items on its first response; pydantic
# warns about it (UserWarning from pydantic._internal._generate_schema), and filterwarnings=error fails on it.
pytestmark = pytest.mark.filterwarnings(r"ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")

PROMPT = "hello there, fake upstream"
MESSAGES = [{"role": "user", "content": PROMPT}]
DEFAULT_REPLY = "fake answer from some-model"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def up(server: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeUpstream]:
    """The shared server, emptied; and a fresh ``litellm.module_level_aclient`` for this test's loop.

    LiteLLM streams Anthropic through that one process-wide client, which the client-cache flush does
    not reach; on the httpx transport its pooled connections stay bound to the event loop of the test
    that first used it, and the next test's Anthropic stream fails with "Event loop is closed".
    """
    server.reset()
    client = AsyncHTTPHandler(timeout=30, client_alias="fake upstream tests")
    monkeypatch.setattr(litellm, "module_level_aclient", client)
    yield server
    await client.close()


def base_for(up: FakeUpstream, provider: str) -> str:
    return {"openai": up.base_url, "anthropic": up.anthropic_base_url, "gemini": up.gemini_base_url}[provider]


async def call(up: FakeUpstream, provider: str, model: str = "some-model", **kwargs: Any) -> Any:
    """One LiteLLM call; max_retries=0 keeps the OpenAI SDK from retrying errors behind our back."""
    kwargs.setdefault("messages", MESSAGES)
    return await litellm.acompletion(
        model=f"{provider}/{model}", api_base=base_for(up, provider), api_key="x", max_retries=0, **kwargs
    )


async def stream_text_and_usage(response: Any) -> tuple[list[str], Any]:
    pieces: list[str] = []
    usage = None
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = getattr(chunk, "usage", None) or usage
    return pieces, usage


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_a_litellm_call_returns_the_canned_reply_and_usage_estimated_from_the_texts(
    up: FakeUpstream, provider: str
) -> None:
    response = await call(up, provider)

    assert response.choices[0].message.content == DEFAULT_REPLY
    assert response.usage.prompt_tokens == estimate_tokens(PROMPT)
    assert response.usage.completion_tokens == estimate_tokens(DEFAULT_REPLY)
    assert [(r["provider"], r["status"], r["stream"]) for r in up.requests("some-model")] == [
        (provider, 200, False)
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_a_litellm_stream_with_include_usage_yields_the_reply_in_several_chunks_and_the_usage(
    up: FakeUpstream, provider: str
) -> None:
    response = await call(up, provider, stream=True, stream_options={"include_usage": True})

    pieces, usage = await stream_text_and_usage(response)

    assert len(pieces) > 1
    assert "".join(pieces) == DEFAULT_REPLY
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        estimate_tokens(PROMPT),
        estimate_tokens(DEFAULT_REPLY),
    )
    assert up.requests("some-model")[0]["stream"] is True


async def test_an_openai_stream_without_include_usage_carries_no_usage_anywhere(up: FakeUpstream) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    async with httpx.AsyncClient(trust_env=False) as client:
        plain = (await client.post(f"{up.base_url}/chat/completions", json=body)).text
        body["stream_options"] = {"include_usage": True}
        with_usage = (await client.post(f"{up.base_url}/chat/completions", json=body)).text

    assert plain.rstrip().endswith("data: [DONE]")
    assert '"usage"' not in plain
    assert '"prompt_tokens"' in with_usage


async def test_the_reply_is_configurable_per_model(up: FakeUpstream) -> None:
    up.set_behaviour("chosen", reply="a configured reply")

    chosen = await call(up, "openai", "chosen")
    other = await call(up, "openai", "other")

    assert chosen.choices[0].message.content == "a configured reply"
    assert other.choices[0].message.content == "fake answer from other"


@pytest.mark.parametrize(
    ("provider", "response_format", "stream"),
    [
        ("openai", {"type": "json_object"}, False),
        ("openai", {"type": "json_object"}, True),
        # LiteLLM asks Anthropic for JSON with a forced "json_tool_call" tool, and only given a schema.
        (
            "anthropic",
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
            False,
        ),
        (
            "anthropic",
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
            True,
        ),
        ("gemini", {"type": "json_object"}, False),
    ],
)
async def test_a_configured_json_reply_is_returned_when_the_request_asks_for_json(
    up: FakeUpstream, provider: str, response_format: dict[str, Any], stream: bool
) -> None:
    up.set_behaviour("some-model", json_reply={"answer": 42})

    response = await call(up, provider, response_format=response_format, stream=stream)
    text = (
        "".join((await stream_text_and_usage(response))[0]) if stream else response.choices[0].message.content
    )
    plain = await call(up, provider)

    assert text.replace(" ", "") == '{"answer":42}'
    assert plain.choices[0].message.content == DEFAULT_REPLY


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_a_configured_500_surfaces_from_litellm_as_an_exception_with_status_code_500(
    up: FakeUpstream, provider: str
) -> None:
    up.set_behaviour("some-model", statuses=[500])

    with pytest.raises(litellm.InternalServerError) as raised:
        await call(up, provider)

    assert raised.value.status_code == 500
    assert [r["status"] for r in up.requests("some-model")] == [500]


async def test_the_statuses_are_answered_in_order_the_last_repeats_and_hits_are_counted(
    up: FakeUpstream,
) -> None:
    up.set_behaviour("flaky", statuses=[500, 429, 200])
    outcomes: list[object] = []

    for _ in range(4):
        try:
            response = await call(up, "openai", "flaky")
            outcomes.append(response.choices[0].message.content)
        except (litellm.InternalServerError, litellm.RateLimitError) as error:
            outcomes.append(error.status_code)

    assert outcomes == [500, 429, "fake answer from flaky", "fake answer from flaky"]
    assert up.hits("flaky") == 4
    assert up.hits("other") == 0
    assert [r["status"] for r in up.requests("flaky")] == [500, 429, 200, 200]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_model_named_fail_code_always_answers_that_status_without_setup(
    up: FakeUpstream, provider: str
) -> None:
    for _ in range(2):
        with pytest.raises(litellm.ServiceUnavailableError) as raised:
            await call(up, provider, "claude-fail-503")
        assert raised.value.status_code == 503

    assert up.hits("claude-fail-503") == 2


async def test_errors_have_each_providers_error_json_shape(up: FakeUpstream) -> None:
    up.set_behaviour("*", statuses=[429])
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 10}
    async with httpx.AsyncClient(base_url=up.root_url, trust_env=False) as client:
        openai_error = await client.post("/v1/chat/completions", json=body)
        anthropic_error = await client.post("/v1/messages", json=body)
        gemini_error = await client.post("/v1beta/models/m:generateContent", json={"contents": []})

    assert openai_error.status_code == anthropic_error.status_code == gemini_error.status_code == 429
    assert openai_error.json()["error"].keys() >= {"message", "type", "code"}
    assert anthropic_error.json()["type"] == "error"
    assert anthropic_error.json()["error"]["type"] == "rate_limit_error"
    assert gemini_error.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


async def test_the_official_openai_client_streams_from_the_fake(up: FakeUpstream) -> None:
    client = AsyncOpenAI(base_url=up.base_url, api_key="x", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="sdk-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake answer from sdk-model"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == estimate_tokens(PROMPT)


async def test_recorded_requests_say_the_path_and_whether_a_key_came_and_reset_forgets_them(
    up: FakeUpstream,
) -> None:
    await call(up, "anthropic", "recorded")
    async with httpx.AsyncClient(trust_env=False) as client:
        await client.post(f"{up.base_url}/chat/completions", json={"model": "recorded", "messages": []})

    requests = up.requests("recorded")
    assert [(r["path"], r["auth"]) for r in requests] == [
        ("/v1/messages", True),
        ("/v1/chat/completions", False),
    ]
    assert requests[0]["body"]["messages"][0]["role"] == "user"
    up.reset()
    assert up.requests() == []


async def test_an_unknown_path_answers_404_and_is_recorded(up: FakeUpstream) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(f"{up.base_url}/v1/messages", json={"model": "lost"})

    assert response.status_code == 404
    assert [r["path"] for r in up.requests("lost")] == ["/v1/v1/messages"]


def test_the_standalone_process_prints_ready_and_is_controlled_by_attach() -> None:
    script = Path(__file__).with_name("fake_upstream.py")
    with subprocess.Popen(
        [sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if readable else ""
            assert line.startswith("READY "), line
            remote = FakeUpstream.attach(int(line.split()[1]))
            remote.set_behaviour("remote", statuses=[503, 200])
            with httpx.Client(trust_env=False) as client:
                body = {"model": "remote", "messages": MESSAGES}
                statuses = [
                    client.post(f"{remote.base_url}/chat/completions", json=body).status_code for _ in "ab"
                ]
            assert statuses == [503, 200]
            assert remote.hits("remote") == 2
            remote.stop()
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def _server_side_nodelay(server_port: int, client_port: int) -> int:
    """TCP_NODELAY of the fake's end of one connection, read from its socket in this process."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            copy = os.dup(int(fd))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        try:
            sock = socket.socket(fileno=copy)
        except OSError:  # not a socket
            os.close(copy)
            continue
        with sock:
            try:
                ends = (sock.getsockname(), sock.getpeername())
            except OSError:  # a listening or unconnected socket
                continue
            if ends == (("127.0.0.1", server_port), ("127.0.0.1", client_port)):
                return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    raise AssertionError(f"no socket of the fake connected to client port {client_port}")


LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not importlib.util.find_spec("uvloop"), reason="no uvloop")
    ),
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads sockets from /proc/self/fd")
@pytest.mark.parametrize("loop", LOOPS)
def test_every_accepted_connection_has_tcp_nodelay_whatever_the_event_loop(loop: str) -> None:
    """asyncio leaves Nagle on for a listening socket built with proto=0; then each answer on a reused
    connection waited ~40 ms for the client's delayed ACK (tests/fake_upstream.py's docstring)."""
    with FakeUpstream(loop=loop) as upstream:
        connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
        try:
            for _ in range(2):  # the second request reuses the connection
                connection.request("POST", "/v1/chat/completions", body=b'{"model": "m", "messages": []}')
                assert connection.getresponse().read()
            client_port = connection.sock.getsockname()[1]
            assert _server_side_nodelay(upstream.port, client_port) != 0
        finally:
            connection.close()
        assert upstream.hits("m") == 2
