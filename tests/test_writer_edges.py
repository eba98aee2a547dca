"""Edges of the writer's life found by a hostile review: a row that arrives while the writer is
stopping after an idle spell, a row that arrives after it was closed, and a database one migration
behind the code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from course_llm.db import count_calls, create_session_factory, dispose_session_factory, is_transient_db_error
from course_llm.recording.journal import Journal
from course_llm.recording.replay import waiting_rows
from course_llm.recording.writer import RecordWriter
from tests.rows import row


async def wait_until(condition: Any, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if await condition():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_row_submitted_while_an_idle_writer_gives_its_connection_back_is_written(
    session_factory: Any, tmp_path: Path
) -> None:
    writer = RecordWriter(session_factory, spool_path=tmp_path / "spool", idle_exit_s=0.05)
    writer.submit(row(1))
    await writer.flush()
    release = writer._sink.release
    arrived: list[int] = []

    async def slow_release() -> None:
        await asyncio.sleep(0.02)  # a remote database: the release takes a round trip
        if not arrived:  # a request finishes right then: the task is alive, nobody is asleep
            arrived.append(1)
            writer.submit(row(2))
        await release()

    writer._sink.release = slow_release  # type: ignore[method-assign]

    async def both_written() -> bool:
        return await count_calls(session_factory) == 2

    assert await wait_until(both_written), "the row waited for the next submit"
    await writer.aclose()


async def test_a_row_after_close_does_not_erase_the_rows_left_for_replay(tmp_path: Path) -> None:
    prefix = tmp_path / "spool"
    journal = Journal(prefix)
    kept = journal.path
    for n in range(3):
        journal.append(f'{{"n": {n}}}\n'.encode())
    journal.close(all_written=False)  # the database was down at shutdown: rows left for replay

    late = journal.path
    journal.append(b'{"n": "late"}\n')  # LiteLLM's late event, after the shutdown flush
    journal.close(all_written=False)

    assert kept.read_bytes() == b'{"n": 0}\n{"n": 1}\n{"n": 2}\n'
    assert late != kept and late.read_bytes() == b'{"n": "late"}\n'


async def test_late_rows_of_a_closed_writer_all_wait_for_the_next_process(tmp_path: Path) -> None:
    prefix = tmp_path / "spool"
    down = create_session_factory("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    writer = RecordWriter(down, spool_path=prefix, retry_attempts=1)
    try:
        for n in range(3):
            writer.submit(row(n, request_id=f"first-{n}"))
        await writer.aclose()
        writer.submit(row(9, request_id="late"))
        await writer.aclose()
    finally:
        await dispose_session_factory(down)

    assert sorted(r.request_id for r in waiting_rows(prefix)) == ["first-0", "first-1", "first-2", "late"]


async def test_a_missing_column_is_the_database_s_fault_not_the_rows(session_factory: Any) -> None:
    # A database one migration behind the code: every row would be refused for good otherwise.
    try:
        async with session_factory() as session:
            await session.execute(sa.text("SELECT column_from_a_later_migration FROM llm_calls"))
    except sa.exc.DBAPIError as exc:
        assert is_transient_db_error(exc), repr(exc)
    else:
        raise AssertionError("the column exists")
