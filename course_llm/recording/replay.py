"""Replaying the journals that no live writer holds: those of a crashed or killed process.

At its start (and again while any is left), a writer takes the lock of every orphaned segment
under its journal prefix (journal.py), writes the rows after the segment's checkpoint to the
database, moving the checkpoint as it goes, and deletes the segment once it is all in. While the
database is down the writer keeps the locks and goes on at the next probe; if it dies meanwhile,
the next process starts again from the last checkpoint. Rows are idempotent on their id, so a
replay that overlaps an earlier one writes nothing twice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from course_llm.recording.journal import Segment, claim_orphans, iter_segment_lines, pending_files
from course_llm.recording.records import CallRecord
from course_llm.recording.rejects import LoudLog, Rejects, decode

log = structlog.get_logger()

Write = Callable[[list[CallRecord]], Awaitable[bool]]


class OrphanReplay:
    """The orphaned segments one writer has claimed, and how far it got with them."""

    def __init__(self, prefix: Path, rejects: Rejects, loud: LoudLog, *, own: Path) -> None:
        self._prefix = prefix
        self._own = own
        self._rejects = rejects
        self._loud = loud
        self._segments: list[Segment] | None = None  # None: not scanned yet
        self.rows_replayed = 0

    @property
    def pending(self) -> bool:
        return bool(self._segments)

    async def run(self, write: Write) -> None:
        """Write every claimed segment's rows; stop (keeping the locks) when `write` says the
        database is down."""
        if self._segments is None:
            try:
                self._segments = claim_orphans(self._prefix, own=self._own)
            except OSError as exc:
                self._segments = []
                self._loud.error("llm_calls_journal_scan_failed", error=repr(exc))
        while self._segments:
            segment = self._segments[0]
            while True:
                lines, after = segment.read()
                if after == segment.checkpoint:
                    break
                records = self._rejects.parse(lines, segment.path)
                if records and not await write(records):
                    return
                self.rows_replayed += len(records)
                segment.commit(after)
            tail = segment.torn_tail()
            if tail.strip():  # the line the process was writing when it died
                self._rejects.damaged(tail, segment.path)
            segment.remove()
            self._segments.pop(0)
            log.info("llm_calls_journal_replayed", journal=str(segment.path))

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
