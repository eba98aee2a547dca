"""End to end: the real proxy process, a fake upstream on 127.0.0.1, and the official openai client.

`course-llm serve` runs as a child process against tests/fake_upstream.py, whose models answer
OpenAI (deepseek, gpt-4o-mini), Anthropic (claude-sonnet) and Gemini (gemini-*) shapes and fail on
command. Every test checks what the client saw and the rows the proxy wrote, found by the request
id the proxy returns in a response header.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from course_llm.db import (
    LLMCall,
    create_session_factory,
    dispose_session_factory,
    fetch_request,
    is_database_error,
)
from course_llm.proxy.serve import DEV_KEY
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import ProxyProcess, free_port, litellm_argv, serve_argv
from tests.test_dashboard import chromium, dump_dom  # noqa: F401 (chromium is a fixture)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent
KEY = "sk-e2e-master-key"
REQUEST_ID = "x-course-llm-request-id"
CLEAN_EXIT = (0, -signal.SIGTERM)


def e2e_registry(up: FakeUpstream, path: Path) -> Path:
    """The shipped registry, every model pointed at the fake upstream."""
    data = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    bases = {"gemini": up.gemini_base_url, "anthropic": up.anthropic_base_url}
    for model in data["models"].values():
        model["api_base"] = bases.get(model["provider"], up.base_url)
        model["api_key_env"] = "FAKE_UPSTREAM_KEY"
    # An upstream that ignores stream_options.include_usage, as some compatible servers do.
    data["models"]["quiet-model"] = {
        **data["models"]["deepseek-chat"],
        "provider": "openai",
        "model": "quiet-no-usage",
    }
    data["routing"]["text_processing"]["quiet"] = ["quiet-model"]
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('e2e') / 'calls.db'}"
    url: str = request.getfixturevalue("postgres_database_url")
    return url


def proxy_env(db_url: str, tmp: Path) -> dict[str, str]:
    return {
        "LITELLM_MASTER_KEY": KEY,
        "COURSE_LLM_DATABASE_URL": db_url,
        "COURSE_LLM_SPOOL_PATH": str(tmp / "spool.jsonl"),
        "FAKE_UPSTREAM_KEY": "fake-key",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


@pytest.fixture(scope="module")
def proxy(
    upstream: FakeUpstream, db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("proxy")
    registry = e2e_registry(upstream, tmp / "models.yaml")
    port = free_port()
    process = ProxyProcess(
        serve_argv("--registry", str(registry), "--port", str(port)),
        proxy_env(db_url, tmp),
        port,
        tmp / "proxy.log",
    ).start()
    yield process
    process.stop()


@pytest.fixture
def up(upstream: FakeUpstream) -> FakeUpstream:
    upstream.reset()
    return upstream


def client(proxy: ProxyProcess, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key=key, max_retries=0)


async def rows_of(db_url: str, request_id: str, count: int, timeout_s: float = 20) -> list[LLMCall]:
    """The request's rows once `count` of them are written (the writer is asynchronous)."""
    factory = create_session_factory(db_url)
    try:
        deadline = time.monotonic() + timeout_s
        rows: list[LLMCall] = []
        while time.monotonic() < deadline:
            try:
                rows = await fetch_request(factory, request_id)
            except Exception as exc:  # the proxy may not have created the table yet
                if not is_database_error(exc):
                    raise
                rows = []
            if len(rows) >= count:
                await asyncio.sleep(0.2)  # nothing more must follow
                return await fetch_request(factory, request_id)
            await asyncio.sleep(0.05)
        return rows
    finally:
        await dispose_session_factory(factory)


async def ask(
    proxy: ProxyProcess, model: str, content: str = "Summarise cell biology.", **kwargs: Any
) -> Any:
    raw = await client(proxy).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )
    return raw.headers[REQUEST_ID], raw.parse()


def chain(rows: list[LLMCall]) -> list[tuple[Any, ...]]:
    return [(r.attempt, r.model_id, r.served_strategy, r.status_code, r.success) for r in rows]


async def test_a_plain_call_leaves_one_row(proxy: ProxyProcess, up: FakeUpstream, db_url: str) -> None:
    request_id, response = await ask(proxy, "text_processing")
    assert response.choices[0].message.content
    [row] = await rows_of(db_url, request_id, 1)
    assert (row.action, row.strategy, row.served_strategy, row.model_id, row.provider) == (
        "text_processing",
        "default",
        "default",
        "deepseek-chat",
        "deepseek",
    )
    assert (row.success, row.source, row.attempt) == (True, "proxy", 1)
    assert (row.tokens_in, row.tokens_out) == (response.usage.prompt_tokens, response.usage.completion_tokens)
    expected = (row.tokens_in * 0.00028 + row.tokens_out * 0.00042) / 1000
    assert row.cost_usd == pytest.approx(expected)
    assert up.hits("deepseek-chat") == 1


