"""Models whose max_context is below the prompt are not tried, and each skip is a row (issue 13).

LiteLLM's pre-call check (`enable_pre_call_checks`, set by the compiler) drops such a model before
any request; course_llm/_litellm/context.py turns each drop into a row: `success` false,
`error_class` ContextWindowSkipped, no status, latency 0. Shown through the facade and the real
proxy against the scripted upstream of tests/test_routing_stage2.py, which records every request.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from course_llm import AllModelsFailedError
from course_llm._litellm import load_litellm
from course_llm._litellm.context import _upper_bound
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import parse_registry
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_proxy_e2e import proxy_env, rows_of
from tests.test_routing_stage2 import ACTION, Rows, ScriptedUpstream, _ask, stage2_registry

SKIPPED = "ContextWindowSkipped"
LONG = "word " * 200  # about 200 tokens: over a max_context of 50, under 8192


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as scripted:
        yield scripted


@pytest.fixture
def up(upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch) -> ScriptedUpstream:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "fake-key")
    upstream.reset()
    return upstream


def small(data: dict[str, Any], *models: str) -> dict[str, Any]:
    for model in models:
        data["models"][model]["max_context"] = 50
    return data


def chain_of(rows: Rows, request_id: str) -> list[tuple[Any, ...]]:
    mine = sorted((r for r in rows.records if r.request_id == request_id), key=lambda r: r.attempt)
    return [(r.attempt, r.model_id, r.served_strategy, r.status_code, r.error_class, r.success) for r in mine]


async def test_a_model_too_small_for_the_prompt_is_skipped_as_a_row(up: ScriptedUpstream) -> None:
    rows = Rows()
    async with ModelRouter(
        parse_registry(small(stage2_registry(up.base_url), "first")), writer=rows
    ) as router:  # type: ignore[arg-type]
        response = await router.complete(ACTION, LONG)
    assert response.model_id == "second"
    assert up.models() == ["m-second"]  # the small model got no request
    assert chain_of(rows, response.request_id) == [
        (1, "first", "default", None, SKIPPED, False),
        (2, "second", "default", None, None, True),
    ]
    skip = next(r for r in rows.records if r.error_class == SKIPPED)
    assert skip.latency_ms == 0 and skip.tokens_in is None and skip.cost_usd is None
    assert "max_context of 50" in (skip.error_message or "")


async def test_a_short_prompt_is_sent_to_the_small_model(up: ScriptedUpstream) -> None:
    rows = Rows()
    async with ModelRouter(
        parse_registry(small(stage2_registry(up.base_url), "first")), writer=rows
    ) as router:  # type: ignore[arg-type]
        response = await router.complete(ACTION, "short")
    assert (response.model_id, up.models()) == ("first", ["m-first"])
    assert chain_of(rows, response.request_id) == [(1, "first", "default", None, None, True)]


async def test_skips_keep_the_chain_order_and_each_model_is_one_row(up: ScriptedUpstream) -> None:
    rows = Rows()
    data = small(stage2_registry(up.base_url), "third", "first")
    async with ModelRouter(parse_registry(data), writer=rows) as router:  # type: ignore[arg-type]
        response = await router.complete(ACTION, LONG, strategy="quality")
    assert (response.model_id, response.served_strategy, up.models()) == ("second", "quality", ["m-second"])
    assert chain_of(rows, response.request_id) == [
        (1, "third", "quality", None, SKIPPED, False),
        (2, "first", "quality", None, SKIPPED, False),
        (3, "second", "quality", None, None, True),
    ]


async def test_when_every_model_is_too_small_the_error_lists_each_skip_once(up: ScriptedUpstream) -> None:
    rows = Rows()
    data = small(stage2_registry(up.base_url), "first", "second", "third")
    async with ModelRouter(parse_registry(data), writer=rows) as router:  # type: ignore[arg-type]
        with pytest.raises(AllModelsFailedError) as caught:
            await router.complete(ACTION, LONG, strategy="quality")
    assert up.models() == []
    assert [(a.model_id, a.served_strategy, a.error_class) for a in caught.value.attempts] == [
        ("third", "quality", SKIPPED),
        ("first", "quality", SKIPPED),
        ("second", "quality", SKIPPED),
        ("first", "default", SKIPPED),
        ("second", "default", SKIPPED),
    ]
    assert caught.value.strategies_tried == ["quality", "default"]
    assert len(rows.records) == 5


async def test_a_prompt_that_cannot_reach_any_limit_is_not_counted(
    up: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    router_class = load_litellm().Router
    counted: list[int] = []
    original = router_class._count_pre_call_check_tokens

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        counted.append(result)
        return result

    monkeypatch.setattr(router_class, "_count_pre_call_check_tokens", counting)
    data = small(stage2_registry(up.base_url), "first")
    async with ModelRouter(parse_registry(data), writer=Rows()) as router:  # type: ignore[arg-type]
        await router.complete(ACTION, "short")  # at most ~40 bytes: under 50 whatever the tokenizer
        assert counted == []
        await router.complete(ACTION, LONG)  # counted at each level of the chain it reaches
        assert counted and all(tokens > 50 for tokens in counted)
        before = len(counted)
        await router.complete(ACTION, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        assert len(counted) == before + 1  # not plain text: LiteLLM counts as before


@pytest.mark.parametrize(
    "texts",
    [
        ["short"],
        ["word " * 300, "another message"],
        ["日本語のテキスト" * 40],
        ["🙂🚀🎉" * 60, "ñandú ü"],
        ["", "", ""],
        ["a\nb\tc " * 100],
    ],
    ids=["short", "two-long", "cjk", "emoji", "empty", "whitespace"],
)
@pytest.mark.parametrize("model", ["gpt-4o", "claude-3-5-sonnet-20240620", "gemini/gemini-2.5-flash"])
def test_the_bound_is_never_below_litellms_own_count(texts: list[str], model: str) -> None:
    messages = [{"role": "system" if i == 0 else "user", "content": text} for i, text in enumerate(texts)]
    bound = _upper_bound(messages, {})
    assert bound is not None
    assert load_litellm().token_counter(model=model, messages=messages) <= bound


def test_the_bound_gives_way_to_a_count_for_anything_but_plain_text() -> None:
    assert _upper_bound([{"role": "user", "content": [{"type": "text", "text": "x"}]}], {}) is None
    assert _upper_bound([{"role": "assistant", "content": None, "tool_calls": []}], {}) is None
    assert _upper_bound([{"role": "user", "content": "x"}], {"tools": [{"type": "function"}]}) is None
    assert _upper_bound([], {}) is None
    assert _upper_bound("not messages", {}) is None


def test_the_wrappers_are_in_place_on_litellms_router() -> None:
    """Fails when LiteLLM renames or reshapes what course_llm/_litellm/context.py wraps."""
    router_class = load_litellm().Router
    assert getattr(router_class._pre_call_checks, "_course_llm_context_skip_report", False)
    wrapped = inspect.unwrap(router_class._pre_call_checks)
    assert {"healthy_deployments", "request_kwargs", "input_token_count"} <= set(
        inspect.signature(wrapped).parameters
    )
    counter = inspect.unwrap(router_class._acount_pre_call_check_tokens)
    assert {"healthy_deployments", "messages", "request_kwargs"} <= set(inspect.signature(counter).parameters)


# -- the real proxy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, str]]:
    tmp = tmp_path_factory.mktemp("context")
    registry = tmp / "models.yaml"
    registry.write_text(yaml.safe_dump(small(stage2_registry(upstream.base_url), "first", "third")))
    db_url = f"sqlite+aiosqlite:///{tmp / 'calls.db'}"
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    process = ProxyProcess(argv, proxy_env(db_url, tmp), port, tmp / "proxy.log").start()
    yield process, db_url
    process.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("model", [ACTION, f"{ACTION}/quality"])
async def test_serve_skips_a_model_too_small_for_the_prompt_as_a_row(
    served: tuple[ProxyProcess, str], up: ScriptedUpstream, model: str
) -> None:
    process, db_url = served
    request_id, answer = await _ask(process, model, LONG)
    assert answer == "answer from m-second" and up.models() == ["m-second"]
    strategy = "quality" if model.endswith("quality") else "default"
    skipped = ["third", "first"] if strategy == "quality" else ["first"]
    rows = await rows_of(db_url, request_id, len(skipped) + 1)
    assert [
        (r.attempt, r.model_id, r.served_strategy, r.status_code, r.error_class, r.success) for r in rows
    ] == [
        *[(i, m, strategy, None, SKIPPED, False) for i, m in enumerate(skipped, start=1)],
        (len(skipped) + 1, "second", strategy, None, None, True),
    ]
    assert all(r.latency_ms == 0 and r.source == "proxy" for r in rows[:-1])


def _deployment(provider: str, model: str, limit: int = 8192) -> dict[str, Any]:
    return {
        "model_name": "g",
        "litellm_params": {"model": f"{provider}/{model}", "api_key": "x"},
        "model_info": {"id": f"g/{model}", "max_input_tokens": limit},
    }


@pytest.mark.parametrize(("drop_params", "kept"), [(True, 2), (None, 1)])
def test_a_requests_drop_params_keeps_a_model_without_response_format(
    drop_params: bool | None, kept: int
) -> None:
    """LiteLLM's pre-call check reads only the global drop_params; the facade sets the request's."""
    litellm = load_litellm()
    deployments = [_deployment("openai", "gpt-4o"), _deployment("cohere", "command-r")]
    router = litellm.Router(model_list=deployments, enable_pre_call_checks=True)
    try:
        request = {"response_format": {"type": "json_object"}, "drop_params": drop_params}
        left = router._pre_call_checks(
            model="g",
            healthy_deployments=list(router.model_list),
            messages=[{"role": "user", "content": "x"}],
            request_kwargs=request,
            input_token_count=5,
        )
    finally:
        router.discard()
    assert len(left) == kept  # without the request's drop_params, LiteLLM's own behaviour stays


async def test_a_small_model_after_the_one_that_answers_is_not_a_skip(up: ScriptedUpstream) -> None:
    rows = Rows()
    async with ModelRouter(
        parse_registry(small(stage2_registry(up.base_url), "second")), writer=rows
    ) as router:  # type: ignore[arg-type]
        response = await router.complete(ACTION, LONG)
    assert (response.model_id, up.models()) == ("first", ["m-first"])
    assert chain_of(rows, response.request_id) == [(1, "first", "default", None, None, True)]


async def test_a_small_model_is_skipped_when_the_chain_reaches_it(up: ScriptedUpstream) -> None:
    up.script("m-first", (500, None, {}))
    rows = Rows()
    async with ModelRouter(
        parse_registry(small(stage2_registry(up.base_url), "second")), writer=rows
    ) as router:  # type: ignore[arg-type]
        with pytest.raises(AllModelsFailedError) as caught:
            await router.complete(ACTION, LONG)
    assert up.models() == ["m-first", "m-first"]
    assert chain_of(rows, caught.value.request_id) == [
        (1, "first", "default", 500, "InternalServerError", False),
        (2, "first", "default", 500, "InternalServerError", False),
        (3, "second", "default", None, SKIPPED, False),
    ]


async def test_after_a_skip_the_next_model_gets_its_attempts_once(up: ScriptedUpstream) -> None:
    up.script("m-first", (500, None, {}))
    rows = Rows()
    async with ModelRouter(
        parse_registry(small(stage2_registry(up.base_url), "third")), writer=rows
    ) as router:  # type: ignore[arg-type]
        response = await router.complete(ACTION, LONG, strategy="quality")
    assert up.models() == ["m-first", "m-first", "m-second"]
    assert chain_of(rows, response.request_id) == [
        (1, "third", "quality", None, SKIPPED, False),
        (2, "first", "quality", 500, "InternalServerError", False),
        (3, "first", "quality", 500, "InternalServerError", False),
        (4, "second", "quality", None, None, True),
    ]
