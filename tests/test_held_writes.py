"""The logging writer's held PostgreSQL connection (course_llm/db/held.py): kept between batches,
dropped whenever its state is in doubt, and given back when the writer stops.

What is written, and how rows read back, is proven for both write paths in test_copy_writes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import BatchWriter, count_calls, create_session_factory, dispose_session_factory
from course_llm.db.copy import UNNEST_MAX_ROWS
from course_llm.db.errors import is_transient_db_error
from course_llm.recording.writer import RecordWriter
from tests.rows import row
from tests.usage_seed import empty_usage

pytestmark = pytest.mark.postgres

Factory = async_sessionmaker[AsyncSession]


@pytest.fixture
async def factory(postgres_database_url: str) -> AsyncIterator[Factory]:
    made = create_session_factory(postgres_database_url)
    async with made() as session, session.begin():
        await empty_usage(session)
    yield made
    async with made() as session, session.begin():
        await empty_usage(session)
    await dispose_session_factory(made)


def checkouts(session_factory: Factory) -> list[int]:
    """A list that grows by one each time the engine's pool hands out a connection."""
    seen: list[int] = []
    sa.event.listen(session_factory.kw["bind"].sync_engine, "checkout", lambda *_: seen.append(1))
    return seen


async def backend_pids(session_factory: Factory) -> set[int]:
    """Backends of this database other than the one asking."""
    async with session_factory() as session:
        pids = await session.scalars(
            sa.text(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        return set(pids)


async def test_batches_share_one_checked_out_connection_until_release(factory: Factory) -> None:
    seen = checkouts(factory)
    batches = BatchWriter(factory)

    for n in range(5):
        assert await batches.write([row(n)]) == 1
    assert await batches.write([row(100 + n) for n in range(UNNEST_MAX_ROWS + 1)]) == UNNEST_MAX_ROWS + 1

    assert len(seen) == 1
    assert factory.kw["bind"].pool.checkedout() == 1
    await batches.release()
    assert factory.kw["bind"].pool.checkedout() == 0
    assert not batches.holds_connection
    assert await count_calls(factory) == 6 + UNNEST_MAX_ROWS


async def test_a_connection_killed_between_batches_is_a_transient_error_then_replaced(
    factory: Factory, postgres_database_url: str
) -> None:
    batches = BatchWriter(factory)
    await batches.write([row(1)])
    (held,) = await backend_pids(factory)
    admin = await asyncpg.connect(postgres_database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", held)
    finally:
        await admin.close()

    with pytest.raises(Exception) as caught:
        await batches.write([row(2)])
    assert is_transient_db_error(caught.value), repr(caught.value)
    assert not batches.holds_connection

    assert await batches.write([row(2)]) == 1  # a fresh connection from the pool
    await batches.release()
    assert await count_calls(factory) == 2


async def test_a_write_cut_by_a_timeout_drops_its_connection(factory: Factory) -> None:
    batches = BatchWriter(factory)
    big = [row(n, error_message="e" * 200) for n in range(50_000)]
    await batches.write([row(-1)])

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(batches.write(big), 0.05)

    assert not batches.holds_connection  # its protocol state was unknown: not reused
    assert await batches.write([row(-2)]) == 1
    await batches.release()


async def test_a_row_error_keeps_the_connection(factory: Factory) -> None:
    batches = BatchWriter(factory)
    await batches.write([row(1)])
    seen = checkouts(factory)

    with pytest.raises(Exception) as caught:
        await batches.write([row(2, request_id=None)])  # NOT NULL
    assert not is_transient_db_error(caught.value), repr(caught.value)

    assert await batches.write([row(3)]) == 1
    assert seen == [] and batches.holds_connection
    await batches.release()


def test_a_connection_of_a_finished_event_loop_is_not_used_on_the_next(postgres_database_url: str) -> None:
    factory = create_session_factory(postgres_database_url)
    batches = BatchWriter(factory)
    try:
        asyncio.run(batches.write([row(1, request_id="loop-one")]))  # never released
        assert asyncio.run(batches.write([row(2, request_id="loop-two")])) == 1
    finally:

        async def cleanup() -> None:
            await batches.release()
            async with factory() as session, session.begin():
                await session.execute(sa.text("DELETE FROM llm_calls WHERE request_id LIKE 'loop-%'"))
            await dispose_session_factory(factory)

        asyncio.run(cleanup())


async def test_the_record_writer_gives_its_connection_back_when_it_stops(
    factory: Factory, tmp_path: Path
) -> None:
    writer = RecordWriter(factory, spool_path=tmp_path / "spool")
    for n in range(3):
        writer.submit(row(n))
    await writer.flush()
    assert factory.kw["bind"].pool.checkedout() == 1  # held while the writer runs

    await writer.aclose()

    assert factory.kw["bind"].pool.checkedout() == 0
    assert await count_calls(factory) == 3


async def test_an_idle_writer_gives_its_connection_back(factory: Factory, tmp_path: Path) -> None:
    writer = RecordWriter(factory, spool_path=tmp_path / "spool", idle_exit_s=0.1)
    writer.submit(row(1))
    await writer.flush()
    task: Any = writer._task
    await asyncio.wait_for(task, 10)  # the idle exit

    assert factory.kw["bind"].pool.checkedout() == 0
    await writer.aclose()