async def test_a_named_strategy_is_served_by_its_chain(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str
) -> None:
    request_id, _ = await ask(proxy, "course_structuring/quality")
    rows = await rows_of(db_url, request_id, 1)
    assert chain(rows) == [(1, "claude-sonnet", "quality", None, True)]
    assert rows[0].provider == "anthropic"


async def test_a_failing_model_falls_back_within_the_chain(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str
) -> None:
    up.set_behaviour("gemini-2.5-flash", [500, 500])
    request_id, _ = await ask(proxy, "video_analysis")
    rows = await rows_of(db_url, request_id, 3)
    assert chain(rows) == [
        (1, "gemini-2.5-flash", "default", 500, False),
        (2, "gemini-2.5-flash", "default", 500, False),
        (3, "gemini-2.5-pro", "default", None, True),
    ]
    assert {r.request_id for r in rows} == {request_id}


async def test_an_exhausted_strategy_falls_back_to_the_default_chain(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str
) -> None:
    up.set_behaviour("claude-sonnet-4-5", [401])
    up.set_behaviour("gemini-2.5-pro", [429, 429])
    request_id, _ = await ask(proxy, "course_structuring/quality")
    rows = await rows_of(db_url, request_id, 4)
    assert chain(rows) == [
        (1, "claude-sonnet", "quality", 401, False),
        (2, "gemini-2.5-pro", "quality", 429, False),
        (3, "gemini-2.5-pro", "quality", 429, False),
        (4, "gemini-2.5-flash", "default", None, True),
    ]
    assert {(r.action, r.strategy) for r in rows} == {("course_structuring", "quality")}


async def test_everything_failing_reaches_the_client_and_every_attempt_is_a_row(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str
) -> None:
    up.set_behaviour("gemini-2.5-flash", [503])
    up.set_behaviour("gemini-2.5-pro", [403])
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(proxy, "video_analysis/budget")
    assert caught.value.status_code == 403  # the last attempt's status
    request_id = caught.value.response.headers[REQUEST_ID]
    message = str(caught.value)
    assert f"all models failed for video_analysis/budget (request {request_id})" in message
    assert "#1 gemini-2.5-flash (budget): 503" in message and "#5 gemini-2.5-pro (default): 403" in message
    rows = await rows_of(db_url, request_id, 5)
    assert chain(rows) == [
        (1, "gemini-2.5-flash", "budget", 503, False),
        (2, "gemini-2.5-flash", "budget", 503, False),
        (3, "gemini-2.5-flash", "default", 503, False),  # default chain: flash again, then pro
        (4, "gemini-2.5-flash", "default", 503, False),
        (5, "gemini-2.5-pro", "default", 403, False),
    ]


@pytest.mark.parametrize("include_usage", [True, False])
# A one-model chain, and a chain of several models: there LiteLLM leaves a zero usage where the
# client asked for none, which was once recorded as 0 tokens and cost 0.
@pytest.mark.parametrize("model", ["text_processing/budget", "text_processing"])
async def test_a_streamed_call_is_logged_with_real_token_counts(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str, include_usage: bool, model: str
) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = await client(proxy).chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "Stream a long answer about photosynthesis, please."}],
        stream=True,
        **options,
    )
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert text
    assert len(usage_chunks) == (1 if include_usage else 0)  # only a client that asked sees usage
    [row] = await rows_of(db_url, raw.headers[REQUEST_ID], 1)
    assert row.stream is True and row.success is True
    assert row.tokens_in is not None and row.tokens_out is not None and row.tokens_out > 1
    upstream_request = up.requests("deepseek-chat")[-1]
    assert upstream_request["stream"] is True
    if include_usage:
        assert (row.tokens_in, row.tokens_out) == (
            usage_chunks[0].usage.prompt_tokens,
            usage_chunks[0].usage.completion_tokens,
        )
    assert row.cost_usd is not None and row.cost_usd > 0
    assert "usage_estimated" not in row.metadata_  # the upstream gave its own counts


