"""The background writer: batches, outages, the spool, replays exactly once, rejected rows.

A PostgreSQL outage is staged with a TCP forwarder between the writer and the server
(tests/tcp_proxy.py): `down()` resets every connection and refuses new ones, as a stopped server
does; `stall()` accepts and never answers, as a black-holed network does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from course_llm.db import count_calls, create_session_factory, dispose_session_factory, upgrade_database_async
from course_llm.recording.records import CallRecord
from course_llm.recording.writer import RecordWriter
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import Registry
from tests.providers import ProviderMock
from tests.tcp_proxy import TcpProxy


def row(i: int = 0, **overrides: Any) -> CallRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{i}",
        "attempt": 1,
        "action": "text_processing",
        "strategy": "default",
        "served_strategy": "default",
        "provider": "deepseek",
        "model_id": "deepseek-chat",
        "success": True,
        "source": "sdk",
        "tokens_in": 10,
        "tokens_out": 5,
    }
    values.update(overrides)
    return CallRecord(**values)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool.jsonl"


@pytest.fixture
async def pg_through_proxy(
    postgres_database_url: str, session_factory: Any
) -> AsyncIterator[tuple[TcpProxy, Any]]:
    """A session factory that reaches the test PostgreSQL database through a TcpProxy."""
    url = make_url(postgres_database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.up()
    factory = create_session_factory(url.set(port=proxy.port).render_as_string(hide_password=False))
    yield proxy, factory
    await dispose_session_factory(factory)
    await proxy.down()


# The PostgreSQL outage tests take `session_factory` only to get the emptied table; they pin the
# postgres parameter so they run once.
postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


async def test_rows_are_written_in_batches(session_factory: Any, spool: Path) -> None:
    writer = RecordWriter(session_factory, spool_path=spool, batch_size=100)
    for i in range(1050):
        writer.submit(row(i))
    await writer.aclose()
    assert await count_calls(session_factory) == 1050
    assert writer.rows_written == 1050
    assert not spool.exists()


@postgres_only
async def test_calls_succeed_during_an_outage_and_every_row_arrives_once_after(
    database_url: str,
    pg_through_proxy: tuple[TcpProxy, Any],
    session_factory: Any,
    registry: Registry,
    providers: ProviderMock,
    spool: Path,
) -> None:
    proxy, factory = pg_through_proxy
    writer = RecordWriter(factory, spool_path=spool, retry_attempts=2, probe_interval_s=0.05)
    async with ModelRouter(registry, writer=writer) as router:
        providers.script("deepseek-chat", 500)
        before = await router.complete("text_processing", "before")  # 2 rows, database up
        await router.flush()
        await proxy.down()  # the server goes away mid-run
        during = [await router.complete("text_processing", f"during {i}") for i in range(20)]
        await router.flush()
        assert not writer.database_available
        assert len(writer.spooled()) == 20
        await proxy.up()
        for _ in range(200):  # the writer probes and replays on its own
            await asyncio.sleep(0.02)
            if writer.database_available and not writer.spooled():
                break
        after = await router.complete("text_processing", "after")
    assert all(r.content == "answer from deepseek-chat" for r in [before, *during, after])
    assert await count_calls(session_factory) == 2 + 20 + 1
    assert writer.rows_replayed == 20
    assert writer.spooled() == []


@postgres_only
async def test_a_stalled_database_does_not_hold_up_the_call(
    database_url: str,
    pg_through_proxy: tuple[TcpProxy, Any],
    session_factory: Any,
    registry: Registry,
    providers: ProviderMock,
    spool: Path,
) -> None:
    proxy, factory = pg_through_proxy
    writer = RecordWriter(
        factory, spool_path=spool, write_timeout_s=0.5, retry_attempts=1, probe_interval_s=0.05
    )
    async with ModelRouter(registry, writer=writer) as router:
        await dispose_session_factory(factory)  # no pooled connection: the next write must connect
        await proxy.stall()
        response = await router.complete("text_processing", "x")
        await asyncio.sleep(0.05)  # let the success row reach the writer
        # The answer is back while its row is still waiting on the database.
        assert response.content == "answer from deepseek-chat"
        assert writer.pending + int(writer.busy) >= 1
        await proxy.up()
    assert await count_calls(session_factory) == 1


async def test_rows_wait_in_the_spool_until_the_schema_exists(tmp_path: Path, spool: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'late.db'}"
    factory = create_session_factory(url)
    writer = RecordWriter(factory, spool_path=spool, retry_attempts=1, probe_interval_s=0.05)
    try:
        for i in range(5):
            writer.submit(row(i))
        await writer.flush()
        assert len(writer.spooled()) == 5
        await upgrade_database_async(url)
        for _ in range(200):
            await asyncio.sleep(0.02)
            if not writer.spooled():
                break
        await writer.aclose()
        assert await count_calls(factory) == 5
    finally:
        await dispose_session_factory(factory)


async def test_a_spool_left_by_an_earlier_process_is_replayed_exactly_once(
    session_factory: Any, spool: Path
) -> None:
    rows = [row(i) for i in range(7)]
    spool.write_text("".join(__import__("json").dumps(r.to_json()) + "\n" for r in rows))
    duplicate = spool.with_name(spool.name + ".old.replay")  # a replay that crashed half-way
    duplicate.write_text(spool.read_text())
    writer = RecordWriter(session_factory, spool_path=spool)
    writer.submit(row(99))
    await writer.aclose()
    assert await count_calls(session_factory) == 8
    assert writer.spooled() == []


async def test_memory_stays_bounded_when_the_writer_cannot_keep_up(tmp_path: Path, spool: Path) -> None:
    # No running worker can drain (submitted outside any event loop): the queue caps at twice
    # max_queue and the rest goes to the spool, not to memory.
    factory = create_session_factory(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    writer = RecordWriter(factory, spool_path=spool, max_queue=100)
    thread = threading.Thread(target=lambda: [writer.submit(row(i)) for i in range(1000)])
    thread.start()
    thread.join()
    assert writer.pending == 200
    assert len(writer.spooled()) == 800
    await dispose_session_factory(factory)


async def test_rows_submitted_from_another_thread_are_written(session_factory: Any, spool: Path) -> None:
    writer = RecordWriter(session_factory, spool_path=spool)
    writer.submit(row(0))  # starts the worker on this loop
    thread = threading.Thread(target=lambda: [writer.submit(row(i)) for i in range(1, 50)])
    thread.start()
    thread.join()
    await writer.aclose()
    assert await count_calls(session_factory) == 50


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_row_the_database_refuses_is_set_aside_and_the_batch_survives(
    database_url: str, session_factory: Any, spool: Path
) -> None:
    writer = RecordWriter(session_factory, spool_path=spool)
    for i in range(4):
        writer.submit(row(i))
    writer.submit(row(4, attempt=70_000))  # out of range for the SMALLINT column on PostgreSQL
    await writer.aclose()
    assert await count_calls(session_factory) == 4
    assert writer.rows_rejected == 1
    rejected = spool.with_name(spool.name + ".rejected.jsonl").read_text()
    assert "req-4" in rejected and "_rejected_because" in rejected


def test_rows_left_in_memory_at_interpreter_exit_are_spooled(tmp_path: Path) -> None:
    """A script that never closes its router: the rows reach the spool (replayed at next start)."""
    import subprocess
    import sys
    import textwrap

    spool = tmp_path / "spool.jsonl"
    script = textwrap.dedent(
        f"""
        import asyncio
        from course_llm.db import create_session_factory
        from course_llm.recording.writer import RecordWriter
        from tests.test_writer import row

        async def main():
            writer = RecordWriter(create_session_factory("sqlite+aiosqlite:///{tmp_path}/x.db"),
                                  spool_path="{spool}", flush_interval_s=3600)
            for i in range(3):
                writer.submit(row(i))
            # no flush, no aclose: the process just ends

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    writer = RecordWriter(None, spool_path=spool)  # type: ignore[arg-type]  # only reads the spool
    assert sorted(r.request_id for r in writer.spooled()) == ["req-0", "req-1", "req-2"]


async def test_values_longer_than_their_column_are_cut_not_refused(session_factory: Any, spool: Path) -> None:
    from course_llm.db import fetch_request

    writer = RecordWriter(session_factory, spool_path=spool)
    writer.submit(row(1, tenant_id="t" * 500, end_user="u" * 1000, request_id="r" * 100))
    await writer.aclose()
    [stored] = await fetch_request(session_factory, "r" * 64)
    assert (stored.tenant_id, stored.end_user) == ("t" * 128, "u" * 256)
    assert writer.rows_rejected == 0


async def test_a_damaged_spool_line_is_set_aside_and_the_rest_replayed(
    session_factory: Any, spool: Path
) -> None:
    import json

    good = [row(i) for i in range(3)]
    lines = [json.dumps(r.to_json()) + "\n" for r in good]
    spool.write_text(lines[0] + '{"request_id": "half-writ' + "\n" + "".join(lines[1:]))
    writer = RecordWriter(session_factory, spool_path=spool)
    writer.submit(row(9))
    await writer.aclose()  # must not raise
    assert await count_calls(session_factory) == 4
    assert "half-writ" in spool.with_name(spool.name + ".rejected.jsonl").read_text()
    assert writer.spooled() == []
