"""Writing `CallRecord`s to llm_calls, and the two small reads the writer and its tests need.

The logging writer calls `insert_records` with a batch of rows. A batch may be written twice: the
writer replays its spool file after the database comes back, and it cannot know whether a batch that
failed mid-commit reached the table. So the INSERT skips rows whose id is already there
(`ON CONFLICT (id) DO NOTHING`, spelled the same on SQLite and PostgreSQL), and replaying a batch
leaves exactly one row per attempt. PostgreSQL is written by binary COPY into a staging table and
one INSERT … SELECT (course_llm/db/copy.py), SQLite by row INSERTs.

Reporting queries (filters, summaries, pages) live elsewhere; these reads are only what proves a
write happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from course_llm.db.copy import copy_records
from course_llm.db.models import LLMCall
from course_llm.db.session import SessionFactory
from course_llm.recording.records import CallRecord

__all__ = ["count_calls", "fetch_request", "insert_records", "insert_rows"]

_TABLE: sa.Table = LLMCall.__table__  # type: ignore[assignment]  # declared as FromClause; it is a Table


def _insert_ignoring_duplicates(dialect_name: str) -> Any:
    """`INSERT … ON CONFLICT (id) DO NOTHING RETURNING id` in the dialect's own construct.

    RETURNING makes the count of inserted rows exact on both databases: asyncpg reports no rowcount
    for a many-row INSERT, and skipped duplicates return nothing. SQLAlchemy sends a list of rows as
    batched multi-row INSERTs ("insertmanyvalues"), one round trip per ~thousand rows.
    """
    if dialect_name == "postgresql":
        pg_stmt = postgresql.insert(_TABLE).on_conflict_do_nothing(index_elements=["id"])
        return pg_stmt.returning(_TABLE.c.id)
    if dialect_name == "sqlite":
        lite_stmt = sqlite.insert(_TABLE).on_conflict_do_nothing(index_elements=["id"])
        return lite_stmt.returning(_TABLE.c.id)
    raise ValueError(f"unsupported database {dialect_name!r}: course_llm writes to sqlite or postgresql")


def _string_limits() -> dict[str, int]:
    table = LLMCall.__table__
    return {
        column.name: column.type.length
        for column in table.columns
        if isinstance(column.type, sa.String) and column.type.length
    }


def _clipped(row: dict[str, Any]) -> dict[str, Any]:
    """Cut strings to their column's length: PostgreSQL refuses longer ones (SQLite would keep
    them), and one long `user` or `tenant_id` from a client must not cost the row."""
    for name, limit in _STRING_LIMITS.items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > limit:
            row[name] = value[:limit]
    return row


async def insert_records(session_factory: SessionFactory, records: Sequence[CallRecord]) -> int:
    """Insert `records` in one transaction; return how many rows were new.

    Rows whose id is already in the table are skipped, so the same batch can be replayed safely.
    PostgreSQL gets them by binary COPY through a staging table (course_llm/db/copy.py), SQLite by
    row INSERTs. Errors propagate, as SQLAlchemy raises them on either path: the caller (the
    logging writer) decides whether to spool and retry.
    """
    if not records:
        return 0
    async with session_factory() as session, session.begin():
        connection = await session.connection()
        if connection.dialect.name == "postgresql":
            return await copy_records(connection, records)
        return await _insert_rows(session, records)


async def insert_rows(session_factory: SessionFactory, records: Sequence[CallRecord]) -> int:
    """`insert_records` by row INSERTs on any database: the path PostgreSQL took before COPY,
    kept for SQLite and as the benchmark's baseline (bench/bench_logging.py)."""
    if not records:
        return 0
    async with session_factory() as session, session.begin():
        return await _insert_rows(session, records)


async def _insert_rows(session: AsyncSession, records: Sequence[CallRecord]) -> int:
    rows = [_clipped(record.as_dict()) for record in records]
    statement = _insert_ignoring_duplicates(session.get_bind().dialect.name)
    result = await session.execute(statement, rows)
    return len(result.all())


async def count_calls(session_factory: SessionFactory) -> int:
    """How many rows llm_calls holds."""
    async with session_factory() as session:
        total = await session.scalar(sa.select(sa.func.count()).select_from(_TABLE))
        return int(total or 0)


async def fetch_request(session_factory: SessionFactory, request_id: str) -> list[LLMCall]:
    """Every attempt of one request, first attempt first."""
    statement = (
        sa.select(LLMCall)
        .where(LLMCall.request_id == request_id)
        .order_by(LLMCall.attempt, LLMCall.created_at, LLMCall.id)
    )
    async with session_factory() as session:
        return list((await session.scalars(statement)).all())


_STRING_LIMITS = _string_limits()