async def test_a_stream_whose_upstream_sends_no_usage_is_counted_and_marked_estimated(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str
) -> None:
    raw = await client(proxy).chat.completions.with_raw_response.create(
        model="text_processing/quiet",
        messages=[{"role": "user", "content": "Stream an answer about mitochondria."}],
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    [row] = await rows_of(db_url, raw.headers[REQUEST_ID], 1)
    assert text and row.success and row.stream
    # LiteLLM counted the tokens itself: the row says so.
    assert row.tokens_in is not None and row.tokens_out is not None and row.tokens_out > 1 and row.cost_usd
    assert row.metadata_.get("usage_estimated") is True


async def test_attribution_from_the_body_lands_on_the_rows(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str
) -> None:
    up.set_behaviour("deepseek-chat", [500, 200])
    request_id, _ = await ask(
        proxy,
        "text_processing",
        user="student-42",
        extra_body={
            "metadata": {"tenant_id": "acme", "operation": "grade_essay", "tags": {"course": "bio101"}}
        },
    )
    rows = await rows_of(db_url, request_id, 2)
    assert len(rows) == 2
    for row in rows:
        assert (row.tenant_id, row.operation, row.end_user) == ("acme", "grade_essay", "student-42")
        assert row.metadata_["tags"] == {"course": "bio101"}
        assert "headers" not in row.metadata_
    assert rows[1].tokens_in is not None


async def test_requests_sharing_a_trace_header_still_get_their_own_request_ids(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str
) -> None:
    shared = {"x-litellm-trace-id": "client-trace-1", "x-litellm-session-id": "session-1"}
    metadata = {"course_llm_router": "someone-else", "original_model_group": "video_analysis/quality"}
    ids = []
    for _ in range(2):
        request_id, _ = await ask(
            proxy, "text_processing", extra_headers=shared, extra_body={"metadata": metadata}
        )
        ids.append(request_id)
    assert len(set(ids)) == 2
    for request_id in ids:
        [row] = await rows_of(db_url, request_id, 1)
        assert (row.attempt, row.action, row.strategy) == (1, "text_processing", "default")


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("poetry", "valid actions: course_structuring"),
        ("video_analysis/cheap", "valid strategies: budget, default"),
    ],
)
async def test_an_unknown_action_or_strategy_is_a_400_naming_the_valid_ones(
    proxy: ProxyProcess, up: FakeUpstream, model: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=words) as caught:
        await ask(proxy, model)
    assert caught.value.status_code == 400
    assert up.requests() == []


