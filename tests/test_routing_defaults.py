"""The bare action is `<action>/default`, fallback strategy included; AllModelsFailedError's fields.

Issue 13: on the proxy, `model="<action>"` ignored COURSE_LLM_FALLBACK_STRATEGY, whether the
default chain ended in a 5xx or in a permanent error (`[429 model, 401 model]`): LiteLLM looks
fallbacks up by the name the client sent, and they are keyed by the `/default` name. The proxy's
pre-call hook now sends a bare action on as `<action>/default` (`default_group_of`). Shown
through the facade (respx), a LiteLLM Router built from the compiled config (the LiteLLM
behaviour behind it, pinned), and the real proxy processes (`course-llm serve`, plain
`litellm --config`) against the fake upstream with the official openai client.

Every test uses text_processing with a one-model fallback strategy of its own, `budget:
[gpt-4o-mini]`, so the fallback strategy's model is one no other chain of the action holds:
default is `[deepseek-chat, gemini-2.5-flash]`, quality `[claude-sonnet, gemini-2.5-flash]`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from course_llm import AllModelsFailedError
from course_llm._litellm import load_litellm
from course_llm.errors import FailedAttempt
from course_llm.proxy.hooks import default_group_of
from course_llm.routing.compiler import compile_router_config
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry, parse_registry
from tests.fake_upstream import FakeUpstream
from tests.providers import ProviderMock
from tests.proxy_process import ProxyProcess, compiled_config, free_port, litellm_argv, serve_argv
from tests.test_proxy_e2e import ask, chain, e2e_registry, proxy_env, rows_of

ACTION = "text_processing"
FALLBACK = "budget"
#: Default chains that fail as a whole, as (deepseek-chat, gemini-2.5-flash) statuses: transient
#: only, and ending in each permanent status after a transient or a permanent error.
FAILING_DEFAULTS = [(500, 503), (429, 401), (401, 403), (500, 404), (429, 400)]
#: What reaches the upstream for each: a transient status is tried twice (max_attempts 2).
TRANSIENT = {429, 500, 503}


def with_own_fallback(registry: Registry) -> Registry:
    data = registry.model_dump(mode="json")
    data["routing"][ACTION][FALLBACK] = ["gpt-4o-mini"]
    return parse_registry(data)


def expected_upstream_walk(statuses: tuple[int, int]) -> list[str]:
    first, second = statuses
    walk = ["deepseek-chat"] * (2 if first in TRANSIENT else 1)
    walk += ["gemini-2.5-flash"] * (2 if second in TRANSIENT else 1)
    return [*walk, "gpt-4o-mini"]


def fail_default_chain(providers: ProviderMock, statuses: tuple[int, int]) -> None:
    providers.always("deepseek-chat", statuses[0])
    providers.always("gemini-2.5-flash", statuses[1])


# -- the facade --------------------------------------------------------------------------------


@pytest.mark.parametrize("statuses", FAILING_DEFAULTS, ids=str)
@pytest.mark.parametrize("strategy", [None, "default"])
async def test_a_failed_default_chain_goes_on_to_the_fallback_strategy(
    registry: Registry, providers: ProviderMock, statuses: tuple[int, int], strategy: str | None
) -> None:
    fail_default_chain(providers, statuses)
    async with ModelRouter(with_own_fallback(registry), fallback_strategy=FALLBACK) as router:
        if strategy is None:
            response = await router.complete(ACTION, "x")
        else:
            response = await router.complete(ACTION, "x", strategy=strategy)
    assert (response.model_id, response.strategy, response.served_strategy) == (
        "gpt-4o-mini",
        "default",
        FALLBACK,
    )
    assert [model for model, _ in providers.requests] == expected_upstream_walk(statuses)


# -- why the proxy renames a bare action (course_llm/proxy/hooks.py `default_group_of`) ---------


async def _walk(router: Any, providers: ProviderMock, model: str) -> tuple[str, list[str]]:
    """Who answered `model` (a deployment id, or the error's status) and the upstream walk."""
    before = len(providers.requests)
    try:
        response = await router.acompletion(model=model, messages=[{"role": "user", "content": "x"}])
        outcome = str(response._hidden_params["model_id"])
    except Exception as exc:
        outcome = f"error {getattr(exc, 'status_code', None)}"
    return outcome, [m for m, _ in providers.requests[before:]]


async def test_litellm_does_not_follow_the_fallbacks_of_an_alias_target(
    registry: Registry, providers: ProviderMock
) -> None:
    """LiteLLM behaviour the proxy's rename works around (BerriAI/litellm#10317, litellm 1.106.2):
    a bare action, an alias of `<action>/default`, walks the default chain but not its fallbacks.
    When this fails, LiteLLM resolves aliases for fallbacks: `default_group_of` can go."""
    config = compile_router_config(with_own_fallback(registry), fallback_strategy=FALLBACK)
    router = load_litellm().Router(model_list=config["model_list"], **config["router_settings"])
    try:
        fail_default_chain(providers, (500, 503))
        bare = await _walk(router, providers, ACTION)
        fail_default_chain(providers, (500, 503))
        default = await _walk(router, providers, f"{ACTION}/default")
    finally:
        router.discard()
    walk = expected_upstream_walk((500, 503))
    assert default == (f"{ACTION}/{FALLBACK}/gpt-4o-mini", walk)
    assert bare == ("error 503", walk[:-1])


def test_the_proxy_sends_only_a_bare_action_on_as_its_default_group() -> None:
    names = {f"{ACTION}/default", f"{ACTION}/quality", "other/default"}
    aliases = {ACTION: f"{ACTION}/default", "other": "other/default", "nick": f"{ACTION}/quality"}
    assert default_group_of(ACTION, names, aliases) == f"{ACTION}/default"
    assert default_group_of(f"{ACTION}/quality", names, aliases) == f"{ACTION}/quality"
    assert default_group_of("nick", names, aliases) == "nick"  # not course_llm's alias: LiteLLM's
    assert default_group_of("poetry", names, aliases) == "poetry"  # the guard refuses it
    assert default_group_of(ACTION, names - {f"{ACTION}/default"}, aliases) == ACTION


# -- AllModelsFailedError.errors and .strategies_tried -----------------------------------------


async def test_the_error_lists_each_failed_attempt_and_each_strategy_tried_once(
    registry: Registry, providers: ProviderMock
) -> None:
    providers.always("claude-sonnet-4-5", 500)
    providers.always("gemini-2.5-flash", 403)
    providers.always("deepseek-chat", 429)
    providers.always("gpt-4o-mini", 401)
    async with ModelRouter(with_own_fallback(registry), fallback_strategy=FALLBACK) as router:
        with pytest.raises(AllModelsFailedError) as caught:
            await router.complete(ACTION, "x", strategy="quality")
    error = caught.value
    assert error.strategies_tried == ["quality", "default", FALLBACK]
    assert [e.split(": ", 1)[0] for e in error.errors] == [
        "claude-sonnet (quality)",
        "claude-sonnet (quality)",
        "gemini-2.5-flash (quality)",
        "deepseek-chat (default)",
        "deepseek-chat (default)",
        "gemini-2.5-flash (default)",
        "gpt-4o-mini (budget)",
    ]
    assert error.errors[0].startswith("claude-sonnet (quality): 500 InternalServerError: ")
    assert error.errors[-1].startswith("gpt-4o-mini (budget): 401 AuthenticationError: ")
    assert all("upstream says" in e for e in error.errors)
    assert len(error.errors) == len(error.attempts)  # one entry per failed attempt, like .attempts


async def test_no_attempt_means_no_errors_and_no_strategy_tried(
    registry: Registry, providers: ProviderMock
) -> None:
    async with ModelRouter(registry) as router:
        for provider in ("deepseek", "gemini"):
            router.disable_provider(provider)
        with pytest.raises(AllModelsFailedError) as caught:
            await router.complete(ACTION, "x")
    assert (caught.value.errors, caught.value.strategies_tried) == ([], [])
    assert providers.requests == []


def test_an_attempt_without_a_status_shows_a_dash_and_strategies_keep_first_seen_order() -> None:
    def failed(n: int, strategy: str, status: int | None) -> FailedAttempt:
        return FailedAttempt(n, f"m{n}", "openai", strategy, status, "APIConnectionError", "refused")

    attempts = [failed(1, "budget", None), failed(2, "default", 500), failed(3, "budget", 503)]
    error = AllModelsFailedError(ACTION, FALLBACK, "r-1", attempts)
    assert error.errors == [
        "m1 (budget): - APIConnectionError: refused",
        "m2 (default): 500 APIConnectionError: refused",
        "m3 (budget): 503 APIConnectionError: refused",
    ]
    assert error.strategies_tried == ["budget", "default"]


# -- the real proxy processes ------------------------------------------------------------------


def proxy_registry(up: FakeUpstream, path: Path) -> Path:
    e2e_registry(up, path)
    data = yaml.safe_load(path.read_text())
    data["routing"][ACTION][FALLBACK] = ["gpt-4o-mini"]
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def served(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, str]]:
    """`course-llm serve` with COURSE_LLM_FALLBACK_STRATEGY=budget; its database URL."""
    tmp = tmp_path_factory.mktemp("defaults")
    db_url = f"sqlite+aiosqlite:///{tmp / 'calls.db'}"
    port = free_port()
    env = {**proxy_env(db_url, tmp), "COURSE_LLM_FALLBACK_STRATEGY": FALLBACK}
    argv = serve_argv("--registry", str(proxy_registry(upstream, tmp / "models.yaml")), "--port", str(port))
    process = ProxyProcess(argv, env, port, tmp / "proxy.log").start()
    yield process, db_url
    process.stop()


