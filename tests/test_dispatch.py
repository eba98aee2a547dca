"""Any number of facade routers log: one SDK CallLogger for the process, rows dispatched per router.

LiteLLM keeps at most 100 callbacks, so a logger per router left the 101st open router unlogged
(course_llm/routing/dispatch.py). Provider HTTP is mocked with respx (tests/providers.py); rows
land in a real database (the `session_factory` fixture: SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from course_llm import call_scope
from course_llm._litellm import load_litellm
from course_llm.db import LLMCall
from course_llm.errors import CourseLLMError
from course_llm.recording.callback import CallLogger
from course_llm.recording.records import CallRecord
from course_llm.recording.writer import RecordWriter
from course_llm.routing.dispatch import ROUTER_ID_KEY, RouterDispatch, router_dispatch
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry
from tests.providers import ProviderMock

litellm = load_litellm()

ROUTERS = 150  # past LiteLLM's limit of 100 callbacks
FAILURES = 30  # transient upstream errors spread over the calls: some requests get two rows


class SpyWriter(RecordWriter):
    """A RecordWriter that remembers the request id of every row handed to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_ids: list[str] = []

    def submit(self, record: CallRecord) -> None:
        self.request_ids.append(record.request_id)
        super().submit(record)


def spy_writer(session_factory: Any, directory: Path) -> SpyWriter:
    directory.mkdir(parents=True, exist_ok=True)
    return SpyWriter(session_factory, spool_path=directory / "journal")


class RouterSpy:
    """A router's writer that records which rows it was handed and passes them to a shared writer.

    One real RecordWriter (one journal, one connection pool user) writes every router's rows, so
    the test measures the dispatch rather than 150 writers competing for the database.
    """

    def __init__(self, shared: RecordWriter) -> None:
        self.shared = shared
        self.request_ids: list[str] = []

    def submit(self, record: CallRecord) -> None:
        self.request_ids.append(record.request_id)
        self.shared.submit(record)

    async def flush(self) -> None:
        await self.shared.flush()

    async def aclose(self) -> None:
        await self.shared.flush()


async def all_rows(session_factory: Any) -> list[LLMCall]:
    async with session_factory() as session:
        result = await session.execute(sa.select(LLMCall).order_by(LLMCall.request_id, LLMCall.attempt))
        return list(result.scalars())


def sdk_loggers() -> list[Any]:
    """The SDK logger as many times as LiteLLM's callback list holds it."""
    return [c for c in litellm.callbacks if c is router_dispatch().logger]


async def test_150_routers_open_at_once_each_log_exactly_their_own_rows(
    registry: Registry, providers: ProviderMock, session_factory: Any, tmp_path: Path
) -> None:
    providers.script("deepseek-chat", *[500] * FAILURES)
    shared = RecordWriter(session_factory, spool_path=tmp_path / "journal")
    writers = [RouterSpy(shared) for _ in range(ROUTERS)]
    routers = [ModelRouter(registry, writer=writer) for writer in writers]  # type: ignore[arg-type]
    assert len(sdk_loggers()) == 1  # one logger, however many routers

    async def call(i: int) -> str:
        with call_scope(tenant_id=f"tenant-{i}", operation=f"op-{i}"):
            response = await routers[i].complete("text_processing", f"prompt {i}", metadata={"router": i})
            return response.request_id

    try:
        request_ids = await asyncio.gather(*(call(i) for i in range(ROUTERS)))
        # Also in the lists of LiteLLM's background events, which its Routers' own entries fill up.
        logger = router_dispatch().logger
        for name in ("_async_success_callback", "_async_failure_callback"):
            assert [c for c in getattr(litellm, name) if c is logger] == [logger]
    finally:
        for router in routers:
            await router.aclose()
        await shared.aclose()

    rows = await all_rows(session_factory)
    assert len(rows) == ROUTERS + FAILURES
    by_request: dict[str, list[LLMCall]] = {}
    for row in rows:
        by_request.setdefault(row.request_id, []).append(row)
    assert set(by_request) == set(request_ids)
    for i, request_id in enumerate(request_ids):
        mine = by_request[request_id]
        assert [r.attempt for r in mine] == list(range(1, len(mine) + 1))
        assert [r.success for r in mine] == [False] * (len(mine) - 1) + [True]
        assert {(r.tenant_id, r.operation, r.source) for r in mine} == {(f"tenant-{i}", f"op-{i}", "sdk")}
        assert all(r.metadata_ == {"router": i} for r in mine)  # the router id is not stored
        # Every row of the call went through its own router's writer, and nothing else did.
        assert writers[i].request_ids == [request_id] * len(mine)


