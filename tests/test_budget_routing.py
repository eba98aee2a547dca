"""Budgets on real requests (issue 14), through the facade and the real proxy.

A budget's spend crosses `downgrade_at` (requests are then served by the action's `budget` chain:
rows keep `strategy` as asked, `served_strategy` = budget, `metadata.budget` = its name), then its
limit (refused: `BudgetExceededError` / HTTP 429, nothing sent upstream, no row). Another process
on the same database sees the same spend and refuses at once. Rollover uses an injected clock.

Every scripted answer costs the same: 5 tokens in and 4 out at 0.001 / 0.002 USD per 1,000, so
1.3e-5 USD (tests/test_routing_stage2.py `ScriptedUpstream`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from course_llm import BudgetExceededError, Settings, call_scope, create_model_router
from course_llm.cli import app
from course_llm.control.budgets import BudgetBook
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import parse_registry
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_metrics import sample
from tests.test_proxy_e2e import KEY, REQUEST_ID, client, proxy_env, rows_of
from tests.test_routing_stage2 import ACTION, Rows, ScriptedUpstream, stage2_registry

CALL = 1.3e-5
Factory = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as scripted:
        yield scripted


@pytest.fixture
def up(upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch) -> ScriptedUpstream:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "fake-key")
    upstream.reset()
    return upstream


def budgeted(base_url: str, **budget: Any) -> dict[str, Any]:
    """The stage-2 registry with a `budget` chain [solo] and one daily budget on the action:
    by default downgrading after the first call and refusing after the third."""
    data = stage2_registry(base_url)
    data["routing"][ACTION]["budget"] = ["solo"]
    data["budgets"] = {
        "daily": {
            "match": {"action": ACTION},
            "period": "day",
            "limit_usd": 3 * CALL - CALL / 10,
            "downgrade_at": 0.3,
            **budget,
        }
    }
    return data


def served(rows: Rows, request_id: str) -> list[tuple[Any, ...]]:
    return [
        (r.model_id, r.strategy, r.served_strategy, r.metadata.get("budget"))
        for r in rows.records
        if r.request_id == request_id
    ]


async def test_spend_downgrades_to_the_budget_chain_then_refuses(up: ScriptedUpstream) -> None:
    rows = Rows()
    async with ModelRouter(parse_registry(budgeted(up.base_url)), writer=rows) as router:  # type: ignore[arg-type]
        first = await router.complete(ACTION, "x")
        second = await router.complete(ACTION, "x")
        third = await router.complete(ACTION, "x", strategy="quality")
        up.reset()
        with pytest.raises(BudgetExceededError) as caught:
            await router.complete(ACTION, "x")
    assert served(rows, first.request_id) == [("first", "default", "default", None)]
    assert served(rows, second.request_id) == [("solo", "default", "budget", "daily")]
    assert served(rows, third.request_id) == [("solo", "quality", "budget", "daily")]
    assert (second.served_strategy, second.strategy) == ("budget", "default")
    error = caught.value
    assert (error.budget, error.limit_usd) == ("daily", pytest.approx(3 * CALL - CALL / 10))
    assert error.spent_usd == pytest.approx(3 * CALL)
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert error.resets_at == tomorrow
    assert up.models() == [] and len(rows.records) == 3  # nothing sent, no row


async def test_an_action_without_a_budget_chain_keeps_its_own(up: ScriptedUpstream) -> None:
    data = budgeted(up.base_url)
    del data["routing"][ACTION]["budget"]
    rows = Rows()
    async with ModelRouter(parse_registry(data), writer=rows) as router:  # type: ignore[arg-type]
        await router.complete(ACTION, "x")
        second = await router.complete(ACTION, "x")
    assert served(rows, second.request_id) == [("first", "default", "default", None)]


async def test_on_limit_allow_never_refuses(up: ScriptedUpstream) -> None:
    rows = Rows()
    data = budgeted(up.base_url, on_limit="allow")
    async with ModelRouter(parse_registry(data), writer=rows) as router:  # type: ignore[arg-type]
        answers = [await router.complete(ACTION, "x") for _ in range(5)]
    assert [a.served_strategy for a in answers] == ["default"] + ["budget"] * 4


async def test_a_budget_matches_only_its_tenant(up: ScriptedUpstream) -> None:
    data = budgeted(up.base_url)
    data["budgets"]["daily"]["match"] = {"tenant_id": "acme"}
    rows = Rows()
    async with ModelRouter(parse_registry(data), writer=rows) as router:  # type: ignore[arg-type]
        with call_scope(tenant_id="acme"):
            for _ in range(3):
                await router.complete(ACTION, "x")
            with pytest.raises(BudgetExceededError):
                await router.complete(ACTION, "x")
        with call_scope(tenant_id="globex"):
            other = await router.complete(ACTION, "x")
    assert other.served_strategy == "default"


async def test_the_day_rolls_over_on_the_clock(up: ScriptedUpstream) -> None:
    moment = [datetime(2026, 11, 30, 23, 59, tzinfo=UTC)]
    registry = parse_registry(budgeted(up.base_url))
    async with ModelRouter(registry, writer=Rows()) as router:  # type: ignore[arg-type]
        router.controls.book = BudgetBook(registry.budgets, _unused_source, now=lambda: moment[0])
        for _ in range(3):
            await router.complete(ACTION, "x")
        with pytest.raises(BudgetExceededError) as caught:
            await router.complete(ACTION, "x")
        assert caught.value.resets_at == datetime(2026, 12, 1, tzinfo=UTC)
        moment[0] = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
        fresh = await router.complete(ACTION, "x")
    assert fresh.served_strategy == "default"


async def _unused_source(*args: Any) -> Any:
    raise AssertionError("this test's book is never refreshed")


async def test_a_second_process_on_the_same_database_refuses_at_once(
    up: ScriptedUpstream, database_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    registry = parse_registry(budgeted(up.base_url))
    settings = Settings(database_url=database_url, spool_path=tmp_path / "journal")
    async with create_model_router(settings, session_factory, registry=registry) as spender:
        for _ in range(3):
            await spender.complete(ACTION, "x")
        await spender.flush()
    other = Settings(database_url=database_url, spool_path=tmp_path / "journal-2")
    async with create_model_router(other, session_factory, registry=registry) as second:
        up.reset()
        with pytest.raises(BudgetExceededError) as caught:
            await second.complete(ACTION, "x")
    assert caught.value.spent_usd == pytest.approx(3 * CALL)
    assert up.models() == []


# -- the real proxy ------------------------------------------------------------------------------


def _serve(upstream: ScriptedUpstream, tmp: Path, db_url: str) -> ProxyProcess:
    registry = tmp / "models.yaml"
    registry.write_text(yaml.safe_dump(budgeted(upstream.base_url)))
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    return ProxyProcess(argv, proxy_env(db_url, tmp), port, tmp / "proxy.log").start()


async def _ask(process: ProxyProcess) -> tuple[str, str]:
    raw = await client(process).chat.completions.with_raw_response.create(
        model=ACTION, messages=[{"role": "user", "content": "x"}], metadata={"budget": "forged"}
    )
    return raw.headers[REQUEST_ID], raw.parse().choices[0].message.content or ""


async def _get(process: ProxyProcess, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=process.base_url) as http:
        return await http.get(path, headers={"Authorization": f"Bearer {KEY}"})


@pytest.mark.e2e
async def test_serve_downgrades_then_answers_429_and_a_second_process_agrees(
    upstream: ScriptedUpstream, up: ScriptedUpstream, tmp_path: Path
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    (tmp_path / "one").mkdir()
    process = _serve(upstream, tmp_path / "one", db_url)
    try:
        answered = [await _ask(process) for _ in range(3)]
        rows = [await rows_of(db_url, request_id, 1) for request_id, _ in answered]
        assert [
            (r[0].model_id, r[0].strategy, r[0].served_strategy, r[0].metadata_.get("budget")) for r in rows
        ] == [
            ("first", "default", "default", None),  # the client's metadata.budget is not kept
            ("solo", "default", "budget", "daily"),
            ("solo", "default", "budget", "daily"),
        ]
        up.reset()
        with pytest.raises(openai.RateLimitError) as caught:
            await _ask(process)
        body = caught.value.response.json()["error"]
        assert body["message"].startswith("budget 'daily' is spent: 0.000039 of 0.000038 USD; it resets at ")
        assert body["message"].endswith("T00:00:00+00:00")
        # LiteLLM's proxy keeps the error course_llm raised, fields and all, beside its own shape.
        fields = body["provider_specific_fields"]["error"]
        assert (fields["type"], fields["budget"]) == ("budget_exceeded", "daily")
        assert fields["resets_at"].endswith("T00:00:00Z")
        assert int(caught.value.response.headers["retry-after"]) > 0
        assert up.models() == []
        budgets = (await _get(process, "/usage/budgets")).json()["budgets"]
        assert [(b["name"], b["state"]) for b in budgets] == [("daily", "exceeded")]
        assert budgets[0]["spent_usd"] == pytest.approx(3 * CALL)
        metrics = (await _get(process, "/metrics")).text
        assert sample(metrics, "course_llm_budget_refusals_total", budget="daily") == 1.0
        assert sample(metrics, "course_llm_budget_exceeded", budget="daily") == 1.0
    finally:
        process.stop()

    (tmp_path / "two").mkdir()
    second = _serve(upstream, tmp_path / "two", db_url)
    try:
        with pytest.raises(openai.RateLimitError):
            await _ask(second)
    finally:
        second.stop()
    assert up.models() == []
    with sqlite3.connect(tmp_path / "calls.db") as db:
        assert db.execute("SELECT count(*) FROM llm_calls").fetchone() == (3,)  # refusals: no row


async def test_course_llm_budgets_prints_each_budgets_spend(
    up: ScriptedUpstream,
    database_url: str,
    session_factory: Factory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = budgeted(up.base_url)
    data["budgets"]["tenants-monthly"] = {"match": {"tenant_id": "acme"}, "period": "month", "limit_usd": 1}
    registry_path = tmp_path / "models.yaml"
    registry_path.write_text(yaml.safe_dump(data))
    settings = Settings(database_url=database_url, spool_path=tmp_path / "journal")
    async with create_model_router(settings, session_factory, registry=parse_registry(data)) as router:
        for _ in range(2):
            await router.complete(ACTION, "x")
        await router.flush()

    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", database_url)
    runner = CliRunner()
    # The CLI runs its own event loop (asyncio.run): give it a thread of its own.
    shown = await asyncio.to_thread(
        runner.invoke, app, ["budgets", "--registry", str(registry_path), "--json"]
    )
    assert shown.exit_code == 0, shown.output
    budgets = {b["name"]: b for b in json.loads(shown.output)["budgets"]}
    assert budgets["daily"]["spent_usd"] == pytest.approx(2 * CALL)
    assert budgets["daily"]["state"] == "downgraded"
    assert budgets["tenants-monthly"]["spent_usd"] == 0 and budgets["tenants-monthly"]["state"] == "ok"
    assert budgets["tenants-monthly"]["resets_at"].endswith("-01T00:00:00Z")
    table = await asyncio.to_thread(runner.invoke, app, ["budgets", "--registry", str(registry_path)])
    assert table.exit_code == 0 and "daily" in table.output and "downgraded" in table.output
    empty = await asyncio.to_thread(runner.invoke, app, ["budgets"])  # the shipped registry: none
    assert empty.exit_code == 0 and "no budgets in" in empty.output


async def test_a_nul_in_the_tenant_id_does_not_escape_its_budget(up: ScriptedUpstream) -> None:
    """The row stores the tenant id cleaned ("ac\\x00me" is "acme"): so does the budget check."""
    data = budgeted(up.base_url)
    data["budgets"]["daily"]["match"] = {"tenant_id": "acme"}
    rows = Rows()
    async with ModelRouter(parse_registry(data), writer=rows) as router:  # type: ignore[arg-type]
        with call_scope(tenant_id="ac\x00me"):
            for _ in range(3):
                await router.complete(ACTION, "x")
        with call_scope(tenant_id="acme"), pytest.raises(BudgetExceededError):
            await router.complete(ACTION, "x")
        with call_scope(tenant_id="a\x00cme"), pytest.raises(BudgetExceededError):
            await router.complete(ACTION, "x")


async def test_a_control_that_fails_never_costs_the_row(up: ScriptedUpstream) -> None:
    rows = Rows()
    async with ModelRouter(parse_registry(budgeted(up.base_url)), writer=rows) as router:  # type: ignore[arg-type]

        def broken(record: Any) -> None:
            raise RuntimeError("a broken budget book")

        router.controls.observe = broken  # type: ignore[method-assign]
        response = await router.complete(ACTION, "x")
    assert [r.request_id for r in rows.records] == [response.request_id]
