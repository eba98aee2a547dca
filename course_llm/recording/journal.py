"""The journal: a local append-only file that holds every row before its answer leaves the process.

Layout, for a journal prefix `P` (`COURSE_LLM_SPOOL_PATH`):
- `P.<owner>.journal`: one segment per RecordWriter, one JSON row per line. Its writer holds an
  exclusive `flock` on it for as long as it lives; the kernel drops that lock when the process
  dies, SIGKILL included. So a segment nobody holds is an orphan, and whichever process takes its
  lock next replays it. Several processes can share a directory, never a segment.
- `P.<owner>.journal.ckpt`: the byte offset up to which the segment's rows are in the database.
  It may lag behind (inserts are idempotent on the row id, so a replay from an older checkpoint
  writes nothing twice); it never runs ahead of what is in the database.
- `P` itself and `P.*.replay`: spool files of course_llm 0.1, replayed like orphans.

Durability: `append` is one `write(2)` of whole lines to an `O_APPEND` descriptor. Once it
returns, the row is in the kernel's page cache and survives the death of the process. With
`fsync=True` it also waits for the disk (`fdatasync`), so the row survives a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()

_SUFFIX = ".journal"
_CHECKPOINT = ".ckpt"
#: How much one read of a segment asks for; a batch is at most this many bytes of rows.
_READ_CHUNK = 1 << 20


def _segments(prefix: Path) -> list[Path]:
    """Every file under `prefix` that may hold rows: segments and 0.1 spool files, oldest first."""
    if not prefix.parent.is_dir():
        return []
    found = [
        *prefix.parent.glob(prefix.name + ".*" + _SUFFIX),
        *prefix.parent.glob(prefix.name + ".*.replay"),
    ]
    if prefix.is_file():
        found.append(prefix)
    return sorted(found, key=lambda p: (p.stat().st_mtime if p.exists() else 0.0, p.name))


def rejected_path(prefix: Path) -> Path:
    """Where rows the database refused for good are kept (shared by the writers of a prefix)."""
    return prefix.with_name(prefix.name + ".rejected.jsonl")


def _read_checkpoint(segment: Path, size: int) -> int:
    try:
        value = int((segment.with_name(segment.name + _CHECKPOINT)).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
    # A checkpoint beyond the end belongs to an older, truncated segment: start over (idempotent).
    return value if 0 <= value <= size else 0


def _write_checkpoint(segment: Path, offset: int) -> None:
    target = segment.with_name(segment.name + _CHECKPOINT)
    scratch = target.with_name(target.name + ".tmp")
    scratch.write_text(str(offset))
    os.replace(scratch, target)


def read_lines(
    fd: int, start: int, end: int, limit_bytes: int = _READ_CHUNK, max_lines: int | None = None
) -> tuple[list[bytes], int]:
    """Whole lines of `fd` from `start`, stopping before `end`, after about `limit_bytes` and after
    `max_lines` lines (blank ones included).

    Returns the lines (newline stripped, blank ones dropped) and the offset after the last whole
    line. A line with no newline before `end` is a torn write in progress or the tail of a crash:
    it is not returned (see `Segment.torn_tail`).
    """
    if start >= end:
        return [], start
    data = os.pread(fd, min(end - start, limit_bytes), start)
    cut = data.rfind(b"\n")
    if cut < 0:
        if len(data) < end - start:  # one line longer than a chunk: read it whole
            data = os.pread(fd, end - start, start)
            cut = data.rfind(b"\n")
        if cut < 0:
            return [], start
    pieces = data[:cut].split(b"\n")
    if max_lines is not None and len(pieces) > max_lines:
        pieces = pieces[: max(max_lines, 1)]
    read = sum(len(piece) for piece in pieces) + len(pieces)  # each piece and its newline
    return [line for line in pieces if line.strip()], start + read


@dataclass
class Segment:
    """A journal file held under this process's lock: our own, or an orphan being replayed."""

    path: Path
    fd: int
    checkpoint: int

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, end: int | None = None, *, max_lines: int | None = None) -> tuple[list[bytes], int]:
        """Whole lines after the checkpoint (at most `max_lines`), and the offset after them."""
        end = self.size if end is None else end
        return read_lines(self.fd, self.checkpoint, end, max_lines=max_lines)

    def torn_tail(self) -> bytes:
        """Bytes after the last newline (a write cut short by a crash or a full disk)."""
        size = self.size
        if self.checkpoint >= size:
            return b""
        tail = os.pread(self.fd, size - self.checkpoint, self.checkpoint)
        return tail[tail.rfind(b"\n") + 1 :]

    def commit(self, offset: int) -> None:
        """Record that every row before `offset` is in the database."""
        self.checkpoint = offset
        _write_checkpoint(self.path, offset)

    def remove(self) -> None:
        """Delete the segment and its checkpoint (every row is in the database), then unlock."""
        for path in (self.path, self.path.with_name(self.path.name + _CHECKPOINT)):
            path.unlink(missing_ok=True)
        os.close(self.fd)


def claim_orphans(prefix: Path, *, own: Path | None = None) -> list[Segment]:
    """Lock and return every segment under `prefix` that no live writer holds (never `own`, the
    caller's segment, even once it has closed it: a closed segment is left for the next process)."""
    claimed = []
    for path in _segments(prefix):
        if path == own:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue  # replayed and removed by another process meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer's own segment, or another process is replaying it
        if not path.exists():  # removed between our open and our lock
            os.close(fd)
            continue
        size = os.fstat(fd).st_size
        claimed.append(Segment(path, fd, _read_checkpoint(path, size)))
    return claimed


def _segment_path(prefix: Path, owner: str | None) -> Path:
    return prefix.with_name(f"{prefix.name}.{owner or uuid.uuid4().hex[:16]}{_SUFFIX}")


