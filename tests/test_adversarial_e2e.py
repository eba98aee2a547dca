"""End to end: hostile proxy clients against the real `course-llm serve` process (issue 9).

Proxy clients are untrusted (docs/architecture.md, "Untrusted clients"). Each case below sends one
request, as raw bytes where the openai client could not spell it, and asserts:
- the HTTP status, and that the answer is a JSON error whose message names the reason or the
  parameter (never a bare 500);
- when refused, that the fake upstream received nothing, and that no row was written;
- when legitimate, exactly the rows of its attempts.

"No row" is shown with a barrier: after each case a control request is sent and its row awaited.
The proxy hands a row to its writer before it answers (LiteLLM awaits its failure logging on the
request path, and the writer keeps order), so once the control's row is in the database a row of
the case before it would be too, and the table must have grown by exactly the control's row.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from course_llm.db import LLMCall, create_session_factory, dispose_session_factory
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import ProxyProcess, compiled_config, free_port, litellm_argv
from tests.test_proxy_e2e import (  # noqa: F401 (db_url, proxy and upstream are fixtures)
    KEY,
    REQUEST_ID,
    db_url,
    e2e_registry,
    proxy,
    proxy_env,
    rows_of,
    upstream,
)

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "Summarise cell biology."}]
ONE = "video_analysis/budget"  # a one-model chain (gemini-2.5-flash), the README's own example
MANY = "text_processing"  # deepseek-chat → gemini-2.5-flash
ALLOWED = "; allowed: frequency_penalty, logit_bias"


def chat(model: str = ONE, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HI, **extra}


@dataclass(frozen=True)
class Case:
    name: str
    #: A JSON body, or the raw bytes to send.
    body: Any
    status: int
    #: A substring of the error message (refusals), or of the answer's text (200s).
    words: str
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    #: Legitimate requests: (model_id, success) of each row, in attempt order.
    rows: tuple[tuple[str, bool], ...] = ()
    #: Fake upstream behaviour for the case: model → statuses.
    upstream: dict[str, list[int]] = field(default_factory=dict)


def refused(name: str, body: Any, words: str, status: int = 400, **kwargs: Any) -> Case:
    return Case(name, body, status, words, **kwargs)


def raw(text: str) -> bytes:
    return text.encode()


PARAMETERS = [
    refused(
        "mock_response",
        chat(MANY, mock_response="forged"),
        f"not allowed in a chat request: 'mock_response'{ALLOWED}",
    ),
    refused("mock_response_streamed", chat(stream=True, mock_response="forged"), "'mock_response'"),
    refused("num_retries", chat(MANY, num_retries=5), "'num_retries'"),
    refused("disable_fallbacks", chat(MANY, disable_fallbacks=True), "'disable_fallbacks'"),
    refused("fallbacks", chat(MANY, fallbacks=["video_analysis/quality"]), "'fallbacks'"),
    refused("api_base", chat(api_base="http://127.0.0.1:1/v1"), "'api_base'"),
    refused("base_url_streamed", chat(MANY, stream=True, base_url="http://evil"), "'base_url'"),
    refused("api_key", chat(api_key="sk-attacker"), "'api_key'"),
    refused(
        "model_list", chat(model_list=[{"model_name": ONE, "litellm_params": {"model": "x"}}]), "'model_list'"
    ),
    refused("user_config", chat(user_config={"model_list": []}), "'user_config'"),
    refused("timeout", chat(timeout=0.001), "'timeout'"),
    refused("caching", chat(caching=True), "'caching'"),
    refused("tags_at_top_level", chat(tags=["a"]), "'tags'"),
    refused("litellm_trace_id", chat(litellm_trace_id="forged"), "'litellm_trace_id'"),
    refused(
        "several_at_once",
        chat(MANY, num_retries=9, api_base="x", mock_response="y"),
        "parameters not allowed in a chat request: 'api_base', 'mock_response', 'num_retries'",
    ),
    refused("hostile_parameter_name", {**chat(), "x\u0000" * 100: 1}, r"'x\x00x\x00"),
]

VALUES = [
    refused(
        "temperature_hot",
        chat(MANY, temperature="hot"),
        "temperature must be a number from 0 to 2, not 'hot'",
    ),
    refused(
        "temperature_nan",
        raw(f'{{"model": "{MANY}", "messages": {json.dumps(HI)}, "temperature": NaN}}'),
        "temperature must be a finite number from 0 to 2, not nan",
    ),
    refused(
        "max_tokens_beyond_a_double",
        raw(f'{{"model": "{ONE}", "messages": {json.dumps(HI)}, "max_tokens": 1e400}}'),
        "max_tokens must be an integer from 1 to 1000000, not inf",
    ),
    refused("max_tokens_huge", chat(max_tokens=10**30), "max_tokens must be an integer from 1 to 1000000"),
    refused("n_huge", chat(MANY, n=10**6), "n must be an integer from 1 to 128, not 1000000"),
    refused("seed_beyond_int64", chat(seed=2**70), "seed must be an integer"),
    refused("stream_not_a_boolean", chat(stream="yes"), "stream must be true or false, not 'yes'"),
    refused(
        "stream_options_not_an_object",
        chat(stream=True, stream_options="usage"),
        "stream_options must be an object",
    ),
    refused("messages_not_a_list", chat(MANY, messages="hi"), "messages must be a non-empty list"),
    refused("messages_empty", chat(messages=[]), "messages must be a non-empty list"),
    refused(
        "message_without_role",
        chat(messages=[{"content": "x"}]),
        "messages[0] must be an object with a string 'role'",
    ),
    refused(
        "message_without_role_streamed",
        chat(MANY, stream=True, messages=[{"content": "x"}]),
        "messages[0] must be an object with a string 'role'",
    ),
    refused(
        "message_role_not_a_string", chat(messages=[{"role": ["user"], "content": "x"}]), "string 'role'"
    ),
    refused("no_messages", {"model": ONE}, "messages is required"),
    refused("no_model", {"messages": HI}, "model is required"),
    refused("nul_in_model", chat("video_analysis\u0000/budget"), "model must be a printable action name"),
    refused("unknown_action", chat("poetry"), "unknown action 'poetry'; valid actions: course_structuring"),
    refused("unknown_strategy", chat("video_analysis/cheap"), "valid strategies: budget, default, quality"),
    refused("metadata_not_an_object", chat(metadata="acme"), "metadata must be an object such as {tenant_id"),
    refused(
        "metadata_tags_a_string", chat(metadata={"tags": "bio"}), "metadata.tags must be a list of strings"
    ),
    refused(
        "metadata_tags_numbers", chat(metadata={"tags": [1, 2]}), "metadata.tags must be a list of strings"
    ),
    refused("metadata_tags_nested", chat(metadata={"tags": {"a": {"b": 1}}}), "metadata.tags must be"),
    refused(
        "metadata_tenant_a_number", chat(metadata={"tenant_id": 7}), "metadata.tenant_id must be a string"
    ),
    # LiteLLM's own refusal (its error path imports prisma): a 400 that says why, not a bare 500.
    refused("metadata_api_base", chat(metadata={"api_base": "http://evil"}), "Rejected Request: api_base"),
]

BODIES = [
    refused("body_a_list", [chat()], "the request body must be a JSON object, not a list"),
    refused("body_a_string", "hello", "the request body must be a JSON object, not a string"),
    refused("body_a_number", raw("NaN"), "the request body must be a JSON object, not a number"),
    refused("body_null", raw("null"), "not null"),
    refused("body_invalid_json", raw('{"model": "text_processing", '), "Invalid JSON payload: "),
    refused("body_empty", b"", "Invalid JSON payload: "),
    refused(
        "body_lone_surrogate", raw(r'{"model": "text_processing", "user": "\ud800"}'), "no low surrogate"
    ),
    refused(
        "body_deeply_nested", raw('{"metadata": ' + "[" * 5000 + "]" * 5000 + "}"), "Invalid JSON payload: "
    ),
    refused("body_invalid_utf8", b'{"model": "\xff\xfe"}', "Invalid JSON payload: "),
]


def keyed(headers: dict[str, str]) -> dict[str, Any]:
    return {"headers": headers, "status": 401}


AUTH_CASES = [
    refused("no_key_one_model_chain", chat(), "missing key", **keyed({})),
    refused("no_key_streamed", chat(stream=True), "missing key", **keyed({})),
    refused("wrong_key_one_model_chain", chat(), "wrong key", **keyed({"Authorization": "Bearer sk-nope"})),
    refused(
        "wrong_key_streamed", chat(stream=True), "wrong key", **keyed({"Authorization": "Bearer sk-nope"})
    ),
    refused(
        "wrong_key_many_model_chain", chat(MANY), "wrong key", **keyed({"Authorization": "Bearer sk-no"})
    ),
    refused("bearer_with_empty_token", chat(), "missing key", **keyed({"Authorization": "Bearer "})),
    refused("key_without_bearer", chat(), "missing key", **keyed({"Authorization": KEY})),
    refused("wrong_key_in_x_api_key", chat(MANY), "wrong key", **keyed({"x-api-key": "sk-nope"})),
    refused("wrong_key_and_a_bad_body", [1], "wrong key", **keyed({"Authorization": "Bearer sk-nope"})),
    refused(
        "wrong_key_with_a_forged_request_id",
        chat(metadata={"course_llm_request_id": "forged-id"}),
        "wrong key",
        **keyed({"Authorization": "Bearer sk-nope"}),
    ),
]

OTHER_ENDPOINTS = [
    refused(
        "responses_mock_response",
        {"model": MANY, "input": "hi", "mock_response": "x"},
        "'mock_response'",
        path="/v1/responses",
    ),
    refused(
        "responses_num_retries",
        {"model": MANY, "input": "hi", "num_retries": 5},
        "'num_retries'",
        path="/v1/responses",
    ),
    refused(
        "responses_cache_price",
        {"model": MANY, "input": "hi", "cache_read_input_token_cost": 0},
        "'cache_read_input_token_cost'",
        path="/v1/responses",
    ),
    refused("responses_a_list", [{"model": MANY}], "not a list", path="/v1/responses"),
    refused(
        "completions_with_messages",
        {"model": MANY, "prompt": "x", "messages": HI},
        "'messages'",
        path="/v1/completions",
    ),
    refused(
        "azure_path_unknown_action",
        {"messages": HI},
        "unknown action 'poetry'",
        path="/openai/deployments/poetry/chat/completions",
    ),
    refused("management_route_a_list", [1], "the request body must be a JSON object", path="/key/generate"),
]

METADATA_WITH_NAN = '{"tags": {"course": "bio"}, "score": NaN}'
LEGITIMATE = [
    Case(
        "nulls_mean_absent",
        chat(MANY, temperature=None, stop=None, user=None),
        200,
        "fake answer",
        rows=(("deepseek-chat", True),),
    ),
    Case(
        "free_metadata_keys_and_tag_objects",
        raw(f'{{"model": "{MANY}", "messages": {json.dumps(HI)}, "metadata": {METADATA_WITH_NAN}}}'),
        200,
        "fake answer",
        rows=(("deepseek-chat", True),),
    ),
    Case(
        "azure_style_path_names_the_action",
        {"messages": HI},
        200,
        "fake answer",
        path=f"/openai/deployments/{MANY}/chat/completions",
        rows=(("deepseek-chat", True),),
    ),
    Case(
        "key_in_x_api_key",
        chat(),
        200,
        "fake answer",
        headers={"x-api-key": KEY},
        rows=(("gemini-2.5-flash", True),),
    ),
    Case(
        "streamed_one_model_chain", chat(stream=True), 200, "data: [DONE]", rows=(("gemini-2.5-flash", True),)
    ),
    # Real failed attempts are still rows: an upstream 401 is the upstream's, not the client's.
    Case(
        "upstream_401_on_a_one_model_chain",
        chat(),
        200,
        "fake answer",
        upstream={"gemini-2.5-flash": [401]},
        rows=(("gemini-2.5-flash", False), ("gemini-2.5-flash", False), ("gemini-2.5-pro", True)),
    ),
]

CASES = PARAMETERS + VALUES + BODIES + AUTH_CASES + OTHER_ENDPOINTS + LEGITIMATE


def test_the_suite_has_at_least_40_hostile_inputs() -> None:
    assert len([case for case in CASES if case.status != 200]) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


async def count_rows(db_url: str) -> int:  # noqa: F811
    factory = create_session_factory(db_url)
    try:
        async with factory() as session:
            return int(await session.scalar(sa.select(sa.func.count()).select_from(LLMCall)) or 0)
    finally:
        await dispose_session_factory(factory)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def send(proxy: ProxyProcess, case: Case) -> Answer:  # noqa: F811
    """The case's request, sent with http.client: unlike httpx it lets a header value such as
    `Bearer ` (an empty token) through, as a hostile client would send it."""
    headers = {"Content-Type": "application/json", **case.headers}
    content = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    try:
        connection.request("POST", case.path, body=content, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read().decode("utf-8", "replace"))
    finally:
        connection.close()


async def barrier(client: httpx.Client, db_url: str) -> None:  # noqa: F811
    """Once a control request's row is in the database, so is any row of the requests before it."""
    response = client.post("/v1/chat/completions", json=chat(MANY, user="control"), headers=AUTH)
    assert response.status_code == 200, response.text
    assert len(await rows_of(db_url, response.headers[REQUEST_ID], 1)) == 1


