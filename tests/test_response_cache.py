"""LiteLLM's response cache, configured in the registry (`cache: {type, ttl_s}`; issue 13).

A repeated request is answered from the cache: its row has `cache_hit` true, `cost_usd` 0, and
the upstream sees no request for it. Shown through the facade (local and Redis caches) and the real
proxy (`course-llm serve`, the official openai client; plain and streamed), against the fake
upstream; `status=cached` picks the hits in the API and the CLI. Writes into LiteLLM's cache are
made by its logging worker after the answer, so each test flushes that worker before repeating.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from typer.testing import CliRunner

from course_llm import CourseLLMError
from course_llm._litellm import flush_logging_worker, load_litellm
from course_llm.cli import app
from course_llm.recording.records import CallRecord
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import parse_registry
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_proxy_e2e import KEY, REQUEST_ID, client, proxy_env, rows_of

ROOT = Path(__file__).parent.parent
REDIS_URL = os.environ.get("COURSE_LLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def cached_registry(up: FakeUpstream, cache: dict[str, Any]) -> dict[str, Any]:
    """The shipped registry, every model on the fake upstream, with a `cache:` section."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    bases = {"gemini": up.gemini_base_url, "anthropic": up.anthropic_base_url}
    for model in data["models"].values():
        model["api_base"] = bases.get(model["provider"], up.base_url)
        model["api_key_env"] = "FAKE_UPSTREAM_KEY"
    data["cache"] = cache
    return data


def redis_or_skip() -> redis.Redis:
    server = redis.Redis.from_url(REDIS_URL)
    try:
        server.ping()
    except redis.exceptions.ConnectionError as exc:
        server.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is unreachable with CI set: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return server


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "fake-key")
    upstream.reset()
    return upstream


@pytest.fixture(autouse=True)
def _no_cache_left_behind() -> Iterator[None]:
    """LiteLLM's cache is process-wide: take it out again, callbacks included."""
    litellm = load_litellm()
    yield
    litellm.cache = None
    for name in ("input_callback", "success_callback", "_async_success_callback"):
        callbacks = getattr(litellm, name)
        callbacks[:] = [c for c in callbacks if c != "cache"]


