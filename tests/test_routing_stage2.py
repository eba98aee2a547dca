"""Context-window and content-policy 400s walk on down the chain; Retry-After waits are bounded.

Issue 13 (DESIGN "Routing, second stage — contract"). Measured on main before the change:
a context-window 400 on a default chain's first model ended the request ("all models failed",
the second model never tried), and on a quality chain it skipped the rest of that chain for the
default one (LiteLLM 1.106.2 sends those errors past its order fallbacks: the compiler's
`_rest_of_chain`). A 429 with `retry-after: 20` on a one-model chain reached the next chain after
41.9 s (LiteLLM waits before the retry and again after it: course_llm/_litellm/retries.py
`_install_retry_wait_bound`).

Shown through the facade and through the real proxy (`course-llm serve`, the official openai
client), against `ScriptedUpstream` below: an OpenAI-compatible server whose answers carry any
status, error body and headers (tests/fake_upstream.py sends no response headers).
"""

from __future__ import annotations

import functools
import inspect
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from course_llm import AllModelsFailedError
from course_llm._litellm import MAX_RETRY_WAIT_ATTRIBUTE, load_litellm
from course_llm.recording.records import CallRecord
from course_llm.routing.compiler import compile_router_config
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry, parse_registry
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_proxy_e2e import REQUEST_ID, chain, client, proxy_env, rows_of

ACTION = "text_processing"
#: LiteLLM maps an OpenAI-style 400 with these messages to ContextWindowExceededError and
#: ContentPolicyViolationError (litellm_core_utils/exception_mapping_utils.py, 1.106.2).
CONTEXT_400 = {
    "message": "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}
POLICY_400 = {
    "message": "Your request was rejected as a result of our safety system (content_policy_violation).",
    "type": "invalid_request_error",
    "param": None,
    "code": "content_policy_violation",
}


# -- an upstream that answers any status, body and headers -------------------------------------


class ScriptedUpstream:
    """OpenAI chat completions on 127.0.0.1; per model a script of (status, error, headers)."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[tuple[int, dict[str, Any] | None, dict[str, str]]]] = {}
        self.hits: list[tuple[str, float]] = []
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def script(self, model: str, *answers: tuple[int, dict[str, Any] | None, dict[str, str]]) -> None:
        """`model` answers these in order, the last one repeating; (200, None, {}) is a success."""
        self.scripts[model] = list(answers)

    def reset(self) -> None:
        self.scripts.clear()
        self.hits.clear()

    def times(self, model: str) -> list[float]:
        return [at for name, at in self.hits if name == model]

    def models(self) -> list[str]:
        return [name for name, _ in self.hits]

    async def _chat(self, request: Request) -> JSONResponse:
        model = (await request.json())["model"]
        self.hits.append((model, time.time()))
        script = self.scripts.get(model) or [(200, None, {})]
        status, error, headers = script.pop(0) if len(script) > 1 else script[0]
        if status != 200:
            body = {"error": error or {"message": f"scripted {status}", "type": "server_error"}}
            return JSONResponse(body, status_code=status, headers=headers)
        message = {"role": "assistant", "content": f"answer from {model}"}
        return JSONResponse(
            {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
            }
        )


def ok() -> tuple[int, None, dict[str, str]]:
    return (200, None, {})


def rate_limited(retry_after_s: int) -> tuple[int, None, dict[str, str]]:
    return (429, None, {"retry-after": str(retry_after_s)})


def stage2_registry(base_url: str) -> dict[str, Any]:
    """Three OpenAI-compatible models on the scripted upstream; chains of text_processing:
    default [m-ctx, m-ok], quality [m-q, m-ctx, m-ok], solo [m-solo]."""

    def model(name: str) -> dict[str, Any]:
        return {
            "provider": "openai",
            "model": name,
            "api_base": base_url,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "capabilities": ["structured_output"],
            "max_context": 8192,
            "cost_per_1k": {"input": 0.001, "output": 0.002},
        }

    names = {"first": "m-first", "second": "m-second", "third": "m-third", "solo": "m-solo"}
    return {
        "models": {key: model(name) for key, name in names.items()},
        "actions": {ACTION: {"description": "text", "requires": ["structured_output"]}},
        "routing": {
            ACTION: {
                "default": ["first", "second"],
                "quality": ["third", "first", "second"],
                "solo": ["solo"],
            }
        },
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch) -> ScriptedUpstream:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "fake-key")
    upstream.reset()
    return upstream


# -- the facade ----------------------------------------------------------------------------------


class Rows:
    """Stands in for the RecordWriter: keeps every row the router hands it."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def start(self) -> None: ...

    def submit(self, record: CallRecord) -> None:
        self.records.append(record)

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...

    def of(self, request_id: str) -> list[tuple[Any, ...]]:
        mine = sorted((r for r in self.records if r.request_id == request_id), key=lambda r: r.attempt)
        return [(r.model_id, r.served_strategy, r.status_code, r.error_class, r.success) for r in mine]


def facade(up: ScriptedUpstream, rows: Rows, **kwargs: Any) -> ModelRouter:
    registry: Registry = parse_registry(stage2_registry(up.base_url))
    return ModelRouter(registry, writer=rows, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "error_class"),
    [(CONTEXT_400, "ContextWindowExceededError"), (POLICY_400, "ContentPolicyViolationError")],
    ids=["context-window", "content-policy"],
)
async def test_a_context_or_policy_400_moves_on_to_the_next_model_of_the_default_chain(
    up: ScriptedUpstream, error: dict[str, Any], error_class: str
) -> None:
    up.script("m-first", (400, error, {}))
    rows = Rows()
    async with facade(up, rows) as router:
        response = await router.complete(ACTION, "x")
        await router.flush()
    assert (response.model_id, response.served_strategy) == ("second", "default")
    assert up.models() == ["m-first", "m-second"]  # not retried, not skipped
    assert rows.of(response.request_id) == [
        ("first", "default", 400, error_class, False),
        ("second", "default", None, None, True),
    ]


