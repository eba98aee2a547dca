"""End to end: the routes `course-llm serve` refuses (course_llm/proxy/unserved.py), against the real
process with a provider key in its environment, as a deployment has it.

LiteLLM alone sends a pass-through request to the provider (here the fake upstream, which
`OPENAI_API_BASE` points at) with the proxy's own key: the first test shows that hole, and that
course_llm's pre-call hook closes it under plain `litellm --config`; the others that `serve` refuses
every unserved route, for every method, with or without the proxy's key, and that the routed
endpoints beside them still work and record.
"""

from __future__ import annotations

import base64
import http.client
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.fake_upstream import FakeUpstream
from tests.proxy_process import ProxyProcess, compiled_config, free_port, litellm_argv, serve_argv
from tests.test_adversarial_e2e import count_rows
from tests.test_proxy_e2e import KEY, REQUEST_ID, e2e_registry, proxy_env, rows_of, upstream  # noqa: F401

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ROUTED = {"model": "text_processing", "messages": [{"role": "user", "content": "routed"}]}
#: (method, path, words the 404's message must hold)
UNSERVED = [
    ("POST", "/openai/v1/chat/completions", "pass-through"),
    ("GET", "/openai/v1/models", "pass-through"),
    ("POST", "/openai_passthrough/v1/responses", "pass-through"),
    ("POST", "/anthropic/v1/messages", "pass-through"),
    ("POST", "/v1/threads/thread_1/runs", "Assistants (threads and runs) API"),
    ("GET", "/v1/assistants", "Assistants API"),
    ("POST", "/v1/batches", "Batch API"),
    ("GET", "/v1/fine_tuning/jobs", "fine-tuning API"),
    ("DELETE", "/v1/files/file_1", "Files API"),
    ("POST", "/deepseek/v1/files", "Files API"),  # LiteLLM serves /{provider}/v1/files too
    ("GET", "/gemini/v1/batches", "pass-through"),
    ("POST", "/openai/deployments/text_processing/audio/speech", "pass-through"),
    ("GET", "/openai/deployments/text_processing/chat/completions", "pass-through"),
]


def env(db_url: str, tmp: Path, up: FakeUpstream) -> dict[str, str]:
    """A deployment's environment: the provider's key and base, which LiteLLM's OpenAI
    pass-through route uses."""
    return proxy_env(db_url, tmp) | {
        "OPENAI_API_KEY": "sk-provider-key",
        "OPENAI_API_BASE": up.root_url + "/",
    }


@pytest.fixture(scope="module")
def served(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("unserved")
    registry = e2e_registry(upstream, tmp / "models.yaml")
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    process = ProxyProcess(
        argv, env(f"sqlite+aiosqlite:///{tmp / 'calls.db'}", tmp, upstream), port, tmp / "log"
    )
    yield process.start()
    process.stop()


#: Pass-through requests that carry no `model` (the pre-call hook's other checks need one).
PASS_THROUGH = [
    ("POST", "/openai/v1/threads/thread_1/runs", {"assistant_id": "asst_1"}),
    ("GET", "/openai/v1/models", None),
]


@pytest.mark.parametrize("callback", [False, True], ids=["litellm-alone", "with-course_llm-callback"])
async def test_plain_litellm_forwards_pass_through_requests_unless_course_llm_s_hook_refuses_them(
    upstream: FakeUpstream,  # noqa: F811
    tmp_path: Path,
    callback: bool,
) -> None:
    registry = e2e_registry(upstream, tmp_path / "models.yaml")
    config = compiled_config(registry, tmp_path / "proxy_config.yaml")
    if not callback:  # LiteLLM on course_llm's config, without course_llm's hooks
        data = yaml.safe_load(config.read_text())
        data["litellm_settings"]["callbacks"] = []
        config.write_text(yaml.safe_dump(data))
    port = free_port()
    db = f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}"
    process = ProxyProcess(litellm_argv(config, port), env(db, tmp_path, upstream), port, tmp_path / "log")
    process.start()
    answers = []
    try:
        for method, path, body in PASS_THROUGH:
            upstream.reset()
            answer = httpx.request(method, process.base_url + path, json=body, headers=AUTH, timeout=60)
            answers.append((answer, [(r["path"], r["auth"]) for r in upstream.requests()]))
        # A routed request after them: its row is the only one (the refusals left none).
        routed = httpx.post(f"{process.base_url}/v1/chat/completions", json=ROUTED, headers=AUTH, timeout=60)
        assert routed.status_code == 200, routed.text[:500]
        if callback:
            assert len(await rows_of(db, routed.headers[REQUEST_ID], 1)) == 1
            assert await count_rows(db) == 1
    finally:
        process.stop()
        upstream.reset()
    for (method, path, _), (answer, seen) in zip(PASS_THROUGH, answers, strict=True):
        if not callback:  # the hole: the provider gets the client's request and the proxy's key
            assert seen == [(path.removeprefix("/openai"), True)], (path, seen)
            continue
        assert answer.status_code == 404, (path, answer.text[:500])
        message = answer.json()["error"]["message"]
        assert message.startswith("course_llm does not serve LiteLLM's provider pass-through routes"), message
        assert "/v1/chat/completions" in message
        assert seen == [], (method, path, seen)