async def test_closing_one_router_does_not_stop_the_others_logging(
    registry: Registry, providers: ProviderMock, session_factory: Any, tmp_path: Path
) -> None:
    writers = [spy_writer(session_factory, tmp_path / name) for name in "abc"]
    first, second, third = (ModelRouter(registry, writer=writer) for writer in writers)
    before = (await first.complete("text_processing", "a")).request_id
    await first.aclose()
    try:
        after = [
            (await second.complete("text_processing", "b")).request_id,
            (await third.complete("video_analysis", "c")).request_id,
        ]
        assert len(sdk_loggers()) == 1
    finally:
        await second.aclose()
        await third.aclose()

    rows = await all_rows(session_factory)
    assert sorted(r.request_id for r in rows) == sorted([before, *after])  # the closed one's row kept
    assert [w.request_ids for w in writers] == [[before], [after[0]], [after[1]]]
    assert sdk_loggers() == []  # the last router out took the logger out of LiteLLM


async def test_a_router_opened_after_all_others_closed_logs_again(
    registry: Registry, providers: ProviderMock, session_factory: Any, tmp_path: Path
) -> None:
    async with ModelRouter(registry, writer=spy_writer(session_factory, tmp_path / "a")) as router:
        await router.complete("text_processing", "a")
    litellm.callbacks.clear()  # also what an application resetting LiteLLM does
    async with ModelRouter(registry, writer=spy_writer(session_factory, tmp_path / "b")) as router:
        request_id = (await router.complete("text_processing", "b")).request_id
    assert request_id in {r.request_id for r in await all_rows(session_factory)}


class _Filler(CallLogger):
    """Distinct loggers (LiteLLM de-duplicates equal ones) to fill LiteLLM's callback list."""

    def __init__(self, n: int) -> None:
        super().__init__(lambda record: None, source="sdk", router_tag=f"filler-{n}")


async def test_a_full_litellm_callback_list_is_a_clear_error_not_a_silent_warning(
    registry: Registry,
) -> None:
    from litellm.constants import MAX_CALLBACKS

    litellm.callbacks[:] = [c for c in litellm.callbacks if c is not router_dispatch().logger]
    while len(litellm.callbacks) < MAX_CALLBACKS:
        litellm.callbacks.append(_Filler(len(litellm.callbacks)))
    open_before = router_dispatch().open_routers
    message = rf"did not install course_llm's CallLogger: .* at most {MAX_CALLBACKS}"
    with pytest.raises(CourseLLMError, match=message):
        ModelRouter(registry)
    assert router_dispatch().open_routers == open_before  # the refused router is not registered


def test_dispatch_hands_a_row_to_its_router_without_the_router_id() -> None:
    dispatch = RouterDispatch()
    got: dict[str, list[CallRecord]] = {"a": [], "b": []}
    dispatch._sinks = {"a": got["a"].append, "b": got["b"].append}  # no LiteLLM install needed here

    def row(router_id: str | None) -> CallRecord:
        metadata = {"essay": 1} if router_id is None else {"essay": 1, ROUTER_ID_KEY: router_id}
        return CallRecord(
            request_id="r",
            attempt=1,
            action="a",
            strategy="s",
            served_strategy="s",
            provider="p",
            model_id="m",
            success=True,
            source="sdk",
            metadata=metadata,
        )

    dispatch.dispatch(row("b"))
    dispatch.dispatch(row("closed"))
    dispatch.dispatch(row(None))
    assert [r.metadata for r in got["b"]] == [{"essay": 1}]
    assert got["a"] == []
    assert dispatch.rows_unrouted == 2