@pytest.mark.parametrize("error", [CONTEXT_400, POLICY_400], ids=["context-window", "content-policy"])
async def test_a_quality_chain_walks_its_own_models_before_the_default_chain(
    up: ScriptedUpstream, error: dict[str, Any]
) -> None:
    up.script("m-third", (400, error, {}))
    up.script("m-first", (500, None, {}))  # transient: tried twice, then the chain's next model
    rows = Rows()
    async with facade(up, rows) as router:
        response = await router.complete(ACTION, "x", strategy="quality")
        await router.flush()
    assert (response.model_id, response.served_strategy) == ("second", "quality")
    assert up.models() == ["m-third", "m-first", "m-first", "m-second"]
    assert [(m, s, status) for m, s, status, _, _ in rows.of(response.request_id)] == [
        ("third", "quality", 400),
        ("first", "quality", 500),
        ("first", "quality", 500),
        ("second", "quality", None),
    ]


async def test_a_context_400_at_every_model_fails_with_each_attempt_recorded(up: ScriptedUpstream) -> None:
    up.script("m-first", (400, CONTEXT_400, {}))
    up.script("m-second", (400, CONTEXT_400, {}))
    rows = Rows()
    async with facade(up, rows) as router:
        with pytest.raises(AllModelsFailedError) as caught:
            await router.complete(ACTION, "x")
    assert [(a.model_id, a.status_code, a.error_class) for a in caught.value.attempts] == [
        ("first", 400, "ContextWindowExceededError"),
        ("second", 400, "ContextWindowExceededError"),
    ]
    assert up.models() == ["m-first", "m-second"]


async def test_a_retry_after_beyond_the_bound_moves_on_at_once(up: ScriptedUpstream) -> None:
    up.script("m-solo", rate_limited(20))
    rows = Rows()
    async with facade(up, rows) as router:
        started = time.monotonic()
        response = await router.complete(ACTION, "x", strategy="solo")
        elapsed = time.monotonic() - started
        await router.flush()
    assert (response.model_id, response.served_strategy) == ("first", "default")
    assert up.models() == ["m-solo", "m-first"]  # no retry of the 429 model: it asked for 20 s
    assert rows.of(response.request_id)[0] == ("solo", "solo", 429, "RateLimitError", False)
    assert elapsed < 10  # LiteLLM alone waited 2 x 20 s (behaviour, not a performance target)


