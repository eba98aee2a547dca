"""PostgreSQL's fast write path: binary COPY into a staging table, then one INSERT … SELECT.

Row INSERTs top out near 13,000 rows/s on the reference machine, and COPY alone cannot skip rows
that are already there (a replayed batch). So a batch goes, in one transaction:

1. `CREATE TEMP TABLE IF NOT EXISTS` the staging table: per connection, `ON COMMIT DELETE ROWS`,
   every text column unbounded so a too-long value reaches step 3 instead of failing the COPY;
2. binary `COPY` of plain tuples into it (asyncpg's `copy_records_to_table`);
3. `INSERT INTO llm_calls SELECT … FROM staging ON CONFLICT (id) DO NOTHING`. In a transaction of
   its own (the writer's `write_rows`) the commit empties the staging table; inside a caller's
   transaction (`copy_records`, or `write_rows` in a savepoint) the same statement deletes the
   staged rows, since the caller may write again before its commit. Casting text to `varchar(n)`
   cuts it, as `_clipped` does for row INSERTs.

The Python side costs one `attrgetter` call and one orjson encoding (of the metadata) per row:
the tuples are built straight from `CallRecord` attributes in the staging table's column order.
The error translation below uses the asyncpg adapter's `_handle_exception`, a private method of
SQLAlchemy 2.1 (pinned): check it when SQLAlchemy is upgraded (tests/test_copy_writes.py will).

The COPY bypasses SQLAlchemy, so its errors are translated here into the ones SQLAlchemy would raise
(`DBAPIError` with the SQLSTATE; `StatementError` for a value refused before sending), and a
connection lost during the COPY is invalidated and reported like any other disconnect: the
callers (course_llm/db/errors.py, the writer's sink) cannot tell the two paths apart.

A small batch (the writer's quarter second of traffic: a few rows) skips the staging table: one
prepared `INSERT … SELECT … FROM unnest($1::uuid[], …)` sends each column as one binary array, in
one round trip and one statement (so the aggregate triggers fire once), for about a fifth of the
CPU of the COPY's four statements. `write_rows` picks the path; course_llm/db/held.py calls it on
the connection it keeps between batches.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from course_llm.db.models import LLMCall
from course_llm.recording.records import CallRecord

__all__ = ["UNNEST_MAX_ROWS", "copy_records", "staged_rows", "statement_for", "translated", "write_rows"]

_TABLE: sa.Table = LLMCall.__table__  # type: ignore[assignment]  # declared as FromClause; it is a Table
_STAGING = "course_llm_calls_staging"
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]  # only compiles type names

#: Columns in staging order: every column but `metadata`, which is serialised per row, goes last.
_COLUMNS: tuple[sa.Column[Any], ...] = (
    *(column for column in _TABLE.columns if column.name != "metadata"),
    _TABLE.c.metadata,
)
_NAMES = tuple(column.name for column in _COLUMNS)
#: `CallRecord` attributes carry the column names, so one C-level call reads a row's values.
_PLAIN_VALUES = operator.attrgetter(*_NAMES[:-1])
#: SQLAlchemy's asyncpg dialect encodes JSONB from text; json.dumps is what it would have used, for
#: the rare metadata orjson refuses (an integer beyond 64 bits, a lone surrogate).
_to_json = json.JSONEncoder().encode
#: No OPT_NON_STR_KEYS: orjson spells a float key unlike json.dumps ("1e-7" / "1e-07"), so
#: metadata with a key that is not text goes to json.dumps, as the row-INSERT path writes it.
_ORJSON = 0


def _staging_type(column: sa.Column[Any]) -> str:
    if isinstance(column.type, sa.String):  # Text too; lengths are applied by the INSERT's casts
        return "text"
    return str(column.type.compile(dialect=_DIALECT))


def _target_expression(column: sa.Column[Any]) -> str:
    name = _DIALECT.identifier_preparer.quote(column.name)
    if isinstance(column.type, sa.String) and column.type.length:
        return f"CAST({name} AS VARCHAR({column.type.length}))"  # an explicit cast truncates
    return name


_QUOTED = ", ".join(_DIALECT.identifier_preparer.quote(name) for name in _NAMES)
_CREATE_STAGING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ("
    + ", ".join(f"{_DIALECT.identifier_preparer.quote(c.name)} {_staging_type(c)}" for c in _COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_COPY_STATEMENT = f"COPY {_STAGING} ({_QUOTED}) FROM STDIN (FORMAT binary)"
_TARGETS = ", ".join(_target_expression(c) for c in _COLUMNS)
_MOVE_STAGED = (
    f"WITH staged AS (DELETE FROM {_STAGING} RETURNING *) "
    f"INSERT INTO {_TABLE.name} ({_QUOTED}) "
    f"SELECT {_TARGETS} FROM staged ON CONFLICT (id) DO NOTHING"
)
#: `write_rows` owns its transaction, whose commit empties the staging table (ON COMMIT DELETE
#: ROWS): no DELETE needed, which is a sixth of a 5,000-row batch's time in the database.
_INSERT_STAGED = (
    f"INSERT INTO {_TABLE.name} ({_QUOTED}) SELECT {_TARGETS} FROM {_STAGING} ON CONFLICT (id) DO NOTHING"
)
_UNNEST_INSERT = (
    f"INSERT INTO {_TABLE.name} ({_QUOTED}) SELECT {_TARGETS} FROM unnest("
    + ", ".join(f"${n}::{_staging_type(c)}[]" for n, c in enumerate(_COLUMNS, start=1))
    + f") AS staged ({_QUOTED}) ON CONFLICT (id) DO NOTHING"
)
#: Up to this many rows a batch goes by `_UNNEST_INSERT`; a bigger one (a replay, a burst) by COPY,
#: which costs less per row (measured: unnest 38 µs/row at 500 rows, COPY 20 µs/row).
UNNEST_MAX_ROWS = 100


def staged_rows(records: Sequence[CallRecord]) -> list[tuple[Any, ...]]:
    """`records` as the tuples both paths send; a value refused before sending is a row error
    (`StatementError`), as SQLAlchemy would raise it."""
    try:
        return _tuples(records)
    except (TypeError, ValueError) as exc:
        raise sa_exc.StatementError(str(exc), _COPY_STATEMENT, None, exc) from exc


def _tuples(records: Sequence[CallRecord]) -> list[tuple[Any, ...]]:
    """Each record as a staging row; a naive `created_at` is refused as `UTCDateTime` refuses it
    (asyncpg would silently call it UTC)."""
    for record in records:
        created_at = record.created_at
        if created_at.tzinfo is None or created_at.utcoffset() is None:
            raise ValueError(f"naive datetime {created_at.isoformat()} for a UTC column; attach a timezone")
    try:
        # orjson costs a tenth of json.dumps (about 5 µs a row, the largest share otherwise).
        return [(*_PLAIN_VALUES(r), orjson.dumps(r.metadata, option=_ORJSON).decode()) for r in records]
    except TypeError:  # orjson.JSONEncodeError
        return [(*_PLAIN_VALUES(r), _json_text(r.metadata)) for r in records]


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_ORJSON).decode()
    except TypeError:
        return _to_json(value)


async def translated(
    connection: AsyncConnection, error: Exception, statement: str = _COPY_STATEMENT
) -> Exception:
    """`error` from asyncpg (raised on `connection`'s driver) as SQLAlchemy would have raised it
    from an `execute` of `statement`; a lost connection is invalidated."""
    raw = await connection.get_raw_connection()
    dialect = connection.dialect
    adapted: Any = raw.dbapi_connection
    if not isinstance(error, dialect.loaded_dbapi.Error):
        try:
            # The adapter's own translation (it also forgets a transaction the server dropped):
            # asyncpg's classes become the DB-API ones that carry `sqlstate`.
            adapted._handle_exception(error)
        except Exception as dbapi_error:  # it always raises
            error = dbapi_error
    if not isinstance(error, dialect.loaded_dbapi.Error):
        return sa_exc.StatementError(str(error), statement, None, error)
    lost = dialect.is_disconnect(error, adapted, None)
    if lost:
        await connection.invalidate(error)
    wrapped = sa_exc.DBAPIError.instance(
        statement, None, error, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect
    )
    return wrapped


async def copy_records(connection: AsyncConnection, records: Sequence[CallRecord]) -> int:
    """Write `records` through the staging table inside `connection`'s transaction; return how
    many were new (ids already in llm_calls are skipped)."""
    rows = staged_rows(records)
    # Through SQLAlchemy, so its adapter opens the transaction the COPY then runs in.
    await connection.exec_driver_sql(_CREATE_STAGING)
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    try:
        await driver.copy_records_to_table(_STAGING, records=rows, columns=_NAMES)
    except Exception as exc:
        raise await translated(connection, exc) from exc
    result = await connection.exec_driver_sql(_MOVE_STAGED)
    return int(result.rowcount)


def statement_for(rows: int) -> str:
    """The statement `write_rows` sends for a batch of `rows` rows (named in its errors)."""
    return _UNNEST_INSERT if rows <= UNNEST_MAX_ROWS else _COPY_STATEMENT


async def write_rows(driver: Any, rows: Sequence[tuple[Any, ...]]) -> int:
    """Write staged `rows` on a bare asyncpg connection (the writer's, outside any transaction;
    in a caller's, a savepoint); return how many were new. asyncpg's own errors propagate (see
    `translated`)."""
    if len(rows) <= UNNEST_MAX_ROWS:
        return _inserted(await driver.execute(_UNNEST_INSERT, *zip(*rows, strict=True)))
    # Inside a caller's transaction this is a savepoint, whose end does not empty the staging
    # table: the rows are then moved out of it (`_MOVE_STAGED`), as `copy_records` does.
    move = _MOVE_STAGED if driver.is_in_transaction() else _INSERT_STAGED
    async with driver.transaction():
        await driver.execute(_CREATE_STAGING)
        await driver.copy_records_to_table(_STAGING, records=rows, columns=_NAMES)
        return _inserted(await driver.execute(move))


def _inserted(status: str) -> int:
    """The row count of an `INSERT 0 <n>` command tag."""
    return int(status.rsplit(" ", 1)[-1])
