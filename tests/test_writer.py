"""The writer and its journal: batches, outages, crashes, replays exactly once, rejected rows.

A PostgreSQL outage is staged with a TCP forwarder between the writer and the server
(tests/tcp_proxy.py): `down()` resets every connection and refuses new ones, as a stopped server
does; `stall()` accepts and never answers, as a black-holed network does.
"""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import subprocess
import sys
import textwrap
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
from tests.rows import row
from tests.tcp_proxy import TcpProxy


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


def journal_rows(prefix: Path) -> list[CallRecord]:
    """Rows waiting in every journal file under `prefix` (after their checkpoints)."""
    return RecordWriter(None, spool_path=prefix).spooled()


async def wait_until(condition: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_rows_are_written_in_batches_and_the_journal_is_removed_at_close(
    session_factory: Any, spool: Path
) -> None:
    writer = RecordWriter(session_factory, spool_path=spool, batch_size=100)
    for i in range(1050):
        writer.submit(row(i))
    await writer.aclose()
    assert await count_calls(session_factory) == 1050
    assert writer.rows_written == 1050
    assert list(spool.parent.glob(spool.name + "*")) == []


async def test_a_row_is_in_the_journal_when_submit_returns(session_factory: Any, spool: Path) -> None:
    writer = RecordWriter(session_factory, spool_path=spool, flush_interval_s=3600)
    writer.submit(row(1))
    assert [r.request_id for r in journal_rows(spool)] == ["req-1"]  # before any await
    await writer.aclose()
    assert journal_rows(spool) == []


@postgres_only
async def test_calls_succeed_during_an_outage_and_every_row_arrives_once_after(
    registry: Registry,
    providers: ProviderMock,
    pg_through_proxy: tuple[TcpProxy, Any],
    session_factory: Any,
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
        assert len(journal_rows(spool)) == 20
        await proxy.up()
        await wait_until(lambda: writer.database_available and not journal_rows(spool))
        after = await router.complete("text_processing", "after")
    assert all(r.content == "answer from deepseek-chat" for r in [before, *during, after])
    assert await count_calls(session_factory) == 2 + 20 + 1
    assert writer.rows_spooled >= 20  # read back from the journal, not from memory
    assert journal_rows(spool) == []


@postgres_only
async def test_a_stalled_database_does_not_hold_up_the_call(
    registry: Registry,
    providers: ProviderMock,
    pg_through_proxy: tuple[TcpProxy, Any],
    session_factory: Any,
    spool: Path,
) -> None:
    proxy, factory = pg_through_proxy
    writer = RecordWriter(
        factory, spool_path=spool, write_timeout_s=0.5, retry_attempts=1, probe_interval_s=0.05
    )
    async with ModelRouter(registry, writer=writer) as router:
        await proxy.stall()  # connections hang: no error, no answer
        response = await asyncio.wait_for(router.complete("text_processing", "hi"), timeout=5)
        assert response.content == "answer from deepseek-chat"
        assert [r.request_id for r in journal_rows(spool)] == [response.request_id]
        await proxy.up()
    assert await count_calls(session_factory) == 1


async def test_rows_wait_in_the_journal_until_the_schema_exists(tmp_path: Path, spool: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    factory = create_session_factory(url)
    writer = RecordWriter(factory, spool_path=spool, retry_attempts=1, probe_interval_s=0.05)
    try:
        for i in range(5):
            writer.submit(row(i))
        await writer.flush()
        assert not writer.database_available
        assert len(journal_rows(spool)) == 5
        await upgrade_database_async(url)
        await wait_until(lambda: not journal_rows(spool))
        await writer.aclose()
        assert await count_calls(factory) == 5
    finally:
        await dispose_session_factory(factory)


def _killed_process(spool: Path, database: str, rows: int, extra: str = "") -> None:
    """A process that journals `rows` rows, then dies by SIGKILL before writing any of them."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from course_llm.db import create_session_factory
        from course_llm.recording.writer import RecordWriter
        from tests.rows import row

        async def main():
            writer = RecordWriter(create_session_factory("{database}"), spool_path="{spool}",
                                  flush_interval_s=3600, batch_size=10_000_000)
            for i in range({rows}):
                writer.submit(row(i))
            {extra}
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr


async def test_a_killed_process_s_rows_are_written_by_the_next_writer_at_its_start(
    database_url: str, session_factory: Any, spool: Path
) -> None:
    _killed_process(spool, database_url, 300)
    assert len(journal_rows(spool)) == 300
    writer = RecordWriter(session_factory, spool_path=spool)
    writer.start()  # no traffic: the start alone replays
    await wait_until(lambda: writer.rows_replayed == 300)
    await writer.aclose()
    assert await count_calls(session_factory) == 300
    assert journal_rows(spool) == []
    second = RecordWriter(session_factory, spool_path=spool)  # replayed once, not twice
    await second.aclose()
    assert second.rows_replayed == 0 and await count_calls(session_factory) == 300


async def test_replay_starts_at_the_checkpoint(tmp_path: Path, session_factory: Any, spool: Path) -> None:
    # A process wrote rows 0-99, then died; rows 0-49 had reached the database (checkpoint).
    _killed_process(
        spool,
        f"sqlite+aiosqlite:///{tmp_path / 'other.db'}",
        100,
        extra="writer._journal.commit(sum(len(l) for l in open(writer._journal.path, 'rb').readlines()[:50]),"
        " compact_above=1 << 40)",
    )
    writer = RecordWriter(session_factory, spool_path=spool)
    await writer.aclose()
    assert writer.rows_replayed == 50
    assert await count_calls(session_factory) == 50


async def test_a_live_writer_s_journal_is_not_taken_by_another(session_factory: Any, spool: Path) -> None:
    live = RecordWriter(session_factory, spool_path=spool, flush_interval_s=3600)
    live.submit(row(1))
    other = RecordWriter(session_factory, spool_path=spool)
    await other.aclose()
    assert other.rows_replayed == 0
    await live.aclose()
    assert await count_calls(session_factory) == 1


async def test_a_0_1_spool_file_is_replayed_exactly_once(session_factory: Any, spool: Path) -> None:
    rows = [row(i) for i in range(3)]
    spool.write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    duplicate = spool.with_name(spool.name + ".old.replay")  # a 0.1 replay that crashed half-way
    duplicate.write_text(spool.read_text())
    writer = RecordWriter(session_factory, spool_path=spool)
    writer.submit(row(99))
    await writer.aclose()
    assert await count_calls(session_factory) == 4
    assert journal_rows(spool) == [] and not spool.exists() and not duplicate.exists()


async def test_memory_stays_bounded_and_overflow_is_written_while_the_database_is_up(
    session_factory: Any, spool: Path
) -> None:
    writer = RecordWriter(session_factory, spool_path=spool, max_queue=100, flush_interval_s=0.01)
    writer.start()
    thread = threading.Thread(target=lambda: [writer.submit(row(i)) for i in range(3000)])
    thread.start()
    peak = 0
    while thread.is_alive():
        peak = max(peak, len(writer._buffer))
        await asyncio.sleep(0)
    thread.join()
    assert peak <= 100
    await wait_until(lambda: writer.rows_written == 3000)  # no aclose, no restart needed
    assert await count_calls(session_factory) == 3000
    await writer.aclose()


async def test_rows_submitted_from_another_thread_are_written(session_factory: Any, spool: Path) -> None:
    writer = RecordWriter(session_factory, spool_path=spool)
    writer.submit(row(0))  # starts the worker on this loop
    thread = threading.Thread(target=lambda: [writer.submit(row(i)) for i in range(1, 50)])
    thread.start()
    thread.join()
    await writer.aclose()
    assert await count_calls(session_factory) == 50


async def test_a_row_the_database_refuses_is_set_aside_and_the_batch_survives(
    session_factory: Any, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from course_llm.db import BatchWriter

    original = BatchWriter.write

    async def refuse_bad_rows(self: BatchWriter, records: Any) -> int:
        if any(r.request_id == "bad" for r in records):  # what a constraint violation looks like
            raise ValueError("value out of range for the column")
        return await original(self, records)

    monkeypatch.setattr(BatchWriter, "write", refuse_bad_rows)
    writer = RecordWriter(session_factory, spool_path=spool)
    for i in range(4):
        writer.submit(row(i))
    writer.submit(row(4, request_id="bad"))
    await writer.aclose()
    assert await count_calls(session_factory) == 4
    assert writer.rows_rejected == 1
    rejected = spool.with_name(spool.name + ".rejected.jsonl").read_text()
    assert '"bad"' in rejected and "value out of range" in rejected
    assert journal_rows(spool) == []


@postgres_only
async def test_a_connection_lost_while_writing_one_by_one_rejects_nothing(
    pg_through_proxy: tuple[TcpProxy, Any], session_factory: Any, spool: Path
) -> None:
    proxy, factory = pg_through_proxy
    writer = RecordWriter(factory, spool_path=spool, retry_attempts=1, probe_interval_s=0.05)
    from course_llm.db import BatchWriter

    calls = 0
    original = BatchWriter.write

    async def flaky(self: BatchWriter, records: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bad row in the batch")  # not transient: one by one
        if calls == 3:
            await proxy.down()  # the database goes away half way through the one-by-one writes
        return await original(self, records)

    BatchWriter.write = flaky  # type: ignore[method-assign]
    try:
        for i in range(5):
            writer.submit(row(i))
        await writer.flush()
        assert writer.rows_rejected == 0
        assert not writer.database_available
    finally:
        BatchWriter.write = original  # type: ignore[method-assign]
    await proxy.up()
    await wait_until(lambda: writer.database_available and not journal_rows(spool))
    await writer.aclose()
    assert await count_calls(session_factory) == 5
    assert not spool.with_name(spool.name + ".rejected.jsonl").exists()


async def test_values_longer_than_their_column_are_cut_not_refused(session_factory: Any, spool: Path) -> None:
    from course_llm.db import fetch_request

    writer = RecordWriter(session_factory, spool_path=spool)
    writer.submit(row(1, tenant_id="t" * 500, end_user="u" * 1000, request_id="r" * 100))
    await writer.aclose()
    [stored] = await fetch_request(session_factory, "r" * 64)
    assert len(stored.tenant_id or "") <= 128 and writer.rows_rejected == 0


async def test_a_torn_journal_tail_is_set_aside_and_the_rest_replayed(
    database_url: str, session_factory: Any, spool: Path
) -> None:
    # The process died in the middle of writing its last line.
    _killed_process(
        spool, database_url, 3, extra='os.write(writer._journal._fd, b\'{"request_id": "half-writ\')'
    )
    writer = RecordWriter(session_factory, spool_path=spool)
    await writer.aclose()  # must not raise
    assert await count_calls(session_factory) == 3
    assert "half-writ" in spool.with_name(spool.name + ".rejected.jsonl").read_text()
    assert journal_rows(spool) == []


async def test_a_full_disk_never_fails_a_call_is_loud_and_recovers(
    session_factory: Any, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import course_llm.recording.journal as journal

    real_write = journal.os.write
    full = True

    def write(fd: int, data: Any) -> int:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal.os, "write", write)
    writer = RecordWriter(session_factory, spool_path=spool)
    for i in range(5):
        writer.submit(row(i))  # must not raise
    assert writer.degraded is not None and "No space left" in writer.degraded
    assert writer.journal_failures == 5
    await writer.flush()
    assert await count_calls(session_factory) == 5  # the database was up: nothing lost
    full = False
    writer.submit(row(5))
    assert writer.degraded is None
    await writer.aclose()
    assert await count_calls(session_factory) == 6


async def test_an_unwritable_reject_file_does_not_stop_the_writer(
    database_url: str, session_factory: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "journal"
    _killed_process(spool, database_url, 2, extra="os.write(writer._journal._fd, b'garbage')")
    spool.with_name(spool.name + ".rejected.jsonl").mkdir()  # cannot be opened for appending
    writer = RecordWriter(session_factory, spool_path=spool)
    writer.submit(row(10))
    await writer.aclose()
    assert await count_calls(session_factory) == 3
    assert writer.rows_lost == 1  # the damaged line could not be kept: counted, not fatal


async def test_opening_a_router_writes_what_a_killed_process_left(
    registry: Registry, database_url: str, session_factory: Any, spool: Path
) -> None:
    _killed_process(spool, database_url, 7)
    writer = RecordWriter(session_factory, spool_path=spool)
    async with ModelRouter(registry, writer=writer):
        await wait_until(lambda: writer.rows_replayed == 7)  # no call made
    assert await count_calls(session_factory) == 7


async def test_a_half_written_line_does_not_swallow_the_next_row(
    session_factory: Any, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import course_llm.recording.journal as journal

    real_write = journal.os.write
    cut = True

    def write(fd: int, data: Any) -> int:
        nonlocal cut
        if cut:  # the disk fills up half way through the line
            cut = False
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal.os, "write", write)
    writer = RecordWriter(session_factory, spool_path=spool, flush_interval_s=3600)
    writer.submit(row(1))  # half of it reaches the file
    writer.submit(row(2))  # must not be glued to that half
    assert [r.request_id for r in journal_rows(spool)] == ["req-2"]
    await writer.aclose()
    assert await count_calls(session_factory) == 2  # row 1 was kept in memory and written
    assert writer.rows_rejected == 0


async def test_an_unwritable_journal_is_reported_before_any_row_and_recovers_by_itself(
    session_factory: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the journal's directory should be")
    writer = RecordWriter(session_factory, spool_path=blocker / "journal", probe_interval_s=0.05)
    writer.start()
    await wait_until(lambda: writer.degraded is not None)  # no row submitted yet
    assert (writer.degraded or "").startswith("journal unwritable: FileExistsError")
    blocker.unlink()
    blocker.mkdir()  # the operator fixes the volume
    await wait_until(lambda: writer.degraded is None)  # no row needed to notice
    writer.submit(row(1))
    await writer.aclose()
    assert await count_calls(session_factory) == 1