class Rows:
    """Stands in for the RecordWriter: keeps every row the router hands it."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def start(self) -> None: ...

    def submit(self, record: CallRecord) -> None:
        self.records.append(record)

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...

    def of(self, request_id: str) -> CallRecord:
        [record] = [r for r in self.records if r.request_id == request_id]
        return record


async def ask_twice(router: ModelRouter, prompt: str, **kwargs: Any) -> tuple[Any, Any]:
    first = await router.complete("text_processing", prompt, **kwargs)
    await flush_logging_worker()  # LiteLLM writes the answer into its cache from its logging worker
    second = await router.complete("text_processing", prompt, **kwargs)
    await flush_logging_worker()
    return first, second


# -- the facade ------------------------------------------------------------------------------------


async def test_a_repeated_prompt_is_a_cache_hit_that_costs_nothing_and_sends_nothing(
    up: FakeUpstream,
) -> None:
    rows = Rows()
    registry = parse_registry(cached_registry(up, {"type": "local", "ttl_s": 600}))
    async with ModelRouter(registry, writer=rows) as router:  # type: ignore[arg-type]
        first, second = await ask_twice(router, "Summarise cell biology.")
    assert len(up.requests()) == 1
    assert second.content == first.content and second.model_id == first.model_id
    assert first.cost_usd is not None and first.cost_usd > 0
    assert second.cost_usd == 0
    miss, hit = rows.of(first.request_id), rows.of(second.request_id)
    assert (miss.cache_hit, hit.cache_hit) == (False, True)
    assert miss.cost_usd == first.cost_usd and hit.cost_usd == 0
    assert hit.success and hit.model_id == miss.model_id and hit.tokens_out == miss.tokens_out


async def test_another_prompt_or_strategy_or_parameter_is_not_a_hit(up: FakeUpstream) -> None:
    rows = Rows()
    registry = parse_registry(cached_registry(up, {"type": "local"}))
    async with ModelRouter(registry, writer=rows) as router:  # type: ignore[arg-type]
        asked = [
            await router.complete("text_processing", "one"),
            await router.complete("text_processing", "two"),
            await router.complete("text_processing", "one", strategy="budget"),
            await router.complete("text_processing", "one", temperature=0.5),
        ]
        await flush_logging_worker()
    assert len(up.requests()) == 4
    assert [rows.of(r.request_id).cache_hit for r in asked] == [False] * 4


async def test_a_hit_expires_after_the_registry_ttl(up: FakeUpstream) -> None:
    registry = parse_registry(cached_registry(up, {"type": "local", "ttl_s": 0.5}))
    async with ModelRouter(registry, writer=Rows()) as router:  # type: ignore[arg-type]
        await ask_twice(router, "expiring")
        await asyncio.sleep(0.8)
        late = await router.complete("text_processing", "expiring")
    assert len(up.requests()) == 2
    assert late.cost_usd is not None and late.cost_usd > 0


async def test_without_a_cache_section_every_request_goes_upstream(up: FakeUpstream) -> None:
    data = cached_registry(up, {})
    del data["cache"]
    async with ModelRouter(parse_registry(data), writer=Rows()) as router:  # type: ignore[arg-type]
        await ask_twice(router, "uncached")
    assert len(up.requests()) == 2


async def test_the_applications_own_litellm_calls_do_not_use_course_llms_cache(up: FakeUpstream) -> None:
    litellm = load_litellm()
    registry = parse_registry(cached_registry(up, {"type": "local"}))
    async with ModelRouter(registry, writer=Rows()):  # type: ignore[arg-type]
        for _ in range(2):
            await litellm.acompletion(
                model="openai/plain-app-call",
                api_base=up.base_url,
                api_key="fake-key",
                messages=[{"role": "user", "content": "the app's own call"}],
            )
            await flush_logging_worker()
    assert up.hits("plain-app-call") == 2


async def test_a_redis_cache_keeps_the_answer_in_redis(up: FakeUpstream) -> None:
    server = redis_or_skip()
    server.flushdb()
    try:
        rows = Rows()
        registry = parse_registry(cached_registry(up, {"type": "redis", "ttl_s": 60}))
        async with ModelRouter(registry, writer=rows, redis_url=REDIS_URL) as router:  # type: ignore[arg-type]
            first, second = await ask_twice(router, f"redis {uuid.uuid4()}")
            stored = server.keys("*")
            ttl = server.ttl(stored[0]) if stored else None
        assert len(up.requests()) == 1
        assert rows.of(second.request_id).cache_hit and second.cost_usd == 0
        assert len(stored) == 1 and ttl is not None and 0 < ttl <= 60
        assert first.content.encode() in server.get(stored[0])  # type: ignore[operator]
    finally:
        server.flushdb()
        server.close()


def test_a_redis_cache_without_a_redis_url_is_a_clear_error(up: FakeUpstream) -> None:
    registry = parse_registry(cached_registry(up, {"type": "redis"}))
    with pytest.raises(CourseLLMError, match="COURSE_LLM_REDIS_URL"):
        ModelRouter(registry, writer=Rows())  # type: ignore[arg-type]


# -- the real proxy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, str]]:
    tmp = tmp_path_factory.mktemp("cache")
    registry = tmp / "models.yaml"
    registry.write_text(yaml.safe_dump(cached_registry(upstream, {"type": "local", "ttl_s": 600})))
    db_url = f"sqlite+aiosqlite:///{tmp / 'calls.db'}"
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    process = ProxyProcess(argv, proxy_env(db_url, tmp), port, tmp / "proxy.log").start()
    yield process, db_url
    process.stop()


async def _ask(process: ProxyProcess, content: str, **kwargs: Any) -> tuple[str, str]:
    raw = await client(process).chat.completions.with_raw_response.create(
        model="text_processing", messages=[{"role": "user", "content": content}], **kwargs
    )
    if kwargs.get("stream"):
        chunks = [chunk async for chunk in raw.parse()]
        return raw.headers[REQUEST_ID], "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return raw.headers[REQUEST_ID], raw.parse().choices[0].message.content or ""


async def _ask_twice(process: ProxyProcess, db_url: str, content: str, **kwargs: Any) -> list[Any]:
    first_id, first = await _ask(process, content, **kwargs)
    [miss] = await rows_of(db_url, first_id, 1)  # written: LiteLLM has filled its cache by now
    second_id, second = await _ask(process, content, **kwargs)
    [hit] = await rows_of(db_url, second_id, 1)
    assert second == first
    return [miss, hit]


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_serve_answers_a_repeated_request_from_the_cache(
    served: tuple[ProxyProcess, str], up: FakeUpstream, stream: bool
) -> None:
    process, db_url = served
    kwargs = {"stream": True} if stream else {}
    miss, hit = await _ask_twice(process, db_url, f"proxy {stream} {uuid.uuid4()}", **kwargs)
    assert len(up.requests()) == 1
    assert (miss.cache_hit, hit.cache_hit) == (False, True)
    assert miss.cost_usd is not None and miss.cost_usd > 0
    assert hit.cost_usd == 0 and hit.success and hit.stream is stream
    assert (hit.model_id, hit.source) == (miss.model_id, "proxy")


@pytest.mark.e2e
async def test_status_cached_picks_the_hits_in_the_api_and_the_cli(
    served: tuple[ProxyProcess, str], up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    process, db_url = served
    miss, hit = await _ask_twice(process, db_url, f"filtered {uuid.uuid4()}")
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=process.base_url, headers=headers) as http:
        calls = (await http.get("/usage/calls", params={"status": "cached", "page_size": 1000})).json()
        summary = (await http.get("/usage/summary", params={"status": "cached"})).json()
        requests = (await http.get("/usage/requests", params={"status": "cached"})).json()
        refused = await http.get("/usage/calls", params={"status": "hit"})
    ids = {row["request_id"] for row in calls["data"]}
    assert hit.request_id in ids and miss.request_id not in ids
    assert all(row["cache_hit"] for row in calls["data"])
    assert summary["totals"]["calls"] == len(calls["data"]) and summary["totals"]["cost_usd"] == 0
    assert hit.request_id in {r["request_id"] for r in requests["data"]}
    assert miss.request_id not in {r["request_id"] for r in requests["data"]}
    assert refused.status_code == 400 and "cached" in refused.json()["error"]

    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", db_url)
    # The CLI runs its own event loop (asyncio.run): give it a thread of its own.
    result = await asyncio.to_thread(CliRunner().invoke, app, ["calls", "--status", "cached", "--json"])
    assert result.exit_code == 0, result.output
    assert hit.request_id in result.output and miss.request_id not in result.output


@pytest.mark.parametrize(
    ("cache", "params"),
    [
        ({"type": "local", "ttl_s": 30}, {"type": "local", "ttl": 30}),
        ({"type": "redis"}, {"type": "redis", "ttl": 600, "url": "os.environ/COURSE_LLM_REDIS_URL"}),
    ],
)
def test_the_proxy_config_turns_on_litellms_cache_and_the_routers_use_of_it(
    upstream: FakeUpstream, cache: dict[str, Any], params: dict[str, Any]
) -> None:
    from course_llm.routing.compiler import compile_proxy_config, compile_router_config

    registry = parse_registry(cached_registry(upstream, cache))
    config = compile_proxy_config(registry)
    assert config["litellm_settings"]["cache"] is True
    assert config["litellm_settings"]["cache_params"] == params  # a Redis URL by reference only
    assert config["router_settings"]["cache_responses"] is True
    # The facade's Router asks per request instead (`cache_request_params`).
    assert "cache_responses" not in compile_router_config(registry)["router_settings"]
    data = cached_registry(upstream, cache)
    del data["cache"]
    plain = compile_proxy_config(parse_registry(data))
    assert "cache" not in plain["litellm_settings"] and "cache_responses" not in plain["router_settings"]


@pytest.mark.e2e
async def test_serve_with_a_redis_cache_keeps_answers_in_redis(
    upstream: FakeUpstream, up: FakeUpstream, tmp_path: Path
) -> None:
    server = redis_or_skip()
    server.flushdb()
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump(cached_registry(upstream, {"type": "redis", "ttl_s": 60})))
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    port = free_port()
    env = proxy_env(db_url, tmp_path) | {"COURSE_LLM_REDIS_URL": REDIS_URL}
    process = ProxyProcess(
        serve_argv("--registry", str(registry), "--port", str(port)), env, port, tmp_path / "log"
    )
    process.start()
    try:
        up.reset()  # what the proxy asked the upstream while starting is not this test's
        before = set(server.keys("*"))
        miss, hit = await _ask_twice(process, db_url, f"redis proxy {uuid.uuid4()}")
        # LiteLLM's proxy also keeps its usage counters (`{api_key:…}:tokens`) in the cache's Redis.
        answers = [key for key in set(server.keys("*")) - before if not key.startswith(b"{")]
        stored = server.get(answers[0]) if answers else None
    finally:
        process.stop()
        server.flushdb()
        server.close()
    assert [r["path"] for r in up.requests()] == ["/v1/chat/completions"]
    assert (miss.cache_hit, hit.cache_hit, hit.cost_usd) == (False, True, 0)
    assert len(answers) == 1 and stored is not None and b"chat.completion" in stored


async def test_each_tenant_has_a_cache_of_its_own(up: FakeUpstream) -> None:
    """LiteLLM's key has no tenant in it: course_llm gives each tenant a namespace."""
    from course_llm import call_scope

    rows = Rows()
    registry = parse_registry(cached_registry(up, {"type": "local"}))
    async with ModelRouter(registry, writer=rows) as router:  # type: ignore[arg-type]
        with call_scope(tenant_id="acme"):
            first, again = await ask_twice(router, "the same question")
        with call_scope(tenant_id="globex"):
            other = await router.complete("text_processing", "the same question")
    assert len(up.requests()) == 2
    assert [rows.of(r.request_id).cache_hit for r in (first, again, other)] == [False, True, False]


@pytest.mark.e2e
async def test_serve_keeps_tenants_caches_apart_whatever_namespace_a_client_names(
    served: tuple[ProxyProcess, str], up: FakeUpstream
) -> None:
    from course_llm._litellm import tenant_namespace

    process, db_url = served
    content = f"tenant question {uuid.uuid4()}"
    miss, hit = await _ask_twice(process, db_url, content, metadata={"tenant_id": "acme"})
    forged = {"redis_namespace": tenant_namespace("acme") or ""}  # no tenant: the shared namespace
    other_id, _ = await _ask(process, content, metadata=forged)
    [other] = await rows_of(db_url, other_id, 1)
    assert (miss.cache_hit, hit.cache_hit, other.cache_hit) == (False, True, False)
    assert len(up.requests()) == 2 and other.tenant_id is None
