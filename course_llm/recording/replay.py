"""Replaying the journals that no live writer holds: those of a crashed or killed process.

At its start, every `RESCAN_S` while it writes rows, and once more when it closes, a writer takes
the lock of every orphaned segment under its journal prefix (journal.py), writes the rows after
the segment's checkpoint to the database, moving the checkpoint as it goes, and deletes the
segment once it is all in. While the database is down the writer keeps the locks and goes on at
the next probe; if it dies meanwhile, the next process starts again from the last checkpoint.
Rows are idempotent on their id, so a replay that overlaps an earlier one writes nothing twice.

The later scans are for processes that share the prefix (the workers of `serve --workers N`): a
worker killed while the others live leaves a segment that its replacement replays at start, but a
replacement can be slow to come, or never come (the supervisor stopping), and SIGTERM ends the
others: the last one to close takes what is left.

A journal can hold hundreds of thousands of rows, and the writer's loop also serves LLM calls. So
a segment is replayed in chunks of `chunk_rows` lines: each chunk is read and decoded in a worker
thread (the loop runs meanwhile), written as one batch, then checkpointed. No step holds the loop
for long, and at most one chunk of decoded rows is in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from course_llm.recording.journal import Segment, claim_orphans, iter_segment_lines, pending_files
from course_llm.recording.records import CallRecord
from course_llm.recording.rejects import LoudLog, Rejects, decode

log = structlog.get_logger()

Write = Callable[[list[CallRecord]], Awaitable[bool]]

#: Seconds between two looks for new orphans while a writer is busy (a look is one directory
#: listing and a lock attempt per segment).
RESCAN_S = 30.0
#: Rows per replayed batch: SQLAlchemy prepares a batch on the loop (~40 µs a row), so 500 rows
#: keep each step near 20 ms, well under the 50 ms a stall may last.
CHUNK_ROWS = 500


class OrphanReplay:
    """The orphaned segments one writer has claimed, and how far it got with them."""

    def __init__(
        self, prefix: Path, rejects: Rejects, loud: LoudLog, *, own: Path, chunk_rows: int = CHUNK_ROWS
    ) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
        self._prefix = prefix
        self._chunk_rows = chunk_rows
        self._own = own
        self._rejects = rejects
        self._loud = loud
        self._segments: list[Segment] | None = None  # None: not scanned yet
        self._scanned_at = 0.0
        self._scanned_at_close = False
        self.rows_replayed = 0

    @property
    def pending(self) -> bool:
        return bool(self._segments)

    def due(self, *, closing: bool) -> bool:
        """Whether `run` has work now: claimed segments left, or time to look for new orphans
        (every `RESCAN_S`, and once when the writer closes)."""
        if self._segments:
            return True
        if (closing and not self._scanned_at_close) or time.monotonic() - self._scanned_at >= RESCAN_S:
            self._scanned_at_close |= closing
            self._segments = None
            return True
        return False

    async def run(self, write: Write) -> None:
        """Write every claimed segment's rows; stop (keeping the locks) when `write` says the
        database is down."""
        if self._segments is None:
            self._scanned_at = time.monotonic()
            try:
                self._segments = claim_orphans(self._prefix, own=self._own)
            except OSError as exc:
                self._segments = []
                self._loud.error("llm_calls_journal_scan_failed", error=repr(exc))
        while self._segments:
            segment = self._segments[0]
            while True:
                records, after = await asyncio.to_thread(self._next_chunk, segment)
                if after == segment.checkpoint:
                    break
                if records and not await write(records):
                    return
                self.rows_replayed += len(records)
                segment.commit(after)
                del records  # one chunk of rows in memory at a time
            tail = segment.torn_tail()
            if tail.strip():  # the line the process was writing when it died
                self._rejects.damaged(tail, segment.path)
            segment.remove()
            self._segments.pop(0)
            log.info("llm_calls_journal_replayed", journal=str(segment.path))

    def _next_chunk(self, segment: Segment) -> tuple[list[CallRecord], int]:
        """The rows of the next chunk after the checkpoint, and the offset after it (worker thread)."""
        lines, after = segment.read(max_lines=self._chunk_rows)
        return self._rejects.parse(lines, segment.path), after

    def release(self) -> None:
        """Unlock what is left, for the next process to replay."""
        for segment in self._segments or []:
            with contextlib.suppress(OSError):
                os.close(segment.fd)
        self._segments = None


def waiting_rows(prefix: Path) -> list[CallRecord]:
    """Rows under `prefix` not yet in the database (after each file's checkpoint), live or orphaned."""
    rows: list[CallRecord] = []
    for path in pending_files(prefix):
        with contextlib.suppress(OSError):
            rows.extend(r for r in (decode(line) for line in iter_segment_lines(path)) if r is not None)
    return rows