async def test_a_wrong_or_missing_key_is_a_401(proxy: ProxyProcess, up: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await client(proxy, key="sk-wrong").chat.completions.create(
            model="text_processing", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 401
    response = httpx.post(
        f"{proxy.base_url}/v1/chat/completions", json={"model": "text_processing"}, timeout=10
    )
    assert response.status_code == 401
    assert up.requests() == []


@pytest.mark.parametrize(
    "body",
    [
        {"model": "text_processing", "messages": "not a list"},
        {"model": "text_processing", "messages": []},
        {"model": "text_processing", "messages": [{"content": "no role"}]},
    ],
)
async def test_a_malformed_body_is_a_400_and_no_attempt(
    proxy: ProxyProcess, up: FakeUpstream, db_url: str, body: dict[str, Any]
) -> None:
    response = httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "messages" in response.json()["error"]["message"]
    assert up.requests() == []


async def test_sigterm_under_load_keeps_the_rows_of_every_completed_call(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.reset()
    upstream.set_behaviour("*", delay_ms=1500)
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'sigterm.db'}"
    port = free_port()
    registry = e2e_registry(upstream, tmp_path / "models.yaml")
    process = ProxyProcess(
        serve_argv("--registry", str(registry), "--port", str(port)),
        proxy_env(db_url, tmp_path),
        port,
        tmp_path / "log",
    ).start()
    try:
        calls = [ask(process, "text_processing", f"question {i}") for i in range(16)]
        tasks = [asyncio.ensure_future(call) for call in calls]
        deadline = time.monotonic() + 60
        while len(upstream.requests("deepseek-chat")) < len(tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # SIGTERM once every request is in flight upstream
        assert len(upstream.requests("deepseek-chat")) == len(tasks), process.log()[-3000:]
        process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # uvicorn shuts down gracefully, then re-raises the signal: -15 is a clean exit.
        assert process.process.wait(timeout=60) in CLEAN_EXIT, process.log()[-3000:]  # type: ignore[union-attr]
    finally:
        process.stop()
        upstream.reset()
    completed = [result[0] for result in results if not isinstance(result, BaseException)]
    assert len(completed) == len(tasks), f"in-flight calls were dropped: {results}"
    for request_id in completed:
        assert len(await rows_of(db_url, request_id, 1, timeout_s=2)) == 1, request_id


async def test_mock_mode_needs_no_upstream_and_logs_the_same_rows(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'mock.db'}"
    port = free_port()
    env = proxy_env(db_url, tmp_path)
    process = ProxyProcess(serve_argv("--mock", "--port", str(port)), env, port, tmp_path / "log").start()
    try:
        request_id, response = await ask(
            process, "course_structuring/quality", "outline [mock-fail claude-sonnet=500]"
        )
        assert "mock" in response.choices[0].message.content
        rows = await rows_of(db_url, request_id, 3)
        assert chain(rows) == [
            (1, "claude-sonnet", "quality", 500, False),
            (2, "claude-sonnet", "quality", 500, False),
            (3, "gemini-2.5-pro", "quality", None, True),
        ]
        assert rows[2].provider == "gemini" and rows[2].tokens_out and rows[2].cost_usd
        with pytest.raises(openai.BadRequestError):
            await ask(process, "poetry")
        with pytest.raises(openai.AuthenticationError):
            await client(process, key="nope").chat.completions.create(
                model="text_processing", messages=[{"role": "user", "content": "x"}]
            )
    finally:
        assert process.stop() in CLEAN_EXIT


async def test_mock_mode_uses_the_printed_development_key_when_none_is_set(tmp_path: Path) -> None:
    port = free_port()
    env = {**proxy_env(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", tmp_path), "LITELLM_MASTER_KEY": ""}
    process = ProxyProcess(serve_argv("--mock", "--port", str(port)), env, port, tmp_path / "log").start()
    try:
        words = (word.strip("\"'") for word in process.log().split())
        [key] = {word for word in words if word.startswith("sk-course-llm-")}
        assert key == DEV_KEY  # the key the README's examples use
        response = await client(process, key=key).chat.completions.create(
            model="text_processing", messages=[{"role": "user", "content": "hi"}]
        )
        assert response.choices[0].message.content
    finally:
        process.stop()


def test_serve_refuses_a_public_host_without_a_key(tmp_path: Path) -> None:
    import subprocess

    env = {
        **os.environ,
        **proxy_env(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path),
        "LITELLM_MASTER_KEY": "",
    }
    result = subprocess.run(
        serve_argv("--mock", "--host", "0.0.0.0", "--port", str(free_port())),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "without LITELLM_MASTER_KEY" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


async def test_plain_litellm_with_the_compiled_config_logs_the_same_rows(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    import subprocess

    upstream.reset()
    registry = e2e_registry(upstream, tmp_path / "models.yaml")
    config = tmp_path / "proxy_config.yaml"
    compiled = subprocess.run(
        [str(Path(serve_argv()[0])), "compile", "--registry", str(registry), "--output", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compiled.returncode == 0, compiled.stderr
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}"  # never migrated: the logger does it
    port = free_port()
    process = ProxyProcess(
        litellm_argv(config, port), proxy_env(db_url, tmp_path), port, tmp_path / "log"
    ).start()
    try:
        upstream.set_behaviour("deepseek-chat", [500, 500])
        request_id, _ = await ask(
            process, "text_processing", user="u-1", extra_body={"metadata": {"tenant_id": "t"}}
        )
        rows = await rows_of(db_url, request_id, 3)
        assert chain(rows) == [
            (1, "deepseek-chat", "default", 500, False),
            (2, "deepseek-chat", "default", 500, False),
            (3, "gemini-2.5-flash", "default", None, True),
        ]
        assert {(r.tenant_id, r.end_user, r.source) for r in rows} == {("t", "u-1", "proxy")}
        with pytest.raises(openai.BadRequestError, match="valid actions"):
            await ask(process, "poetry")
        with pytest.raises(openai.AuthenticationError):
            await client(process, key="nope").chat.completions.create(
                model="text_processing", messages=[{"role": "user", "content": "x"}]
            )
        stream = await client(process).chat.completions.create(
            model="text_processing", messages=[{"role": "user", "content": "stream"}], stream=True
        )
        async for _ in stream:
            pass
    finally:
        process.stop()
        upstream.reset()


@pytest.mark.browser
async def test_the_dashboard_of_a_running_proxy_shows_its_calls(
    chromium: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'dash.db'}"
    port = free_port()
    process = ProxyProcess(
        serve_argv("--mock", "--port", str(port)), proxy_env(db_url, tmp_path), port, tmp_path / "log"
    )
    process.start()
    try:
        fallback_id, _ = await ask(
            process, "course_structuring/quality", "outline [mock-fail claude-sonnet=500]"
        )
        plain_id, _ = await ask(process, "text_processing")
        await rows_of(db_url, plain_id, 1)
        await rows_of(db_url, fallback_id, 3)
        url = f"{process.base_url}/dashboard#key={KEY}&request={fallback_id}"
        dom = await asyncio.to_thread(dump_dom, chromium, tmp_path_factory.mktemp("chromium"), url)
    finally:
        process.stop()
    listed = {
        row.attrs["data-request-id"]
        for row in dom.by_id("requests-table").select("tr")  # the requests view opens first
        if "data-request-id" in row.attrs
    }
    assert {fallback_id, plain_id} <= listed
    assert int(dom.by_id("chart-cost-by-action").attrs["data-bars"]) >= 1  # this hour's stacked bar
    attempts = dom.by_id("request-detail").select("li")
    assert [(li.attrs["data-attempt"], li.attrs["data-model"]) for li in attempts] == [
        ("1", "claude-sonnet"),
        ("2", "claude-sonnet"),
        ("3", "gemini-2.5-pro"),
    ]
