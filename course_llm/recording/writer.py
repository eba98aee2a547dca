"""RecordWriter: every row journaled on the caller's path, then written to the database behind it.

`submit()` is what the hooks call before an answer leaves. It cleans the row, appends it to this
writer's journal segment (one `write(2)`, see journal.py) and hands it to a background task
through memory. The task inserts in batches (idempotent on the row id) and moves the journal's
checkpoint past what is in the database. Whatever happens to the process after `submit()`
returned, the next writer on the same journal prefix finds the rows after the checkpoint and
writes them: at its start, with no traffic needed.

Two modes keep memory bounded and nothing lost:
- *memory*: rows go from `submit()` to the task through a deque (the fast path);
- *journal*: when the database is down, or more than `max_queue` rows wait, the deque is dropped
  and the task reads the rows back from the journal from the checkpoint, at full speed, until it
  has caught up; then it returns to memory mode.

Failures are told apart: a lost or unusable database stops writing and is probed every
`probe_interval_s` (the rows wait in the journal); a row the database refuses for good goes to
`<prefix>.rejected.jsonl`. A journal that cannot be written (full or read-only disk) never fails a
call: the row is kept in memory, and the writer reports itself degraded until appends work again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from course_llm.recording.clean import clean_record
from course_llm.recording.journal import Journal, JournalHealth, rejected_path
from course_llm.recording.records import CallRecord
from course_llm.recording.rejects import LoudLog, Rejects, encode
from course_llm.recording.replay import OrphanReplay, waiting_rows
from course_llm.recording.secrets import mask_record
from course_llm.recording.sink import DatabaseSink

if TYPE_CHECKING:
    from course_llm.db import SessionFactory

log = structlog.get_logger()

#: Every live writer, so its segment is closed (and kept for replay when rows are not yet written)
#: when the interpreter exits without `aclose()`.
_live_writers: weakref.WeakSet[RecordWriter] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for writer in list(_live_writers):
        writer.close_journal()


class RecordWriter:
    """Journals rows on the caller's path; writes them to the database in the background."""

    def __init__(
        self,
        session_factory: SessionFactory | None,
        *,
        spool_path: str | Path = "course_llm.journal",
        fsync: bool = False,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        write_timeout_s: float = 10.0,
        retry_attempts: int = 3,
        probe_interval_s: float = 2.0,
        prepare: Callable[[], Awaitable[None]] | None = None,
        connect: Callable[[], SessionFactory] | None = None,
        idle_exit_s: float = 30.0,
        compact_above: int = 8 << 20,
    ) -> None:
        """`spool_path` is the journal prefix. `prepare` runs once before the first write (the proxy
        migrates there). `connect` builds the session factory in the task, so a bad database URL
        is an outage to report, not an exception on the call path."""
        self.spool_path = Path(spool_path)
        self._journal = Journal(self.spool_path, fsync=fsync)
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._probe_interval_s = probe_interval_s
        self._prepare = prepare
        self._idle_exit_s = idle_exit_s
        self._compact_above = compact_above
        # (row, journal offset after it); the offset is None when the journal could not take it.
        self._buffer: deque[tuple[CallRecord, int | None]] = deque()
        self._from_journal = False  # journal mode (see the module docstring)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sleeping = False  # the task waits for a first row (see _serve)
        self._last_probe = 0.0
        self._loud = LoudLog()
        self._rejects = Rejects(rejected_path(self.spool_path), self._loud)
        self._orphans = OrphanReplay(self.spool_path, self._rejects, self._loud, own=self._journal.path)
        self._sink = DatabaseSink(
            session_factory,
            connect,
            self._rejects,
            write_timeout_s=write_timeout_s,
            retry_attempts=retry_attempts,
            where=str(self.spool_path),
        )
        self.rows_spooled = 0  # rows read back from the journal (outage, overflow, orphans)
        self._rows_lost = 0  # rows neither the journal nor memory could hold
        self._health = JournalHealth(self._journal, self._loud.error)
        _live_writers.add(self)
        # A writer dropped without aclose() (its owner garbage-collected): unlock its segment, and
        # delete it when every row is in the database (else it is left for the next process).
        weakref.finalize(self, self._journal.close, all_written=True)

    # -- the caller's side: one write(2), no waiting ----------------------------------------------

    def submit(self, record: CallRecord) -> None:
        """Mask secrets, clean, journal; the database write happens later. Safe from any thread."""
        clean_record(mask_record(record))
        data = encode(record)
        with self._lock:
            offset: int | None
            try:
                offset = self._journal.append(data)
            except OSError as exc:
                offset = None
                self._health.failed(exc)
            else:
                self._health.ok()
            if offset is not None and self._from_journal:
                pass  # the task reads it back from the journal
            elif len(self._buffer) < self._max_queue:
                self._buffer.append((record, offset))
            elif offset is not None:
                self._switch_to_journal()
            else:
                self._rows_lost += 1
                self._loud.error(
                    "llm_call_rows_lost", rows_lost=self._rows_lost, reason="journal and memory full"
                )
        self._wake_task()

    def _switch_to_journal(self) -> None:
        """Read rows back from the journal from now on; memory keeps only what it alone holds."""
        self._from_journal = True
        self._buffer = deque(item for item in self._buffer if item[1] is None)

    def _wake_task(self) -> None:
        self._ensure_started()
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if self._sleeping or len(self._buffer) >= self._batch_size:
                wake.set()
        elif not loop.is_closed():
            # From another thread: wake the task, or start it again on its loop after an idle exit.
            loop.call_soon_threadsafe(self._ensure_started)
            loop.call_soon_threadsafe(wake.set)

    def start(self) -> None:
        """Start the background task now (prepare, replay earlier journals), if a loop runs."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop in this thread: flush() or the next submit from the loop starts it
        self._loop = loop
        self._wake = asyncio.Event()
        self._closing = False
        self._task = loop.create_task(self._run(), name="course_llm-record-writer")

    @property
    def pending(self) -> int:
        """Rows not yet in the database: in memory, or in the journal after the checkpoint."""
        unread = self._journal.end - self._journal.checkpoint if self._from_journal else 0
        return len(self._buffer) + int(unread > 0)

    @property
    def busy(self) -> bool:
        """A batch is being written right now."""
        return self._sink.busy

    @property
    def database_available(self) -> bool:
        return self._sink.down_since is None

    @property
    def disk_error(self) -> str | None:
        """Why the journal cannot be written right now (None when it can)."""
        return self._health.error

    @property
    def journal_failures(self) -> int:
        return self._health.failures

    @property
    def degraded(self) -> str | None:
        """Why this writer cannot keep its promise right now (None when all is well)."""
        if self.disk_error is not None:
            return f"journal unwritable: {self.disk_error}"
        return None

    # -- the task ------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._serve()
        finally:  # stopped for good, idle, or cancelled with its loop
            await self._sink.release()

    async def _serve(self) -> None:
        assert self._wake is not None
        self._health.check()
        if self._prepare is not None:
            prepare, self._prepare = self._prepare, None
            try:
                await prepare()
            except Exception as exc:  # rows still flow: they wait in the journal if writes fail
                log.error(
                    "llm_calls_prepare_failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc)
                )
        await self._orphans.run(self._sink.write)
        while True:
            if self._idle():
                # Nothing to write and nothing to watch: sleep until a row comes (no wake-up every
                # flush interval: an idle proxy must cost nothing), then gather a batch as usual.
                self._sleeping = True
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._idle_exit_s)
                except TimeoutError:
                    # Idle for long: give the connection back and stop. A row that came while the
                    # release awaited found this task alive and woke nobody, so look once more;
                    # nothing is awaited between that look and the return.
                    await self._sink.release()
                    if not self._has_work():
                        return  # the next submit() starts a new task
                finally:
                    self._sleeping = False
                if not self._closing:
                    self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._flush_interval_s)
            self._wake.clear()
            if (
                self._health.error is not None
                and time.monotonic() - self._health.checked_at >= self._probe_interval_s
            ):
                self._health.check()
            down = self._sink.down_since is not None
            if down and time.monotonic() - self._last_probe < self._probe_interval_s and not self._closing:
                continue
            await self._drain()
            if self._orphans.due(closing=self._closing):
                await self._orphans.run(self._sink.write)
            if self._closing and (self._sink.down_since is not None or not self._has_work()):
                return

    def _has_work(self) -> bool:
        return bool(self._buffer or self._from_journal or self._orphans.pending)

    def _idle(self) -> bool:
        """No rows to write, no outage to probe, no broken disk to re-check, not closing."""
        healthy = self._sink.down_since is None and self._health.error is None
        return healthy and not self._closing and not self._has_work()

    async def _drain(self) -> None:
        """Write what waits, in order, until done or the database is found down."""
        self._last_probe = time.monotonic()
        while True:
            if self._from_journal:
                start = self._journal.checkpoint
                lines, after = self._journal.read(start)
                if not lines:
                    with self._lock:
                        caught_up = after >= self._journal.end
                        if caught_up:
                            self._from_journal = False  # back to memory mode
                    self._commit(after, final=True)
                    if not caught_up and after == start:
                        return  # nothing whole to read yet
                    continue
                self.rows_spooled += len(lines)
                if not await self._sink.write(self._rejects.parse(lines, self._journal.path)):
                    return
                self._commit(after, final=False)
                continue
            if not self._buffer:
                return
            size = min(self._batch_size, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(size)]
            if not await self._sink.write([record for record, _ in batch]):
                with self._lock:  # rows only memory holds go back first in line
                    self._buffer.extendleft(reversed([item for item in batch if item[1] is None]))
                    self._switch_to_journal()
                return
            offsets = [offset for _, offset in batch if offset is not None]
            if offsets:
                self._commit(max(offsets), final=not self._buffer)

    def _commit(self, offset: int, *, final: bool) -> None:
        try:
            if offset > self._journal.checkpoint or final:
                self._journal.commit(max(offset, self._journal.checkpoint), compact_above=self._compact_above)
        except OSError as exc:  # a stale checkpoint only means a longer, idempotent replay
            self._loud.error("llm_calls_checkpoint_failed", error=repr(exc))

    # -- flushing and closing --------------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every row submitted so far is in the database, or waits in the journal for a
        database that is down."""
        self._ensure_started()
        while self._buffer or self._sink.busy or self._from_journal or self._orphans.pending:
            if self._sink.down_since is not None and not self._sink.busy:
                return  # the rows are safe in the journal; the probe writes them later
            if self._wake is not None:
                self._wake.set()
            if self._task is None or self._task.done():
                await self._drain()  # no task on this loop (e.g. rows submitted from a thread)
                await self._sink.release()
                return
            await asyncio.sleep(0.002)

    async def aclose(self) -> None:
        """Write what can be written, stop the task, close the journal (kept when rows wait in it)."""
        if self._sink.down_since is not None:
            self._last_probe = 0.0  # one more try now
        self._ensure_started()
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self.close_journal()
        if self.spooled():
            log.warning(
                "llm_calls_left_in_journal", journal=str(self.spool_path), replayed_at_next_start=True
            )

    def close_journal(self) -> None:
        """Close this writer's segment; rows that never reached it are journaled now if possible."""
        with self._lock:
            unjournaled = [record for record, offset in self._buffer if offset is None]
        for record in unjournaled:
            with contextlib.suppress(OSError):
                self._journal.append(encode(record))
        self._orphans.release()
        self._journal.close(all_written=not self._buffer and not self._from_journal)

    def spooled(self) -> list[CallRecord]:
        """Rows waiting on disk for the database: after each journal file's checkpoint."""
        return waiting_rows(self.spool_path)

    @property
    def rows_replayed(self) -> int:
        """Rows of earlier processes' journals written to the database."""
        return self._orphans.rows_replayed

    @property
    def rows_written(self) -> int:
        return self._sink.rows_written

    @property
    def write_failures(self) -> int:
        return self._sink.write_failures

    @property
    def rows_rejected(self) -> int:
        return self._rejects.rejected

    @property
    def rows_lost(self) -> int:
        return self._rows_lost + self._rejects.lost

    def stats(self) -> dict[str, Any]:
        names = """pending rows_written rows_spooled rows_replayed rows_rejected rows_lost write_failures
        journal_failures database_available degraded""".split()  # noqa: SIM905 (a word list reads better)
        return {name: getattr(self, name) for name in names}