@pytest.mark.parametrize("method,path,words", UNSERVED, ids=[f"{m} {p}" for m, p, _ in UNSERVED])
@pytest.mark.parametrize("keyed", [True, False], ids=["key", "no-key"])
def test_serve_answers_an_unserved_route_with_a_404_that_says_why_and_calls_nothing(
    served: ProxyProcess,
    upstream: FakeUpstream,  # noqa: F811
    method: str,
    path: str,
    words: str,
    keyed: bool,
) -> None:
    upstream.reset()
    headers = AUTH if keyed else {}

    response = httpx.request(method, served.base_url + path, json=CHAT, headers=headers, timeout=60)

    assert response.status_code == 404, response.text[:500]
    error = response.json()["error"]
    assert words in error["message"] and "/v1/chat/completions" in error["message"], error
    assert error["code"] == "404"
    assert REQUEST_ID not in response.headers
    assert upstream.requests() == []


async def test_the_openai_client_reads_the_refusal_and_chat_still_records(
    served: ProxyProcess,
    upstream: FakeUpstream,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    upstream.reset()
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=KEY, max_retries=0)

    with pytest.raises(openai.NotFoundError, match="the Files API"):
        client.files.list()
    with pytest.raises(openai.NotFoundError, match="the Batch API"):
        client.batches.retrieve("batch_1")
    raw = client.chat.completions.with_raw_response.create(
        model="text_processing", messages=[{"role": "user", "content": "still routed"}]
    )

    assert raw.http_response.status_code == 200
    db_url = served.env["COURSE_LLM_DATABASE_URL"]
    rows = await rows_of(db_url, raw.headers[REQUEST_ID], 1)
    assert [(row.action, row.success) for row in rows] == [("text_processing", True)]
    assert [r["path"] for r in upstream.requests()] == ["/v1/chat/completions"]


WEBSOCKETS = [
    "/openai/v1/responses",
    "/openai_passthrough/v1/responses",
    "/vertex_ai/live",
    "/deepgram/v1/listen",
]


@pytest.mark.parametrize("path", WEBSOCKETS)
def test_a_websocket_to_a_pass_through_path_is_refused_at_the_handshake(
    served: ProxyProcess,
    upstream: FakeUpstream,  # noqa: F811
    path: str,
) -> None:
    upstream.reset()
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **AUTH,
    }
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        connection.request("GET", path, headers=handshake)
        status = connection.getresponse().status
    finally:
        connection.close()

    assert status == 403
    assert upstream.requests() == []
    assert any("proxy_request_refused" in line and path in line for line in served.log().splitlines())
