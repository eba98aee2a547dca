"""The circuit breaker on real requests (issue 14), through the facade and the real proxy.

After `failures` consecutive transient failures of a model its circuit opens: each attempt on it
is then a row (`success` false, `error_class` CircuitOpen, no status, latency 0) and no upstream
request, and the chain moves on at once. After `cooldown_s` one trial goes through; its outcome
closes or re-opens the circuit. Time is an injected clock in the facade tests; the proxy test
waits a short cooldown out. The scripted upstream (tests/test_routing_stage2.py) records every
request it gets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from course_llm import AllModelsFailedError
from course_llm.control.breaker import CircuitBreaker
from course_llm.control.sections import CircuitBreakerConfig
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import parse_registry
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_metrics import sample, scraped
from tests.test_proxy_e2e import proxy_env, rows_of
from tests.test_routing_stage2 import ACTION, Rows, ScriptedUpstream, _ask, stage2_registry

OPEN = "CircuitOpen"
#: The proxy test's cooldown: long enough that its checks run while the circuit is open.
COOLDOWN_S = 3.0
FAILED = (500, None, {})
OK = (200, None, {})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as scripted:
        yield scripted


@pytest.fixture
def up(upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch) -> ScriptedUpstream:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "fake-key")
    upstream.reset()
    return upstream


def with_breaker(data: dict[str, Any], failures: int = 2, cooldown_s: float = 30) -> dict[str, Any]:
    data["circuit_breaker"] = {"failures": failures, "cooldown_s": cooldown_s}
    return data


def chain_of(rows: Rows, request_id: str) -> list[tuple[Any, ...]]:
    mine = sorted((r for r in rows.records if r.request_id == request_id), key=lambda r: r.attempt)
    return [(r.attempt, r.model_id, r.status_code, r.error_class, r.success) for r in mine]


def facade(up: ScriptedUpstream, rows: Rows, clock: Clock, **section: Any) -> ModelRouter:
    router = ModelRouter(parse_registry(with_breaker(stage2_registry(up.base_url), **section)), writer=rows)  # type: ignore[arg-type]
    assert router.breaker is not None
    router.breaker = CircuitBreaker(router.breaker.config, now=clock)
    return router


async def test_an_open_circuit_skips_the_model_as_a_row_without_an_upstream_call(
    up: ScriptedUpstream,
) -> None:
    up.script("m-first", FAILED)
    rows, clock = Rows(), Clock()
    async with facade(up, rows, clock) as router:
        opening = await router.complete(ACTION, "x")  # two 500s: the circuit opens
        up.reset()
        skipped = await router.complete(ACTION, "x")
    assert chain_of(rows, opening.request_id) == [
        (1, "first", 500, "InternalServerError", False),
        (2, "first", 500, "InternalServerError", False),
        (3, "second", None, None, True),
    ]
    assert up.models() == ["m-second"]  # nothing sent to the open model
    assert chain_of(rows, skipped.request_id) == [
        (1, "first", None, OPEN, False),
        (2, "second", None, None, True),
    ]
    skip = next(r for r in rows.records if r.error_class == OPEN)
    assert skip.latency_ms == 0 and skip.tokens_in is None and skip.cost_usd is None
    assert router.breaker is not None and [c.model_id for c in router.breaker.open_circuits()] == ["first"]


async def test_fewer_failures_than_the_threshold_leave_the_circuit_closed(up: ScriptedUpstream) -> None:
    up.script("m-first", FAILED)
    rows, clock = Rows(), Clock()
    async with facade(up, rows, clock, failures=3) as router:
        await router.complete(ACTION, "x")  # two failures of three
        up.reset()
        up.script("m-first", OK)
        response = await router.complete(ACTION, "x")
    assert (response.model_id, up.models()) == ("first", ["m-first"])


async def test_after_the_cooldown_one_trial_closes_the_circuit(up: ScriptedUpstream) -> None:
    up.script("m-first", FAILED)
    rows, clock = Rows(), Clock()
    async with facade(up, rows, clock, cooldown_s=30) as router:
        await router.complete(ACTION, "x")
        clock.t += 29
        still_open = await router.complete(ACTION, "x")
        clock.t += 2
        up.reset()
        up.script("m-first", OK)
        trial = await router.complete(ACTION, "x")
        closed = await router.complete(ACTION, "x")
    assert chain_of(rows, still_open.request_id)[0] == (1, "first", None, OPEN, False)
    assert (trial.model_id, closed.model_id) == ("first", "first")
    assert up.models() == ["m-first", "m-first"]
    assert router.breaker is not None and router.breaker.open_circuits() == []


async def test_a_failed_trial_opens_the_circuit_again(up: ScriptedUpstream) -> None:
    up.script("m-first", FAILED)
    rows, clock = Rows(), Clock()
    async with facade(up, rows, clock, cooldown_s=30) as router:
        await router.complete(ACTION, "x")
        clock.t += 31
        up.reset()
        up.script("m-first", FAILED)
        trial = await router.complete(ACTION, "x")
        up.reset()
        after = await router.complete(ACTION, "x")
    # The trial is one attempt: its failure re-opens the circuit, the retry is skipped.
    assert chain_of(rows, trial.request_id) == [
        (1, "first", 500, "InternalServerError", False),
        (2, "first", None, OPEN, False),
        (3, "second", None, None, True),
    ]
    assert up.models() == ["m-second"]
    assert chain_of(rows, after.request_id)[0] == (1, "first", None, OPEN, False)


async def test_every_circuit_open_fails_fast_with_every_skip_in_the_error(up: ScriptedUpstream) -> None:
    up.script("m-first", FAILED)
    up.script("m-second", FAILED)
    rows, clock = Rows(), Clock()
    async with facade(up, rows, clock) as router:
        with pytest.raises(AllModelsFailedError):
            await router.complete(ACTION, "x")
        up.reset()
        started = time.monotonic()
        with pytest.raises(AllModelsFailedError) as caught:
            await router.complete(ACTION, "x")
        elapsed = time.monotonic() - started
    assert up.models() == []
    assert [(a.model_id, a.status_code, a.error_class) for a in caught.value.attempts] == [
        ("first", None, OPEN),
        ("second", None, OPEN),
    ]
    assert elapsed < 2  # behaviour check, not a benchmark: a skip is not retried or waited for


async def test_permanent_errors_do_not_open_the_circuit(up: ScriptedUpstream) -> None:
    up.script("m-first", (400, None, {}))
    rows, clock = Rows(), Clock()
    async with facade(up, rows, clock, failures=1) as router:
        for _ in range(3):
            await router.complete(ACTION, "x")
    assert up.models() == ["m-first", "m-second"] * 3
    assert router.breaker is not None and router.breaker.open_circuits() == []


def test_without_a_section_there_is_no_breaker(up: ScriptedUpstream) -> None:
    router = ModelRouter(parse_registry(stage2_registry(up.base_url)), writer=Rows())  # type: ignore[arg-type]
    try:
        assert router.breaker is None
    finally:
        asyncio.run(router.aclose())


# -- the real proxy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, str]]:
    tmp = tmp_path_factory.mktemp("breaker")
    registry = tmp / "models.yaml"
    data = with_breaker(stage2_registry(upstream.base_url), failures=2, cooldown_s=COOLDOWN_S)
    registry.write_text(yaml.safe_dump(data))
    db_url = f"sqlite+aiosqlite:///{tmp / 'calls.db'}"
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    process = ProxyProcess(argv, proxy_env(db_url, tmp), port, tmp / "proxy.log").start()
    yield process, db_url
    process.stop()


@pytest.mark.e2e
async def test_serve_skips_an_open_circuit_then_lets_one_trial_through(
    served: tuple[ProxyProcess, str], up: ScriptedUpstream
) -> None:
    process, db_url = served
    up.script("m-first", FAILED)
    await _ask(process, ACTION)  # two 500s: open
    up.reset()
    request_id, answer = await _ask(process, ACTION)
    assert (answer, up.models()) == ("answer from m-second", ["m-second"])
    rows = await rows_of(db_url, request_id, 2)
    assert [(r.attempt, r.model_id, r.status_code, r.error_class, r.success, r.latency_ms) for r in rows] == [
        (1, "first", None, OPEN, False, 0),
        (2, "second", None, None, True, rows[1].latency_ms),
    ]
    circuits = await _get(process, "/usage/circuits")
    # Open, or half-open already on a slow machine: either way not closed, one attempt skipped.
    assert [(c["model_id"], c["skipped"]) for c in circuits["circuits"]] == [("first", 1)]
    metrics = await _metrics(process)
    states = [
        sample(metrics, "course_llm_circuit_open", model_id="first", state=s) for s in ("open", "half_open")
    ]
    assert sorted(states, key=str) == [1.0, None]
    assert sample(metrics, "course_llm_circuit_skips_total") == 1.0

    await asyncio.sleep(COOLDOWN_S + 0.1)  # the cooldown is over: one trial, and it answers
    up.reset()
    up.script("m-first", OK)
    _, answer = await _ask(process, ACTION)
    assert (answer, up.models()) == ("answer from m-first", ["m-first"])
    metrics = await _metrics(process)
    assert [name for name, _ in scraped(metrics) if name == "course_llm_circuit_open"] == []
    assert sample(metrics, "course_llm_circuit_opened_total") == 1.0


async def _get(process: ProxyProcess, path: str) -> Any:
    import httpx

    from tests.test_proxy_e2e import KEY

    async with httpx.AsyncClient(base_url=process.base_url) as http:
        response = await http.get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


async def _metrics(process: ProxyProcess) -> str:
    import httpx

    from tests.test_proxy_e2e import KEY

    async with httpx.AsyncClient(base_url=process.base_url) as http:
        response = await http.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    return response.text


def test_a_cache_hit_is_no_news_about_the_model() -> None:
    from course_llm.control.controls import Controls
    from course_llm.control.sections import CircuitBreakerConfig
    from course_llm.recording.records import CallRecord

    controls = Controls({}, CircuitBreakerConfig(failures=1, cooldown_s=30), lambda action, strategy: True)
    failed = CallRecord(
        "r1", 1, ACTION, "default", "default", "openai", "first", False, "sdk", status_code=500
    )
    controls.observe(failed)
    assert controls.breaker is not None and controls.breaker.state("first") == "open"
    hit = CallRecord("r2", 1, ACTION, "default", "default", "openai", "first", True, "sdk", cache_hit=True)
    controls.observe(hit)
    assert controls.breaker.state("first") == "open"  # a hit sent nothing to the model


@pytest.mark.e2e
async def test_a_stream_skipped_by_an_open_circuit_is_one_row(tmp_path: Any) -> None:
    from tests.fake_upstream import FakeUpstream
    from tests.test_proxy_e2e import client, e2e_registry

    with FakeUpstream() as fake:
        data = yaml.safe_load(e2e_registry(fake, tmp_path / "base.yaml").read_text())
        data["circuit_breaker"] = {"failures": 2, "cooldown_s": 600}
        registry = tmp_path / "models.yaml"
        registry.write_text(yaml.safe_dump(data))
        db_url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
        port = free_port()
        argv = serve_argv("--registry", str(registry), "--port", str(port))
        process = ProxyProcess(argv, proxy_env(db_url, tmp_path), port, tmp_path / "proxy.log").start()
        try:
            fake.set_behaviour("deepseek-chat", statuses=[500])
            await _ask(process, ACTION)  # deepseek-chat fails twice: its circuit opens
            raw = await client(process).chat.completions.with_raw_response.create(
                model=ACTION, messages=[{"role": "user", "content": "stream it"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
            rows = await rows_of(db_url, raw.headers["x-course-llm-request-id"], 2)
            sent = len(fake.requests("deepseek-chat"))
        finally:
            process.stop()
    assert text
    assert [(r.attempt, r.model_id, r.status_code, r.error_class, r.success, r.latency_ms) for r in rows] == [
        (1, "deepseek-chat", None, OPEN, False, 0),
        (2, "gemini-2.5-flash", None, None, True, rows[1].latency_ms),
    ]
    assert sent == 2  # the two failures; the stream sent it nothing


def test_a_cache_hit_holding_the_trial_hands_it_on() -> None:
    """LiteLLM asks the gate before it looks in its cache: a hit may take the half-open trial."""
    from course_llm.recording.records import CallRecord

    clock = Clock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failures=1, cooldown_s=30), now=clock)
    breaker.observe(
        CallRecord("r1", 1, ACTION, "default", "default", "openai", "first", False, "sdk", status_code=503)
    )
    clock.t += 31
    assert breaker.allow("first") and not breaker.allow("first")  # one trial, taken
    breaker.observe(
        CallRecord("r2", 1, ACTION, "default", "default", "openai", "first", True, "sdk", cache_hit=True)
    )
    assert breaker.allow("first")  # the hit told nothing: the next request is the trial


@pytest.mark.parametrize(
    ("status", "counts"), [(429, True), (503, True), (None, True), (422, False), (404, False)]
)
def test_only_429_5xx_and_no_status_count_as_the_models_failure(status: int | None, counts: bool) -> None:
    from course_llm.recording.records import CallRecord

    breaker = CircuitBreaker(CircuitBreakerConfig(failures=1, cooldown_s=30), now=Clock())
    breaker.observe(
        CallRecord("r", 1, ACTION, "default", "default", "openai", "first", False, "sdk", status_code=status)
    )
    assert (breaker.state("first") == "open") is counts