@pytest.fixture
def client(proxy: ProxyProcess) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=proxy.base_url, timeout=60) as control:
        yield control


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_hostile_input_is_answered_with_a_json_reason_and_leaves_only_its_real_rows(
    proxy: ProxyProcess,  # noqa: F811
    upstream: FakeUpstream,  # noqa: F811
    db_url: str,  # noqa: F811
    client: httpx.Client,
    case: Case,
) -> None:
    upstream.reset()
    for model, statuses in case.upstream.items():
        upstream.set_behaviour(model, statuses)
    before = await count_rows(db_url)
    response = send(proxy, case)
    assert response.status == case.status, f"{response.text[:800]}\n{proxy.log()[-3000:]}"
    if case.status != 200:
        assert response.headers["content-type"].startswith("application/json"), response.text[:300]
        error = response.json()["error"]
        assert case.words in error["message"], error
        assert error["code"] == str(case.status)
        assert REQUEST_ID not in response.headers  # never routed: no request id was given
        assert upstream.requests() == [], upstream.requests()
        upstream.reset()
        await barrier(client, db_url)
        assert await count_rows(db_url) == before + 1, "a refused request left a row"
        return
    assert case.words in response.text
    rows = await rows_of(db_url, response.headers[REQUEST_ID], len(case.rows))
    assert [(row.model_id, row.success) for row in rows] == list(case.rows)
    assert [row.attempt for row in rows] == list(range(1, len(case.rows) + 1))
    upstream.reset()
    await barrier(client, db_url)
    assert await count_rows(db_url) == before + len(case.rows) + 1


