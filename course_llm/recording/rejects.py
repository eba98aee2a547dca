"""Rows as journal lines, and what happens to a line that is no row or a row the database refuses.

A journal line is one CallRecord as compact JSON (`encode`/`decode`). A line that does not decode
(a write cut short by a crash) and a row the database refuses for good are set aside in
`<prefix>.rejected.jsonl` with the reason, counted, and logged: never dropped in silence, never
fatal. When even that file cannot be written (a full or read-only disk), the row is counted as
lost and logged, and the writer goes on.
"""

from __future__ import annotations

import fcntl
import json
import re
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from course_llm.recording.clean import LONG_NUMBER
from course_llm.recording.records import CallRecord

log = structlog.get_logger()

#: Seconds between two error logs of the same event (a failing disk would log once per row).
LOG_EVERY_S = 10.0


#: The standard encoder, for the rare row orjson refuses (an integer beyond 64 bits in metadata).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(record: CallRecord) -> bytes:
    """One journal line (with its newline): the row's `to_json()` form as compact JSON.

    orjson writes the dataclass directly (the id as text, the time in ISO form), a tenth of the
    cost of building a dict and encoding it; it runs on the request path, once per attempt. The
    row is cleaned first, so NaN, NUL and lone surrogates cannot occur.
    """
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError: an integer it cannot write, a non-text key
        return (_ENCODER.encode(record.to_json()) + "\n").encode()


#: A run of digits that may be an integer beyond 64 bits (clean.py's test, on the raw line), which
#: orjson would read as a float.
_LONG_NUMBER = re.compile(LONG_NUMBER.encode())


def decode(line: bytes) -> CallRecord | None:
    """The row of a journal line; None for a line that is no row (a write cut short).

    orjson reads an integer beyond 64 bits as a float, silently: a line that may hold one (written
    by `encode`'s fallback, or by an earlier release that kept such integers) is read by the
    standard parser, as is anything orjson refuses (NaN, the lines of a 0.1 spool file).
    """
    try:
        if _LONG_NUMBER.search(line) is not None:
            data = json.loads(line)
        else:
            try:
                data = orjson.loads(line)
            except ValueError:  # orjson.JSONDecodeError
                data = json.loads(line)
        return CallRecord.from_json(data)
    except (ValueError, TypeError, KeyError):
        return None


class LoudLog:
    """Error logs rate-limited per event, so a failing disk is loud without flooding the log."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def error(self, event: str, **context: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(event, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last[event] = now
            log.error(event, **context)


class Rejects:
    """The `<prefix>.rejected.jsonl` file, shared (under flock) by every writer of a prefix."""

    def __init__(self, path: Path, loud: LoudLog) -> None:
        self.path = path
        self._loud = loud
        self.rejected = 0  # rows and damaged lines set aside
        self.lost = 0  # ... that could not even be set aside

    def parse(self, lines: list[bytes], source: Path) -> list[CallRecord]:
        """The rows of `lines`; a line that is no row is set aside."""
        records = []
        for line in lines:
            record = decode(line)
            if record is None:
                self.damaged(line, source)
            else:
                records.append(record)
        return records

    def damaged(self, line: bytes, source: Path) -> None:
        self.rejected += 1
        log.error(
            "llm_calls_journal_line_damaged", journal=str(source), line=line[:200].decode(errors="replace")
        )
        self._append([{"_damaged_line": line.decode(errors="replace")}], reason="damaged journal line")

    def refused(self, record: CallRecord, error: BaseException) -> None:
        self.rejected += 1
        log.error("llm_call_row_rejected", error=repr(error)[:500], row_id=str(record.id))
        self._append([record.to_json()], reason=repr(error)[:2000])

    def _append(self, entries: list[dict[str, Any]], *, reason: str) -> None:
        text = "".join(
            json.dumps({**entry, "_rejected_because": reason}, default=str) + "\n" for entry in entries
        )
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                handle.write(text)
        except OSError as exc:
            self.lost += len(entries)
            self._loud.error("llm_call_rows_lost", error=repr(exc), rows_lost=self.lost, path=str(self.path))
