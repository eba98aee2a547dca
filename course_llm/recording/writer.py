"""RecordWriter: gets CallRecords into the database without ever making an LLM call wait.

`submit()` is what the LiteLLM hooks call: it appends to an in-memory deque and wakes a background
task; no I/O. The task inserts in batches (idempotent: the row id is the key), retrying transient
database errors with backoff (tenacity). When the database stays unreachable, batches go to a local
JSONL spool file, so memory stays bounded and nothing is lost; the spool is replayed, exactly once
per row, as soon as the database answers again (and at the next start of any writer on that
spool). Rows the database rejects for good (not transient) go to `<spool>.rejected.jsonl`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from course_llm.recording.records import CallRecord

if TYPE_CHECKING:
    from course_llm.db import SessionFactory

log = structlog.get_logger()

#: Every live writer, so rows still in memory when the interpreter exits (a router never closed,
#: a cancelled task) are written to the spool instead of vanishing.
_live_writers: weakref.WeakSet[RecordWriter] = weakref.WeakSet()


@atexit.register
def _spool_leftovers_at_exit() -> None:
    for writer in list(_live_writers):
        writer.spool_pending()


class RecordWriter:
    """Batches rows into the database in the background; spools them to disk during an outage."""

    def __init__(
        self,
        session_factory: SessionFactory,
        *,
        spool_path: str | Path = "course_llm.spool.jsonl",
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.05,
        write_timeout_s: float = 10.0,
        retry_attempts: int = 3,
        probe_interval_s: float = 2.0,
        prepare: Callable[[], Awaitable[None]] | None = None,
        idle_exit_s: float = 30.0,
    ) -> None:
        """`prepare` runs once before the first write (the proxy migrates the database there)."""
        self._session_factory = session_factory
        self.spool_path = Path(spool_path)
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._write_timeout_s = write_timeout_s
        self._retry_attempts = retry_attempts
        self._probe_interval_s = probe_interval_s
        self._prepare = prepare
        self._idle_exit_s = idle_exit_s
        self._buffer: deque[CallRecord] = deque()
        self._spill_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._inflight: list[CallRecord] = []
        self._closing = False
        self._db_down_since: float | None = None
        self._last_probe = 0.0
        self.rows_written = 0
        self.rows_spooled = 0
        self.rows_replayed = 0
        self.rows_rejected = 0
        self.rows_lost = 0
        self.write_failures = 0
        _live_writers.add(self)

    # -- the hook side: never blocks ----------------------------------------------------------

    def submit(self, record: CallRecord) -> None:
        """Queue a row. Safe from any thread; no I/O unless the queue overflows during an outage."""
        if len(self._buffer) >= self._max_queue * 2:
            # The worker is stuck behind a dead database: keep memory bounded, keep the row.
            self._spool([record])
            return
        self._buffer.append(record)
        self._ensure_started()
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if len(self._buffer) >= self._batch_size:
                wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def start(self) -> None:
        """Start the background task now (it runs `prepare`, then replays any spool), if a loop runs."""
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
        return len(self._buffer)

    @property
    def busy(self) -> bool:
        """A batch is being written right now."""
        return self._busy

    @property
    def database_available(self) -> bool:
        return self._db_down_since is None

    # -- the worker ------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        if self._prepare is not None:
            prepare, self._prepare = self._prepare, None
            try:
                await prepare()
            except Exception as exc:  # rows still flow: they wait in the spool if writes fail
                log.error("llm_calls_prepare_failed", error=repr(exc))
        await self._replay_spool()
        idle_since = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._flush_interval_s)
            self._wake.clear()
            if self._buffer:
                idle_since = time.monotonic()
            await self._drain()
            if self._db_down_since is None and time.monotonic() - idle_since > self._idle_exit_s:
                return  # nothing to do: stop waking up; the next submit() starts a new task
            if (
                self._db_down_since is not None
                and time.monotonic() - self._last_probe >= self._probe_interval_s
            ):
                await self._replay_spool()
            if self._closing and not self._buffer:
                return

    async def _drain(self) -> None:
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
            self._busy = True
            self._inflight = batch  # spooled by spool_pending() if this task is cancelled mid-write
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                self.spool_pending()
                raise
            finally:
                self._inflight = []
                self._busy = False

    async def _write(self, batch: list[CallRecord]) -> None:
        from course_llm.db import insert_records, is_transient_db_error

        if self._db_down_since is not None:
            self._spool(batch)  # do not hammer a dead database; the probe replays the spool
            return
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._retry_attempts),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                retry=retry_if_exception(is_transient_db_error),
                reraise=True,
            ):
                with attempt:
                    await asyncio.wait_for(
                        insert_records(self._session_factory, batch), self._write_timeout_s
                    )
            self.rows_written += len(batch)
        except Exception as exc:
            self.write_failures += 1
            if is_transient_db_error(exc):
                self._db_down_since = time.monotonic()
                self._last_probe = time.monotonic()
                log.error(
                    "llm_calls_database_unavailable",
                    error=repr(exc),
                    rows=len(batch),
                    spool=str(self.spool_path),
                )
                self._spool(batch)
            else:
                await self._write_one_by_one(batch, exc)

    async def _write_one_by_one(self, batch: Sequence[CallRecord], error: Exception) -> None:
        """A batch the database refused: keep the good rows, set the bad ones aside with the reason."""
        from course_llm.db import insert_records

        log.error("llm_calls_batch_rejected", error=repr(error), rows=len(batch))
        for record in batch:
            try:
                await asyncio.wait_for(insert_records(self._session_factory, [record]), self._write_timeout_s)
                self.rows_written += 1
            except Exception as exc:
                self.rows_rejected += 1
                log.error("llm_call_row_rejected", error=repr(exc), row_id=str(record.id))
                self._append(self._rejected_path, [record], reason=repr(exc))

    # -- the spool -------------------------------------------------------------------------------

    @property
    def _rejected_path(self) -> Path:
        return self.spool_path.with_name(self.spool_path.name + ".rejected.jsonl")

    def _spool(self, records: Sequence[CallRecord]) -> None:
        if self._append(self.spool_path, records):
            self.rows_spooled += len(records)

    def _append(self, path: Path, records: Sequence[CallRecord], reason: str | None = None) -> bool:
        lines = []
        for record in records:
            data = record.to_json()
            if reason:
                data["_rejected_because"] = reason
            lines.append(json.dumps(data, default=str) + "\n")
        try:
            with self._spill_lock, _locked(path) as handle:
                handle.write("".join(lines))
            return True
        except OSError as exc:
            self.rows_lost += len(records)
            log.critical("llm_call_rows_lost", error=repr(exc), rows=len(records), path=str(path))
            return False

    async def _replay_spool(self) -> None:
        """Insert spooled rows (this writer's and any earlier process's) once the database answers."""
        from course_llm.db import insert_records, is_transient_db_error

        self._last_probe = time.monotonic()
        for part in _claim_spool(self.spool_path):
            try:
                records = list(self._read_part(part))
            except FileNotFoundError:
                continue  # another writer sharing this spool replayed it first
            for chunk in _chunks(records, self._batch_size):
                try:
                    await asyncio.wait_for(
                        insert_records(self._session_factory, chunk), self._write_timeout_s
                    )
                    self.rows_replayed += len(chunk)
                except Exception as exc:
                    if not is_transient_db_error(exc):
                        await self._write_one_by_one(chunk, exc)
                        continue
                    # Still down: keep the claimed part (replays are idempotent) for the next probe.
                    if self._db_down_since is None:
                        self._db_down_since = time.monotonic()
                    log.warning("llm_calls_spool_replay_failed", error=repr(exc), part=str(part))
                    return
            part.unlink(missing_ok=True)
            log.info("llm_calls_spool_replayed", part=str(part))
        if self._db_down_since is not None:
            log.info("llm_calls_database_back", down_s=round(time.monotonic() - self._db_down_since, 1))
        self._db_down_since = None

    def _read_part(self, part: Path) -> Iterator[CallRecord]:
        """The part's rows; a damaged line (a crash mid-write, a full disk) is set aside, not fatal."""
        for line, record in _parse_lines(part):
            if record is not None:
                yield record
                continue
            self.rows_rejected += 1
            log.error("llm_calls_spool_line_damaged", part=str(part), line=line[:200])
            with self._spill_lock, _locked(self._rejected_path) as handle:
                handle.write(line if line.endswith("\n") else line + "\n")

    # -- flushing and closing --------------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every row submitted so far is in the database or in the spool file."""
        self._ensure_started()
        while self._buffer or self._busy:
            if self._wake is not None:
                self._wake.set()
            if self._task is None or self._task.done():
                await self._drain()  # no worker on this loop (e.g. rows submitted from a thread)
                break
            await asyncio.sleep(0.002)

    async def aclose(self) -> None:
        """Flush, try once more to replay the spool, and stop the worker."""
        await self.flush()
        if self._db_down_since is not None or self.spool_path.exists():
            await self._replay_spool()
        self._closing = True
        if self._task is not None and self._wake is not None:
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self.spool_path.exists() or any(self.spool_path.parent.glob(self.spool_path.name + ".*.replay")):
            log.warning("llm_calls_left_in_spool", spool=str(self.spool_path), replayed_at_next_start=True)

    def spool_pending(self) -> int:
        """Move every row still in memory to the spool file, synchronously. Returns how many."""
        leftovers, self._inflight = list(self._inflight), []
        while self._buffer:
            leftovers.append(self._buffer.popleft())
        if leftovers:
            self._spool(leftovers)
            log.warning("llm_calls_spooled_at_exit", rows=len(leftovers), spool=str(self.spool_path))
        return len(leftovers)

    def spooled(self) -> list[CallRecord]:
        """Rows waiting on disk for the database (the live spool and claimed replay parts)."""
        parts = sorted(self.spool_path.parent.glob(self.spool_path.name + ".*.replay"))
        live = [self.spool_path] if self.spool_path.exists() else []
        return [record for part in [*parts, *live] for _, record in _parse_lines(part) if record is not None]

    def stats(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "rows_written": self.rows_written,
            "rows_spooled": self.rows_spooled,
            "rows_replayed": self.rows_replayed,
            "rows_rejected": self.rows_rejected,
            "rows_lost": self.rows_lost,
            "write_failures": self.write_failures,
            "database_available": self.database_available,
        }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    """Append to `path` under an exclusive flock, so several processes can share one spool."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with path.open("a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                # A replayer may have renamed the file while we waited for the lock: write to
                # the live path, never into a part that is being replayed.
                if not path.exists() or os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                    continue
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
                return
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _claim_spool(spool: Path) -> list[Path]:
    """Atomically move the live spool aside (appenders start a new one) and list parts to replay."""
    if spool.exists():
        with _locked(spool):
            claimed = spool.with_name(f"{spool.name}.{uuid.uuid4().hex}.replay")
            spool.rename(claimed)
    return sorted(spool.parent.glob(spool.name + ".*.replay"))


def _parse_lines(path: Path) -> Iterator[tuple[str, CallRecord | None]]:
    """Each non-blank line with its record, or None when the line is damaged."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield line, CallRecord.from_json(json.loads(line))
            except (ValueError, TypeError, KeyError):
                yield line, None


def _chunks(records: list[CallRecord], size: int) -> Iterator[list[CallRecord]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]