def rows_expected(statuses: tuple[int, int]) -> list[tuple[Any, ...]]:
    walk = expected_upstream_walk(statuses)
    failing = dict(zip(["deepseek-chat", "gemini-2.5-flash"], statuses, strict=True))
    rows: list[tuple[Any, ...]] = []
    for attempt, model in enumerate(walk, start=1):
        if model == "gpt-4o-mini":
            rows.append((attempt, model, FALLBACK, None, True))
        else:
            rows.append((attempt, model, "default", failing[model], False))
    return rows


async def _rows_of_a_request(
    process: ProxyProcess, db_url: str, up: FakeUpstream, model: str, statuses: tuple[int, int]
) -> tuple[str, list[tuple[Any, ...]]]:
    up.reset()
    up.set_behaviour("deepseek-chat", [statuses[0]])
    up.set_behaviour("gemini-2.5-flash", [statuses[1]])
    request_id, response = await ask(process, model)
    rows = await rows_of(db_url, request_id, len(expected_upstream_walk(statuses)))
    assert {(r.action, r.strategy) for r in rows} == {(ACTION, "default")}
    return response.choices[0].message.content, chain(rows)


@pytest.mark.e2e
@pytest.mark.parametrize("statuses", [(500, 503), (429, 401)], ids=str)
async def test_serve_answers_the_bare_action_exactly_as_its_default_strategy(
    served: tuple[ProxyProcess, str], upstream: FakeUpstream, statuses: tuple[int, int]
) -> None:
    process, db_url = served
    bare = await _rows_of_a_request(process, db_url, upstream, ACTION, statuses)
    default = await _rows_of_a_request(process, db_url, upstream, f"{ACTION}/default", statuses)
    assert bare[1] == default[1] == rows_expected(statuses)
    assert bare[0] and bare[0] == default[0]  # the fallback strategy's model answered both


