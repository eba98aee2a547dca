"""The write path of `insert_records`: binary COPY through a staging table on PostgreSQL, row INSERTs
on SQLite, and the same behaviour seen from outside on both (course_llm/db/copy.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import (
    BatchWriter,
    count_calls,
    create_session_factory,
    dispose_session_factory,
    fetch_request,
)
from course_llm.db.copy import UNNEST_MAX_ROWS, staged_rows, write_rows
from course_llm.db.errors import is_transient_db_error
from course_llm.db.writes import insert_records, insert_rows
from course_llm.recording.records import CallRecord, new_id
from course_llm.recording.rejects import LoudLog, Rejects
from course_llm.recording.sink import DatabaseSink

Factory = async_sessionmaker[AsyncSession]
Write = Callable[[Sequence[CallRecord]], Awaitable[int]]


@pytest.fixture(params=["session", "held"])
async def write(request: pytest.FixtureRequest, session_factory: Factory) -> AsyncIterator[Write]:
    """Both ways a batch is written: `insert_records` (a session per batch: COPY on PostgreSQL)
    and the logging writer's `BatchWriter` (one held connection: unnest for a small batch, COPY
    for a big one)."""
    if request.param == "session":
        yield lambda records: insert_records(session_factory, records)
        return
    batches = BatchWriter(session_factory)
    yield batches.write
    await batches.release()


def record(**overrides: Any) -> CallRecord:
    values: dict[str, Any] = {
        "request_id": "req-copy",
        "attempt": 1,
        "action": "course_structuring",
        "strategy": "quality",
        "served_strategy": "default",
        "provider": "anthropic",
        "model_id": "claude-sonnet",
        "success": True,
        "source": "proxy",
    }
    values.update(overrides)
    return CallRecord(**values)


def varied_batch() -> list[CallRecord]:
    """Rows that exercise every encoding: unicode, big metadata, nulls, offsets, microseconds."""
    return [
        record(
            attempt=1,
            created_at=datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
            tokens_in=1234,
            tokens_out=567,
            latency_ms=812.25,
            cost_usd=0.001234,
            status_code=429,
            error_class="RateLimitError",
            error_message='réessayez — 再試行 🚀 "quoted" \\ back\tslash\nnewline',
            stream=True,
            cache_hit=True,
            tenant_id="acme",
            operation="grade_essay",
            end_user="user-42",
            metadata={"tags": {"course": "bio101", "wk": 3}, "list": [1, 2.5, None, {"deep": True}]},
        ),
        record(
            attempt=2, created_at=datetime(2024, 12, 31, 23, 59, 59, 1, tzinfo=timezone(timedelta(hours=-7)))
        ),
        record(
            attempt=3,
            created_at=datetime(2025, 6, 1, 0, 0, 0, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            metadata={f"key-{i}": "ü" * 200 + str(i) for i in range(500)},  # about 100 kB of JSON
            error_message="x" * 5000,
        ),
    ]


async def test_a_batch_reads_back_equal_field_by_field(session_factory: Factory, write: Write) -> None:
    batch = varied_batch()

    assert await write(batch) == len(batch)

    stored = {row.id: row.as_dict() for row in await fetch_request(session_factory, "req-copy")}
    assert set(stored) == {r.id for r in batch}
    for written in batch:
        expected = written.as_dict()
        read = stored[written.id]
        assert read["created_at"] == expected.pop("created_at")  # the same instant
        assert read["created_at"].utcoffset() == timedelta(0)
        read.pop("created_at")
        assert read == expected


async def test_an_id_reads_back_as_the_same_uuid(session_factory: Factory, write: Write) -> None:
    row = record(id=uuid.UUID("01234567-89ab-7def-8123-456789abcdef"))

    await write([row])

    (stored,) = await fetch_request(session_factory, "req-copy")
    assert stored.id == row.id and isinstance(stored.id, uuid.UUID)


@pytest.mark.parametrize("size", [3, 2000])  # the held connection's unnest and COPY paths
async def test_the_same_batch_written_twice_is_inserted_once(
    session_factory: Factory, write: Write, size: int
) -> None:
    batch = [record(attempt=n) for n in range(1, size + 1)]

    assert await write(batch) == size
    assert await write(batch) == 0
    assert await write([*batch[:2], record(attempt=0)]) == 1
    assert await count_calls(session_factory) == size + 1


async def test_two_batches_in_one_outer_transaction_count_only_their_own_new_rows(
    rollback_session_factory: Factory,
) -> None:
    # The staging table empties at commit; inside a caller's transaction it must not carry rows over.
    first, second = [record(attempt=1), record(attempt=2)], [record(attempt=3)]

    assert await insert_records(rollback_session_factory, first) == 2
    assert await insert_records(rollback_session_factory, second) == 1
    assert await count_calls(rollback_session_factory) == 3


async def test_strings_longer_than_their_column_are_cut_to_its_length(
    session_factory: Factory, write: Write
) -> None:
    await write([record(tenant_id="t" * 500, end_user="ü" * 300)])

    (stored,) = await fetch_request(session_factory, "req-copy")
    assert stored.tenant_id == "t" * 128
    assert stored.end_user == "ü" * 256


async def test_a_row_the_database_refuses_is_set_aside_and_the_rest_of_the_batch_is_written(
    session_factory: Factory, tmp_path: Path
) -> None:
    rejects = Rejects(tmp_path / "rejected.jsonl", LoudLog())
    sink = DatabaseSink(
        session_factory, None, rejects, write_timeout_s=30, retry_attempts=1, where=str(tmp_path)
    )
    bad = record(attempt=2, request_id=None)  # NOT NULL; clean_record would have filled it in
    batch = [record(attempt=1), bad, record(attempt=3)]

    assert await sink.write(batch) is True
    await sink.release()

    assert await count_calls(session_factory) == 2
    assert sink.down_since is None
    refused = (tmp_path / "rejected.jsonl").read_text()
    assert str(bad.id) in refused and refused.count("\n") == 1


async def test_a_naive_created_at_is_refused_as_a_row_error(session_factory: Factory, write: Write) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime") as caught:
        await write([record(created_at=datetime(2025, 1, 1))])

    assert not is_transient_db_error(caught.value)
    assert await count_calls(session_factory) == 0


# ------------------------------------------------------------------------------------------------
# PostgreSQL only: the COPY itself
# ------------------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_postgresql_write_goes_through_the_staging_table(postgres_database_url: str) -> None:
    factory = create_session_factory(postgres_database_url, pool_size=1, max_overflow=0)
    try:
        await insert_records(factory, [record(request_id=str(new_id()))])
        async with factory() as session:  # the same pooled connection: temp tables are per connection
            staging = await session.scalar(sa.text("SELECT to_regclass('pg_temp.course_llm_calls_staging')"))
    finally:
        await dispose_session_factory(factory)
    assert staging is not None


@pytest.mark.postgres
async def test_write_rows_inside_a_callers_transaction_counts_only_each_calls_new_rows(
    postgres_database_url: str,
) -> None:
    # write_rows relies on its commit to empty the staging table; inside a caller's transaction
    # (a savepoint) an earlier call's rows must not be written or counted again, even when the
    # caller deleted them meanwhile.
    first = staged_rows([record(attempt=n) for n in range(1, UNNEST_MAX_ROWS + 2)])
    second = staged_rows([record(attempt=n) for n in range(1, UNNEST_MAX_ROWS + 4)])
    connection = await asyncpg.connect(
        postgres_database_url.replace("postgresql+asyncpg://", "postgresql://")
    )
    try:
        transaction = connection.transaction()
        await transaction.start()
        try:
            assert await write_rows(connection, first) == len(first)
            await connection.execute(
                "DELETE FROM llm_calls WHERE id = ANY($1::uuid[])", [r[0] for r in first]
            )
            assert await write_rows(connection, second) == len(second)
            assert await write_rows(connection, second) == 0
            stored = await connection.fetchval(
                "SELECT count(*) FROM llm_calls WHERE request_id = 'req-copy' AND id = ANY($1::uuid[])",
                [row[0] for row in first + second],
            )
        finally:
            await transaction.rollback()
        # Outside any transaction the commit empties the staging table after each batch.
        assert await write_rows(connection, first) == len(first)
        staged = await connection.fetchval("SELECT count(*) FROM course_llm_calls_staging")
        await connection.execute("DELETE FROM llm_calls WHERE id = ANY($1::uuid[])", [r[0] for r in first])
    finally:
        await connection.close()
    assert stored == len(second)  # the deleted rows stayed deleted
    assert staged == 0


def _terminate_when_copying(url: str, backend: int, stop: threading.Event) -> int | None:
    """In a thread of its own: wait until `backend` runs a COPY into the staging table, then kill
    it; return its pid (None when told to stop first).

    Its own thread and event loop, because the write being watched may stream its whole COPY
    without yielding to the test's loop. Only that backend: another connection to the shared test
    database may be copying too, and killing it instead let this test's COPY succeed.
    """
    return asyncio.run(_terminate_in_loop(url, backend, stop))


async def _terminate_in_loop(url: str, backend: int, stop: threading.Event) -> int | None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        while not stop.is_set():
            pid = await connection.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE 'COPY %course_llm_calls_staging%' AND pid = $1",
                backend,
            )
            if pid is not None:
                await connection.execute("SELECT pg_terminate_backend($1)", pid)
                return int(pid)
            await asyncio.sleep(0.002)
        return None
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_a_connection_lost_during_the_copy_is_a_transient_error_and_the_pool_recovers(
    postgres_database_url: str,
) -> None:
    factory = create_session_factory(postgres_database_url, pool_size=1, max_overflow=0, pool_pre_ping=False)
    request_id = str(new_id())
    batch = [
        record(request_id=request_id, attempt=n % 30_000, error_message="e" * 200) for n in range(300_000)
    ]
    async with factory() as session:  # the pool's one connection, which the write will use
        backend = int(await session.scalar(sa.text("SELECT pg_backend_pid()")))
    stop = threading.Event()
    killer = asyncio.ensure_future(
        asyncio.to_thread(_terminate_when_copying, postgres_database_url, backend, stop)
    )
    try:
        with pytest.raises(Exception) as caught:  # any class: how it is classified is the point
            await asyncio.wait_for(insert_records(factory, batch), 15)
        assert not isinstance(caught.value, TimeoutError), "the write hung once its connection was gone"
        assert await asyncio.wait_for(killer, 30) == backend

        assert is_transient_db_error(caught.value), repr(caught.value)
        # The dead connection was invalidated, not handed out again: the next write succeeds.
        assert await insert_records(factory, batch[:10]) == 10
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await killer
        async with factory() as session, session.begin():
            await session.execute(sa.text("DELETE FROM llm_calls WHERE request_id = :r"), {"r": request_id})
        await dispose_session_factory(factory)


async def test_metadata_keys_that_are_not_text_are_spelled_as_the_row_insert_path_spells_them(
    session_factory: Factory,
) -> None:
    metadata: dict[Any, Any] = {1e-7: "float key", 2: "int key", True: "bool key", "text": 1}
    by_copy = record(request_id="req-keys-copy", metadata=metadata)
    by_insert = record(request_id="req-keys-insert", metadata=metadata)

    await insert_records(session_factory, [by_copy])  # COPY on PostgreSQL
    await insert_rows(session_factory, [by_insert])  # row INSERTs everywhere

    (copied,) = await fetch_request(session_factory, "req-keys-copy")
    (inserted,) = await fetch_request(session_factory, "req-keys-insert")
    assert copied.as_dict()["metadata"] == inserted.as_dict()["metadata"]
    assert "1e-07" in copied.as_dict()["metadata"]  # json.dumps' spelling