async def test_a_retry_after_within_the_bound_is_waited_once_not_twice(up: ScriptedUpstream) -> None:
    up.script("m-solo", rate_limited(2))
    sleeps = _record_sleeps()
    async with facade(up, Rows()) as router:
        response = await router.complete(ACTION, "x", strategy="solo")
        answered = time.time()
    sleeps.undo()
    assert response.model_id == "first"
    assert up.models() == ["m-solo", "m-solo", "m-first"]
    first, retry = up.times("m-solo")
    assert retry - first >= 2  # the upstream's Retry-After was honoured before the retry
    assert sleeps.waits == [2.0, 0.0]  # ... and no second wait after the retry failed
    assert answered - retry < 2


async def test_the_bound_comes_from_course_llm_max_retry_wait_s(
    up: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_LLM_MAX_RETRY_WAIT_S", "1")
    up.script("m-solo", rate_limited(2))
    async with facade(up, Rows()) as router:
        response = await router.complete(ACTION, "x", strategy="solo")
    assert (response.model_id, up.models()) == ("first", ["m-solo", "m-first"])


async def test_a_bound_of_zero_never_waits_and_retries_nothing_that_asks_for_a_wait(
    up: ScriptedUpstream,
) -> None:
    up.script("m-solo", rate_limited(1), ok())
    async with facade(up, Rows()) as router:
        setattr(router._router, MAX_RETRY_WAIT_ATTRIBUTE, 0)
        response = await router.complete(ACTION, "x", strategy="solo")
    assert (response.model_id, up.models()) == ("first", ["m-solo", "m-first"])


async def test_a_429_without_retry_after_is_retried_with_a_wait_within_the_bound(
    up: ScriptedUpstream,
) -> None:
    up.script("m-solo", (429, None, {}), ok())
    sleeps = _record_sleeps()
    async with facade(up, Rows()) as router:
        setattr(router._router, MAX_RETRY_WAIT_ATTRIBUTE, 0.2)
        response = await router.complete(ACTION, "x", strategy="solo")
    sleeps.undo()
    assert (response.model_id, up.models()) == ("solo", ["m-solo", "m-solo"])
    assert len(sleeps.waits) == 1 and 0 < sleeps.waits[0] <= 0.2  # LiteLLM's backoff, capped


class _Sleeps:
    def __init__(self, router_class: Any, patched: Any) -> None:
        self.waits: list[float] = []
        self._class, self._patched = router_class, patched

    def undo(self) -> None:
        self._class._time_to_sleep_before_retry = self._patched


def _record_sleeps() -> _Sleeps:
    """Record each wait LiteLLM's retry loop asks course_llm's bounded rule for."""
    router_class = load_litellm().Router
    patched = router_class._time_to_sleep_before_retry
    sleeps = _Sleeps(router_class, patched)

    @functools.wraps(patched)  # keeps course_llm's mark: load_litellm() does not wrap it again
    def recording(self: Any, *args: Any, **kwargs: Any) -> float:
        wait = float(patched(self, *args, **kwargs))
        sleeps.waits.append(wait)
        return wait

    router_class._time_to_sleep_before_retry = recording
    return sleeps


def test_the_retry_wait_workarounds_are_installed_once_over_litellms_own() -> None:
    litellm = load_litellm()
    first = litellm.Router._time_to_sleep_before_retry
    load_litellm()
    assert litellm.Router._time_to_sleep_before_retry is first
    original = first.__wrapped__
    # The arguments the wrapper reads; without them it is not installed and this fails.
    assert {"e", "remaining_retries"} <= set(inspect.signature(original).parameters)
    should_retry = litellm.Router.should_retry_this_error
    assert getattr(should_retry, "_course_llm_status_code_rule", False)


async def test_a_skipped_first_model_does_not_make_the_next_one_run_twice(up: ScriptedUpstream) -> None:
    """LiteLLM's pre-call check alone (litellm 1.106.2, `_pre_call_checks` before
    `get_order_filtered_deployments`) drops a model whose `max_input_tokens` is below the prompt
    with no hook and no row, so the next level runs as the request's first attempt, and after a
    transient failure LiteLLM's order fallback re-targets that level: [third (too small), first
    (500), second] called first 4 times, not 2. course_llm/_litellm/context.py records the skip
    and walks the rest of the chain as context-window fallbacks instead."""
    data = stage2_registry(up.base_url)
    data["models"]["third"]["max_context"] = 100
    config = compile_router_config(parse_registry(data))
    assert config["router_settings"]["enable_pre_call_checks"] is True
    router = load_litellm().Router(model_list=config["model_list"], **config["router_settings"])
    up.script("m-first", (500, None, {}))
    try:
        response = await router.acompletion(
            model=f"{ACTION}/quality", messages=[{"role": "user", "content": "word " * 500}]
        )
    finally:
        router.discard()
    assert response._hidden_params["model_id"] == f"{ACTION}/quality/second"
    assert up.models() == ["m-first"] * 2 + ["m-second"]


# -- the real proxy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, str]]:
    tmp = tmp_path_factory.mktemp("stage2")
    registry = tmp / "models.yaml"
    registry.write_text(yaml.safe_dump(stage2_registry(upstream.base_url)))
    db_url = f"sqlite+aiosqlite:///{tmp / 'calls.db'}"
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    process = ProxyProcess(argv, proxy_env(db_url, tmp), port, tmp / "proxy.log").start()
    yield process, db_url
    process.stop()


async def _ask(process: ProxyProcess, model: str, content: str = "x") -> tuple[str, str]:
    raw = await client(process).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}]
    )
    return raw.headers[REQUEST_ID], raw.parse().choices[0].message.content or ""


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("error", "error_class"),
    [(CONTEXT_400, "ContextWindowExceededError"), (POLICY_400, "ContentPolicyViolationError")],
    ids=["context-window", "content-policy"],
)
@pytest.mark.parametrize("model", [ACTION, f"{ACTION}/quality"])
async def test_serve_walks_on_after_a_context_or_policy_400(
    served: tuple[ProxyProcess, str],
    upstream: ScriptedUpstream,
    error: dict[str, Any],
    error_class: str,
    model: str,
) -> None:
    process, db_url = served
    upstream.reset()
    failing = "m-third" if model.endswith("quality") else "m-first"
    upstream.script(failing, (400, error, {}))
    request_id, answer = await _ask(process, model)
    expected_next = "m-first" if failing == "m-third" else "m-second"
    assert answer == f"answer from {expected_next}"
    assert upstream.models() == [failing, expected_next]
    rows = await rows_of(db_url, request_id, 2)
    strategy = "quality" if model.endswith("quality") else "default"
    assert chain(rows) == [
        (1, failing.removeprefix("m-"), strategy, 400, False),
        (2, expected_next.removeprefix("m-"), strategy, None, True),
    ]
    assert rows[0].error_class == error_class