@pytest.mark.e2e
async def test_serve_reports_every_attempt_when_the_fallback_strategy_fails_too(
    served: tuple[ProxyProcess, str], upstream: FakeUpstream
) -> None:
    process, db_url = served
    upstream.reset()
    upstream.set_behaviour("deepseek-chat", [429])
    upstream.set_behaviour("gemini-2.5-flash", [401])
    upstream.set_behaviour("gpt-4o-mini", [403])
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(process, ACTION)
    assert caught.value.status_code == 403  # the last attempt's: the fallback strategy's model
    message = str(caught.value)
    assert "#3 gemini-2.5-flash (default): 401" in message and "#4 gpt-4o-mini (budget): 403" in message
    assert [upstream.hits(m) for m in ("deepseek-chat", "gemini-2.5-flash")] == [2, 1]  # walked once
    rows = await rows_of(db_url, caught.value.response.headers["x-course-llm-request-id"], 4)
    assert [(model, strategy) for _, model, strategy, _, _ in chain(rows)] == [
        ("deepseek-chat", "default"),
        ("deepseek-chat", "default"),
        ("gemini-2.5-flash", "default"),
        ("gpt-4o-mini", FALLBACK),
    ]


@pytest.mark.e2e
async def test_plain_litellm_with_a_compiled_fallback_strategy_honours_it_for_the_bare_action(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    registry = proxy_registry(upstream, tmp_path / "models.yaml")
    config = compiled_config(
        registry, tmp_path / "proxy_config.yaml", {"COURSE_LLM_FALLBACK_STRATEGY": FALLBACK}
    )
    fallbacks = yaml.safe_load(config.read_text())["router_settings"]["fallbacks"]
    assert {f"{ACTION}/default": [f"{ACTION}/{FALLBACK}"]} in fallbacks  # not under the bare name
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}"
    port = free_port()
    process = ProxyProcess(litellm_argv(config, port), proxy_env(db_url, tmp_path), port, tmp_path / "log")
    process.start()
    try:
        content, rows = await _rows_of_a_request(process, db_url, upstream, ACTION, (429, 401))
    finally:
        process.stop()
        upstream.reset()
    assert content and rows == rows_expected((429, 401))