class Journal:
    """This writer's own segment: appends from any thread, reads for the database writer."""

    def __init__(self, prefix: Path, *, fsync: bool = False, owner: str | None = None) -> None:
        self.prefix = prefix
        self.fsync = fsync
        self.path = _segment_path(prefix, owner)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._end = 0  # offset after the last whole row we wrote
        self._torn = False  # a failed write may have left part of a line after _end
        self._checkpoint_fd: int | None = None
        self.checkpoint = 0

    @property
    def end(self) -> int:
        return self._end

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        # Created under a name orphan scans ignore, locked, then renamed: no other process can
        # ever take a live segment for an orphan.
        fresh = self.path.with_name(self.path.name + ".new")
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(fresh, self.path)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._end, self.checkpoint = fd, 0, 0
        return fd

    def check(self, min_free: int) -> None:
        """Open the segment if need be and check the disk has `min_free` bytes; OSError if not.

        Lets a writer find an unwritable journal before the first row, and notice when the disk
        came back while no row is being written."""
        with self._lock:
            fd = self._fd if self._fd is not None else self._open()
            stats = os.fstatvfs(fd)
        if stats.f_bavail * stats.f_frsize < min_free:
            raise OSError(errno.ENOSPC, f"No space left on device (under {min_free} bytes free)")

    def append(self, data: bytes) -> int:
        """Write whole lines; return the offset after them. Raises OSError (disk full, read-only)."""
        with self._lock:
            fd = self._fd if self._fd is not None else self._open()
            if self._torn:
                os.ftruncate(fd, self._end)  # drop a half-written line so no good row follows it
                self._torn = False
            view = memoryview(data)
            try:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fdatasync(fd)
            except OSError:
                self._torn = True
                raise
            self._end += len(data)
            return self._end

    def read(self, start: int, end: int | None = None) -> tuple[list[bytes], int]:
        """Rows of this segment from `start` up to `end` (default: all written so far)."""
        if self._fd is None:
            return [], start
        return read_lines(self._fd, start, self._end if end is None else end)

    def commit(self, offset: int, *, compact_above: int) -> None:
        """Every row before `offset` is in the database; truncate the segment once it is all in
        and larger than `compact_above` bytes, so it does not grow for ever."""
        with self._lock:
            if self._fd is None:
                return
            self.checkpoint = offset
            if offset >= self._end and self._end > compact_above and not self._torn:
                # Checkpoint 0 first: a crash between the two replays rows already written (harmless),
                # never skips rows appended after the truncation.
                self._write_checkpoint(0)
                os.ftruncate(self._fd, 0)
                self._end = self.checkpoint = 0
                return
            self._write_checkpoint(offset)

    def _write_checkpoint(self, offset: int) -> None:
        """Overwrite the checkpoint in place: one `pwrite` of a fixed-width number on a descriptor
        kept open, where a new file and a rename per batch cost more than the batch's INSERT
        (py-spy, issue 12). The width never changes, so the file always holds one whole number;
        whatever else a reader could find (a power loss mid-sector) reads as 0, a full replay,
        which inserts nothing twice."""
        if self._checkpoint_fd is None:
            target = self.path.with_name(self.path.name + _CHECKPOINT)
            self._checkpoint_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.pwrite(self._checkpoint_fd, b"%020d\n" % offset, 0)

    def close(self, *, all_written: bool) -> None:
        """Unlock; delete the segment when every row is in the database, else leave it for replay."""
        with self._lock:
            if self._fd is None:
                return
            if self._checkpoint_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._checkpoint_fd)
                self._checkpoint_fd = None
            if all_written and self.checkpoint >= self._end:
                for path in (self.path, self.path.with_name(self.path.name + _CHECKPOINT)):
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            # A row appended after this (a late event after shutdown) opens a new segment: the
            # closed one may hold rows left for the next process, which reopening it would erase.
            self.path = _segment_path(self.prefix, None)


def iter_segment_lines(path: Path) -> Iterator[bytes]:
    """Every whole row line of a journal file from its checkpoint (for inspection and tests)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = _read_checkpoint(path, size) if path.name.endswith(_SUFFIX) else 0
        while True:
            lines, offset = read_lines(fd, offset, size)
            if not lines:
                return
            yield from lines
    finally:
        os.close(fd)


def pending_files(prefix: Path) -> list[Path]:
    """Journal files under `prefix` (live or orphaned) — for status reports and tests."""
    return _segments(prefix)


#: Below this much free space the journal counts as full (a row is well under 64 KiB).
MIN_FREE_BYTES = 1 << 20


class JournalHealth:
    """Whether a writer's journal takes rows right now; the writer reports itself degraded if not.

    `report` is a rate-limited error log (a failing disk must be loud without flooding the log)."""

    def __init__(
        self, journal: Journal, report: Callable[..., Any], *, min_free: int = MIN_FREE_BYTES
    ) -> None:
        self._journal = journal
        self._report = report
        self._min_free = min_free
        self.error: str | None = None  # why the last append or check failed, until one succeeds
        self.failures = 0
        self.checked_at = 0.0

    def check(self) -> None:
        """Find an unwritable journal before the first row, and notice when it is writable again."""
        self.checked_at = time.monotonic()
        try:
            self._journal.check(self._min_free)
        except OSError as exc:
            self.failed(exc)
            return
        self.ok()

    def ok(self) -> None:
        if self.error is not None:
            log.warning("llm_calls_journal_recovered", journal=str(self._journal.path))
            self.error = None

    def failed(self, exc: OSError) -> None:
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}"
        self._report(
            "llm_calls_journal_unwritable",
            error=self.error,
            journal=str(self._journal.path),
            journal_failures=self.failures,
        )