#: Under plain `litellm --config proxy_config.yaml` there is no request guard in front of LiteLLM:
#: the pre-call hook refuses the same bodies (LiteLLM's snapshot of them), and the logger records
#: no failure of a request it did not admit.
PLAIN = ["num_retries", "temperature_hot", "message_without_role", "no_messages", "unknown_action"]
PLAIN += ["wrong_key_one_model_chain", "no_key_streamed", "wrong_key_with_a_forged_request_id"]


async def test_plain_litellm_refuses_the_same_requests_and_leaves_no_row(
    upstream: FakeUpstream,  # noqa: F811
    tmp_path: Path,
) -> None:
    cases = {case.name: case for case in CASES}
    registry = e2e_registry(upstream, tmp_path / "models.yaml")
    config = compiled_config(registry, tmp_path / "proxy_config.yaml")
    db = f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}"
    port = free_port()
    process = ProxyProcess(litellm_argv(config, port), proxy_env(db, tmp_path), port, tmp_path / "log")
    process.start()
    try:
        with httpx.Client(base_url=process.base_url, timeout=60) as control:
            await barrier(control, db)  # the table exists, and the proxy answers
            for name in PLAIN:
                case = cases[name]
                upstream.reset()
                before = await count_rows(db)
                response = send(process, case)
                assert (response.status, name) == (case.status, name), response.text[:800]
                assert case.words in response.json()["error"]["message"], (name, response.text)
                assert upstream.requests() == [], name
                await barrier(control, db)
                assert await count_rows(db) == before + 1, f"{name} left a row"
    finally:
        process.stop()
        upstream.reset()
