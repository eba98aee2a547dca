"""Writing batches of rows to the database, and knowing when the database is down.

`DatabaseSink.write(batch)` answers one question for the writer: did the rows get in? It retries
transient errors with backoff (tenacity); a database that stays away, or that cannot even be
reached (a bad or unsupported URL: `connect` fails), is *down*, and the rows stay in the journal.
A batch the database refuses for other reasons is written row by row: the good rows go in, the
bad ones are set aside (rejects.py). A connection lost during that is the database again, not the
rows: nothing is rejected for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from course_llm.recording.records import CallRecord
from course_llm.recording.rejects import Rejects

if TYPE_CHECKING:
    from course_llm.db import BatchWriter, SessionFactory

log = structlog.get_logger()


class DatabaseSink:
    """Inserts batches; tracks whether the database is down."""

    def __init__(
        self,
        session_factory: SessionFactory | None,
        connect: Callable[[], SessionFactory] | None,
        rejects: Rejects,
        *,
        write_timeout_s: float,
        retry_attempts: int,
        where: str,
    ) -> None:
        self._session_factory = session_factory
        self._batches: BatchWriter | None = None
        self._connect = connect
        self._rejects = rejects
        self._write_timeout_s = write_timeout_s
        self._retry_attempts = retry_attempts
        self._where = where  # the journal, named in the outage log
        self.down_since: float | None = None
        self.busy = False
        self.rows_written = 0
        self.write_failures = 0

    def _batch_writer(self) -> BatchWriter | None:
        from course_llm.db import BatchWriter

        if self._session_factory is None and self._connect is not None:
            try:
                self._session_factory = self._connect()
            except Exception as exc:
                self._down(exc)
        if self._batches is None and self._session_factory is not None:
            self._batches = BatchWriter(self._session_factory)
        return self._batches

    async def release(self) -> None:
        """Give back the connection kept between batches (the writer's task is stopping)."""
        if self._batches is not None:
            await self._batches.release()

    async def write(self, batch: Sequence[CallRecord]) -> bool:
        """Insert `batch`; False when the database is down (the rows were not all written)."""
        from course_llm.db import is_transient_db_error

        batches = self._batch_writer()
        if batches is None:
            self._down(RuntimeError("no database to write to"))
            return False
        self.busy = True
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._retry_attempts),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                retry=retry_if_exception(is_transient_db_error),
                reraise=True,
            ):
                with attempt:
                    await asyncio.wait_for(batches.write(batch), self._write_timeout_s)
        except Exception as exc:
            self.write_failures += 1
            if is_transient_db_error(exc):
                self._down(exc, rows=len(batch))
                return False
            return await self._write_one_by_one(batches, batch, exc)
        finally:
            self.busy = False
        self.rows_written += len(batch)
        self._up()
        return True

    async def _write_one_by_one(
        self, batches: BatchWriter, batch: Sequence[CallRecord], error: Exception
    ) -> bool:
        """A batch the database refused: keep the good rows, set the bad ones aside with the reason.

        A connection lost half way means the database, not the rows: stop, and let the batch be
        written again from the journal (inserts are idempotent)."""
        from course_llm.db import is_transient_db_error

        log.error("llm_calls_batch_rejected", error=repr(error)[:500], rows=len(batch))
        for record in batch:
            try:
                await asyncio.wait_for(batches.write([record]), self._write_timeout_s)
                self.rows_written += 1
            except Exception as exc:
                if is_transient_db_error(exc):
                    self._down(exc, rows=len(batch))
                    return False
                self._rejects.refused(record, exc)
        self._up()
        return True

    def _down(self, exc: BaseException, rows: int | None = None) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error(
                "llm_calls_database_unavailable",
                error=str(exc).splitlines()[0][:500] if str(exc) else repr(exc),
                batch_rows=rows,  # the batch that failed; more may wait in the journal
                rows_wait_in=self._where,
            )

    def _up(self) -> None:
        if self.down_since is not None:
            log.info("llm_calls_database_back", down_s=round(time.monotonic() - self.down_since, 1))
            self.down_since = None
