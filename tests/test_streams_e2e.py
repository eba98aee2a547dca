"""End to end: streamed answers through the real proxy are recorded one row per attempt, however
they end (docs/architecture.md, "Durability": one row per attempt, exactly).

The fake upstream (tests/fake_upstream.py) cuts streams half way, ends them without a finish
reason, or streams slowly so the client can hang up in the middle. Rows are read back from the
database, on SQLite and PostgreSQL, by the request id the proxy returns in a response header.
The last tests run a proxy of their own to stop it: after a clean stop every late LiteLLM event
has been delivered, so "exactly one row" is checked with nothing left in flight; after kill -9,
the rows of every answered stream must still reach the database.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from course_llm.db import LLMCall
from tests.fake_upstream import FakeUpstream, estimate_tokens
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_proxy_e2e import (  # noqa: F401 (db_url and upstream are fixtures)
    CLEAN_EXIT,
    REQUEST_ID,
    chain,
    client,
    db_url,
    e2e_registry,
    proxy_env,
    rows_of,
    upstream,
)

pytestmark = pytest.mark.e2e

PROMPT = "Stream a long answer about photosynthesis, please."
#: Forty words: forty-odd chunks, long enough to cut or to hang up in the middle of.
LONG_REPLY = " ".join(f"word{i}" for i in range(40))
DEEPSEEK_PRICES = (0.00028, 0.00042)  # config/models.yaml, per 1k tokens in/out


@dataclass
class Streamed:
    """What the client saw of one streamed request."""

    request_id: str
    text: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    error: Exception | None = None


async def stream(proxy: ProxyProcess, model: str, *, hang_up_after: int | None = None) -> Streamed:
    """Stream `PROMPT` from `model`; with `hang_up_after`, close the connection after that many chunks."""
    raw = await client(proxy).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    seen = Streamed(raw.headers[REQUEST_ID])
    chunks = raw.parse()
    received = 0
    try:
        async for chunk in chunks:
            received += 1
            for choice in chunk.choices:
                seen.text += choice.delta.content or ""
                if choice.finish_reason:
                    seen.finish_reasons.append(choice.finish_reason)
            if hang_up_after is not None and received >= hang_up_after:
                await chunks.close()
                break
    except openai.APIError as exc:
        seen.error = exc
    return seen


@pytest.fixture(scope="module")
def proxy(
    upstream: FakeUpstream,  # noqa: F811 (the fixture imported above)
    db_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("streams")
    registry = e2e_registry(upstream, tmp / "models.yaml")
    port = free_port()
    process = ProxyProcess(
        serve_argv("--registry", str(registry), "--port", str(port)),
        proxy_env(db_url, tmp),
        port,
        tmp / "log",
    ).start()
    yield process
    process.stop()


@pytest.fixture
def up(upstream: FakeUpstream) -> FakeUpstream:  # noqa: F811
    upstream.reset()
    return upstream


def deepseek_cost(row: LLMCall) -> float:
    return ((row.tokens_in or 0) * DEEPSEEK_PRICES[0] + (row.tokens_out or 0) * DEEPSEEK_PRICES[1]) / 1000


async def test_a_normal_stream_is_one_success_row_with_the_upstreams_own_counts(
    proxy: ProxyProcess,
    up: FakeUpstream,
    db_url: str,  # noqa: F811
) -> None:
    up.set_behaviour("deepseek-chat", reply=LONG_REPLY)
    seen = await stream(proxy, "text_processing/budget")
    assert (seen.text, seen.finish_reasons, seen.error) == (LONG_REPLY, ["stop"], None)
    [row] = await rows_of(db_url, seen.request_id, 1)
    assert (row.attempt, row.model_id, row.stream, row.success, row.error_class) == (
        1,
        "deepseek-chat",
        True,
        True,
        None,
    )
    # The fake's own usage chunk (the proxy asked for it), not LiteLLM's estimate.
    assert (row.tokens_in, row.tokens_out) == (estimate_tokens(PROMPT), estimate_tokens(LONG_REPLY))
    assert row.cost_usd == pytest.approx(deepseek_cost(row))
    assert row.metadata_ == {}


@pytest.mark.parametrize("first_model_fails", [False, True], ids=["alone", "after-a-failed-attempt"])
async def test_a_stream_cut_half_way_is_one_failed_row_for_its_attempt(
    proxy: ProxyProcess,
    up: FakeUpstream,
    db_url: str,  # noqa: F811
    first_model_fails: bool,
) -> None:
    # The chunks come 20 ms apart, so the cut lands after content has reached the client.
    up.set_behaviour("deepseek-chat", reply=LONG_REPLY, stream_fault="cut", fault_after=6, chunk_delay_ms=20)
    if first_model_fails:
        # course_structuring/default is gemini-2.5-flash, then deepseek-chat; a 401 moves on at once.
        up.set_behaviour("gemini-2.5-flash", [401])
        seen = await stream(proxy, "course_structuring")
    else:
        seen = await stream(proxy, "text_processing/budget")
    assert seen.text and seen.text != LONG_REPLY  # part of the answer, then the error
    assert isinstance(seen.error, openai.APIError)
    if first_model_fails:
        rows = await rows_of(db_url, seen.request_id, 2)
        assert chain(rows) == [
            (1, "gemini-2.5-flash", "default", 401, False),
            (2, "deepseek-chat", "default", 500, False),
        ]
    else:
        rows = await rows_of(db_url, seen.request_id, 1)
        assert chain(rows) == [(1, "deepseek-chat", "budget", 500, False)]
    streamed = rows[-1]
    assert all(r.stream for r in rows)
    assert streamed.error_class == "APIConnectionError"
    assert "DeepseekException" in (streamed.error_message or "")  # the transport's words vary
    # Billed for what was received, as LiteLLM counted it: the usage chunk never came.
    assert streamed.tokens_in and streamed.tokens_out
    assert streamed.tokens_out < estimate_tokens(LONG_REPLY)
    assert streamed.cost_usd == pytest.approx(deepseek_cost(streamed))
    assert streamed.metadata_ == {"usage_estimated": True}


async def test_a_client_that_hangs_up_mid_stream_leaves_one_marked_row(
    proxy: ProxyProcess,
    up: FakeUpstream,
    db_url: str,  # noqa: F811
) -> None:
    up.set_behaviour("deepseek-chat", reply=LONG_REPLY, chunk_delay_ms=100)  # about four seconds
    seen = await stream(proxy, "text_processing/budget", hang_up_after=3)
    assert seen.text and seen.text != LONG_REPLY and seen.error is None
    [row] = await rows_of(db_url, seen.request_id, 1)
    assert (row.attempt, row.model_id, row.stream, row.success) == (1, "deepseek-chat", True, False)
    assert (row.error_class, row.status_code) == ("ClientDisconnected", None)
    assert row.metadata_ == {"client_disconnected": True, "usage_estimated": True}
    assert row.tokens_out and row.tokens_out < estimate_tokens(LONG_REPLY)  # what was received
    assert row.cost_usd == pytest.approx(deepseek_cost(row))
    assert up.hits("deepseek-chat") == 1


async def test_a_stream_that_ends_without_a_finish_reason_is_an_incomplete_row(
    proxy: ProxyProcess,
    up: FakeUpstream,
    db_url: str,  # noqa: F811
) -> None:
    up.set_behaviour("deepseek-chat", reply=LONG_REPLY, stream_fault="no_finish", fault_after=6)
    seen = await stream(proxy, "text_processing/budget")
    # LiteLLM hands the client a finish reason the upstream never sent.
    assert seen.finish_reasons == ["stop"] and seen.error is None
    assert seen.text and seen.text != LONG_REPLY
    [row] = await rows_of(db_url, seen.request_id, 1)
    assert (row.success, row.stream, row.error_class, row.status_code) == (
        False,
        True,
        "IncompleteStream",
        None,
    )
    assert row.metadata_ == {"stream_incomplete": True, "usage_estimated": True}
    assert row.tokens_in and row.tokens_out and row.tokens_out < estimate_tokens(LONG_REPLY)
    assert row.cost_usd == pytest.approx(deepseek_cost(row))


async def test_a_stream_that_breaks_before_its_first_chunk_is_a_row_before_the_next_models(
    proxy: ProxyProcess,
    up: FakeUpstream,
    db_url: str,  # noqa: F811
) -> None:
    # The Router moves on inside the same stream (quality's last model, then the default chain).
    up.set_behaviour("claude-sonnet-4-5", [401])
    up.set_behaviour("gemini-2.5-pro", stream_fault="cut", fault_after=0)
    seen = await stream(proxy, "course_structuring/quality")
    assert seen.text == "fake answer from gemini-2.5-flash" and seen.error is None
    rows = await rows_of(db_url, seen.request_id, 3)
    assert chain(rows) == [
        (1, "claude-sonnet", "quality", 401, False),
        (2, "gemini-2.5-pro", "quality", None, False),
        (3, "gemini-2.5-flash", "default", None, True),
    ]
    assert rows[1].error_class == "MidStreamFallbackError"  # as the Router noted it
    assert rows[2].tokens_out == estimate_tokens("fake answer from gemini-2.5-flash")
    assert [r.stream for r in rows] == [True, True, True]


async def test_a_streamed_request_whose_every_model_fails_has_one_row_per_attempt(
    proxy: ProxyProcess,
    up: FakeUpstream,
    db_url: str,  # noqa: F811
) -> None:
    # Gemini streams are opened after LiteLLM's deployment call returned: no hook reports these
    # failures; the next attempt (or the request's failure) has to.
    up.set_behaviour("gemini-2.5-flash", [503])
    up.set_behaviour("gemini-2.5-pro", [403])
    with pytest.raises(openai.APIStatusError) as caught:
        await client(proxy).chat.completions.create(
            model="video_analysis/budget", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    # LiteLLM re-raises the first model's error and keeps none of the last one's (a 403).
    assert caught.value.status_code == 503
    request_id = caught.value.response.headers[REQUEST_ID]
    rows = await rows_of(db_url, request_id, 5)
    assert chain(rows) == [
        (1, "gemini-2.5-flash", "budget", 503, False),
        (2, "gemini-2.5-flash", "budget", 503, False),
        (3, "gemini-2.5-flash", "default", 503, False),
        (4, "gemini-2.5-flash", "default", 503, False),
        (5, "gemini-2.5-pro", "default", None, False),
    ]
    assert [r.error_class for r in rows] == ["VertexAIError"] * 4 + ["UpstreamStreamError"]
    assert all(r.stream for r in rows)
    assert (up.hits("gemini-2.5-flash"), up.hits("gemini-2.5-pro")) == (4, 1)


# ---------------------------------------------------------------------------------------------
# A proxy of its own: stopped cleanly, then killed


def own_proxy(upstream: FakeUpstream, tmp_path: Path, db: str) -> ProxyProcess:  # noqa: F811
    port = free_port()
    registry = e2e_registry(upstream, tmp_path / "models.yaml")
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    return ProxyProcess(argv, proxy_env(db, tmp_path), port, tmp_path / "log")


async def test_after_a_clean_stop_every_stream_still_has_exactly_one_row_per_attempt(
    upstream: FakeUpstream,  # noqa: F811
    tmp_path: Path,
) -> None:
    upstream.reset()
    db = f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"
    process = own_proxy(upstream, tmp_path, db).start()
    try:
        upstream.set_behaviour("gemini-2.5-flash", [401])
        upstream.set_behaviour(
            "deepseek-chat", reply=LONG_REPLY, stream_fault="cut", fault_after=6, chunk_delay_ms=20
        )
        cut = await stream(process, "course_structuring")
        upstream.set_behaviour("deepseek-chat", reply=LONG_REPLY, chunk_delay_ms=100)
        hung_up = await stream(process, "text_processing/budget", hang_up_after=3)
        upstream.set_behaviour("deepseek-chat", stream_fault="no_finish", fault_after=4)
        truncated = await stream(process, "text_processing/budget")
        upstream.set_behaviour("deepseek-chat")
        plain = await stream(process, "text_processing/budget")
        answered = await client(process).chat.completions.with_raw_response.create(
            model="text_processing", messages=[{"role": "user", "content": "not streamed"}]
        )
    finally:
        # SIGTERM: LiteLLM's logging worker is drained and every row written before exit.
        assert process.stop() in CLEAN_EXIT, process.log()[-3000:]
        upstream.reset()
    outcomes = {}
    for name, request_id in [
        ("cut", cut.request_id),
        ("hung_up", hung_up.request_id),
        ("truncated", truncated.request_id),
        ("plain", plain.request_id),
        ("answered", answered.headers[REQUEST_ID]),
    ]:
        rows = await rows_of(db, request_id, 1, timeout_s=2)
        outcomes[name] = [(r.attempt, r.model_id, r.success, r.error_class) for r in rows]
    assert outcomes == {
        "cut": [
            (1, "gemini-2.5-flash", False, "VertexAIError"),
            (2, "deepseek-chat", False, "APIConnectionError"),
        ],
        "hung_up": [(1, "deepseek-chat", False, "ClientDisconnected")],
        "truncated": [(1, "deepseek-chat", False, "IncompleteStream")],
        "plain": [(1, "deepseek-chat", True, None)],
        "answered": [(1, "deepseek-chat", True, None)],
    }


async def test_rows_of_answered_calls_survive_kill_9_and_reach_the_database_at_the_next_start(
    upstream: FakeUpstream,  # noqa: F811
    tmp_path: Path,
) -> None:
    upstream.reset()
    # No database while the first process runs (a closed port: the proxy serves, rows wait), so
    # the rows exist only in its journal when it is killed right after answering.
    first = own_proxy(upstream, tmp_path, "postgresql://postgres@127.0.0.1:1/nowhere").start()
    try:
        streamed = await stream(first, "text_processing/budget")
        answered = await client(first).chat.completions.with_raw_response.create(
            model="text_processing", messages=[{"role": "user", "content": "not streamed"}]
        )
        assert streamed.error is None and streamed.finish_reasons == ["stop"]
    finally:
        first.stop(sig=signal.SIGKILL)
    db = f"sqlite+aiosqlite:///{tmp_path / 'after-kill.db'}"
    process = own_proxy(upstream, tmp_path, db).start()  # same journal, a database this time
    try:
        for request_id in (streamed.request_id, answered.headers[REQUEST_ID]):
            rows: list[Any] = await rows_of(db, request_id, 1)
            assert [(r.attempt, r.success, r.model_id) for r in rows] == [(1, True, "deepseek-chat")]
    finally:
        process.stop()