@pytest.mark.e2e
async def test_serve_moves_on_from_a_long_retry_after_and_waits_a_short_one_once(
    served: tuple[ProxyProcess, str], upstream: ScriptedUpstream
) -> None:
    process, db_url = served
    upstream.reset()
    upstream.script("m-solo", rate_limited(20))
    started = time.monotonic()
    request_id, answer = await _ask(process, f"{ACTION}/solo")
    assert time.monotonic() - started < 10  # behaviour check: LiteLLM alone took 41.9 s
    assert (answer, upstream.models()) == ("answer from m-first", ["m-solo", "m-first"])
    rows = await rows_of(db_url, request_id, 2)
    assert [(r.model_id, r.status_code, r.success) for r in rows] == [
        ("solo", 429, False),
        ("first", None, True),
    ]

    upstream.reset()
    upstream.script("m-solo", rate_limited(2))
    _, answer = await _ask(process, f"{ACTION}/solo")
    answered = time.time()
    assert (answer, upstream.models()) == ("answer from m-first", ["m-solo", "m-solo", "m-first"])
    first, retry = upstream.times("m-solo")
    (fallback,) = upstream.times("m-first")
    assert retry - first >= 2  # waited for the Retry-After before the retry
    assert fallback - retry < 1.5 and answered - first < 4  # not again after it
