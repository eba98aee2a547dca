"""The logging writer's batches, on one PostgreSQL connection kept from one batch to the next.

`insert_records` opens a session per batch: a pool checkout, a pre-ping, BEGIN, the statements,
COMMIT and the check-in. At the proxy's usual traffic a batch holds a handful of rows, so that fixed
cost was most of what recording cost: 1.35 ms of CPU per batch, against 0.21 ms for the same rows
sent as one prepared statement on a connection already in hand (measured with 4-row batches on
the reference machine; issue 12 allows about 0.13 ms per request for all of recording).

So `BatchWriter` checks one connection out of the engine's pool and keeps it, and writes each batch
on the bare asyncpg connection outside any transaction (course_llm/db/copy.py `write_rows`: one
statement for a small batch, a COPY in a transaction for a big one). It never runs SQLAlchemy
statements on that connection, so the adapter's idea of its state cannot drift.

What the pool did for us, done here:
- errors reach the caller as SQLAlchemy raises them (`translated`), so the sink tells a lost
  database from a bad row exactly as before;
- a connection found dead, a write cut by the caller's timeout or cancellation, and a connection
  made on another event loop are all dropped, and the next batch checks out a fresh one (the
  pool's pre-ping tests it first);
- `release()` returns the connection: the writer's task calls it whenever it stops.

SQLite keeps the session per batch: its writes take the file lock, and a held connection would gain
little there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from course_llm.db.copy import staged_rows, statement_for, translated, write_rows
from course_llm.db.session import SessionFactory
from course_llm.db.writes import insert_records
from course_llm.recording.records import CallRecord

__all__ = ["BatchWriter"]


class BatchWriter:
    """Idempotent batch writes for one session factory's database (see the module docstring)."""

    def __init__(self, session_factory: SessionFactory) -> None:
        self._session_factory = session_factory
        bind = session_factory.kw.get("bind")
        self._engine: AsyncEngine | None = bind if isinstance(bind, AsyncEngine) else None
        self._connection: AsyncConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def holds_connection(self) -> bool:
        return self._connection is not None

    async def write(self, records: Sequence[CallRecord]) -> int:
        """Insert `records`, skipping ids already there; return how many rows were new."""
        if not records:
            return 0
        if self._engine is None or self._engine.dialect.name != "postgresql":
            return await insert_records(self._session_factory, records)
        rows = staged_rows(records)
        connection = await self._checked_out()
        try:
            raw = await connection.get_raw_connection()
            return await write_rows(raw.driver_connection, rows)
        except asyncio.CancelledError:  # a timeout cut the statement: the connection's state is unknown
            await self._drop(invalidate=True)
            raise
        except Exception as exc:
            error = await translated(connection, exc, statement_for(len(rows)))
            if connection.invalidated:
                await self._drop(invalidate=False)
            raise error from exc

    async def release(self) -> None:
        """Return the held connection to the pool (a no-op when none is held)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._loop is not asyncio.get_running_loop():
            _abandon(connection)
            return
        with contextlib.suppress(Exception):  # a dead connection is discarded by the pool
            await connection.close()

    async def _checked_out(self) -> AsyncConnection:
        loop = asyncio.get_running_loop()
        if self._connection is not None and self._loop is not loop:
            _abandon(self._connection)  # made on a loop that is gone: unusable here
            self._connection = None
        if self._connection is None:
            assert self._engine is not None
            self._connection = await self._engine.connect()
            self._loop = loop
        return self._connection

    async def _drop(self, *, invalidate: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            if invalidate and not connection.invalidated:
                await connection.invalidate()
            await connection.close()


def _abandon(connection: AsyncConnection) -> None:
    """Forget a connection of another event loop: close its socket without awaiting anything."""
    with contextlib.suppress(Exception):
        raw: Any = connection.sync_connection
        if raw is not None:
            raw.invalidate()
