"""Pages of llm_calls rows: the `CallsPage` result and the keyset cursor that `GET /usage/calls` hands out.

Two ways through the rows, newest first (`created_at` descending, then `id` descending):

- by `page` number (OFFSET): the page carries `total` (a `count(*)` of every matching row) and
  `total_pages`. Deep pages cost as much as all the rows before them, and the count scans every
  matching row, so neither stays fast on a table of millions.
- by `cursor` (keyset): a cursor names the last row of a page, and the next page is the rows
  strictly after it in that order (`(created_at, id) < (cursor's created_at, cursor's id)`), read
  through the `created_at` indexes whatever the depth. A cursor page does not count: its `total`,
  `page` and `total_pages` are null, so every page costs the same. An empty cursor starts at the
  newest row; the total, when wanted, is on page 1 by number, which also hands out a cursor.

Every page carries `next_cursor`, the cursor of its last row, or null when no row follows.

A cursor is opaque to clients: URL-safe base64 (no padding) of `<created_at ISO 8601 UTC>|<id hex>`,
followed on SQLite, when the row's stored text is not the form SQLAlchemy writes (another writer
stored `2025-03-01 12:00:00`, or a dashed id), by `|<stored time>|<stored id>` (each URL-safe
base64): SQLite orders the stored text, so the next page must compare with that text, or a
cursor bound in the canonical form would sort after its own row and hand it out again.
It is still untrusted input, so `parse_cursor` checks its length, alphabet, shape, time and id and
refuses anything else with a `UsageQueryError` naming the `cursor` field (a 400, or one CLI line).
A forged cursor that passes is just a position in the order, and its values reach the database as
bound parameters only. No SQLAlchemy here, like `course_llm.reporting.usage`.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from course_llm.errors import UsageQueryError

__all__ = ["MAX_CURSOR_LENGTH", "MAX_STORED_LENGTH", "CallsPage", "Cursor", "encode_cursor", "parse_cursor"]

#: A real cursor is 72 characters (26-character time with microseconds, `|`, 32 hex digits).
MAX_CURSOR_LENGTH = 400
#: The longest stored text a cursor carries (longer: the cursor cannot name its row exactly).
MAX_STORED_LENGTH = 64
_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$", re.ASCII)
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?\+00:00$", re.ASCII)
_HEX_ID = re.compile(r"^[0-9a-f]{32}$", re.ASCII)
_INVALID = "is not a cursor this API handed out; drop it to start from the newest row"


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """The position after a row in newest-first order: that row's `created_at` (UTC) and `id`."""

    created_at: datetime
    id: uuid.UUID
    #: SQLite only: the row's stored (created_at, id) text, when not the canonical form.
    stored: tuple[str, str] | None = None


def encode_cursor(cursor: Cursor) -> str:
    """`cursor` as the opaque URL-safe string `GET /usage/calls` hands out as `next_cursor`."""
    text = f"{cursor.created_at.isoformat()}|{cursor.id.hex}"
    if cursor.stored is not None:
        text += "".join("|" + _b64(part) for part in cursor.stored)
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def _unb64(text: str) -> str:
    if not _ALPHABET.match(text):
        raise ValueError(text)
    decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    if len(decoded) > MAX_STORED_LENGTH or not decoded.isprintable():
        raise ValueError(text)
    return decoded


def parse_cursor(raw: str) -> Cursor | None:
    """The `Cursor` that `raw` encodes; None for a blank one (start at the newest row).

    Anything `encode_cursor` could not have made is a `UsageQueryError` for `cursor`.
    """
    text = raw.strip()
    if not text:
        return None
    if len(text) > MAX_CURSOR_LENGTH or not _ALPHABET.match(text):
        raise UsageQueryError("cursor", _INVALID)
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise UsageQueryError("cursor", _INVALID) from None
    parts = decoded.split("|")
    if len(parts) not in (2, 4):
        raise UsageQueryError("cursor", _INVALID)
    moment, hex_id = parts[:2]
    if not _TIME.match(moment) or not _HEX_ID.match(hex_id):
        raise UsageQueryError("cursor", _INVALID)
    stored: tuple[str, str] | None = None
    if len(parts) == 4:
        try:
            stored = (_unb64(parts[2]), _unb64(parts[3]))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise UsageQueryError("cursor", _INVALID) from None
    try:
        created_at = datetime.fromisoformat(moment)
    except ValueError:  # the shape matched, the date did not exist (2025-02-30)
        raise UsageQueryError("cursor", _INVALID) from None
    if created_at.utcoffset() != timedelta(0):
        raise UsageQueryError("cursor", _INVALID)
    return Cursor(created_at=created_at, id=uuid.UUID(hex=hex_id), stored=stored)


@dataclass(frozen=True, slots=True)
class CallsPage:
    """One page of llm_calls rows, newest first: the body of `GET /usage/calls`.

    `total` and `page` are None on a page read by cursor (nothing was counted, see above).
    """

    data: list[dict[str, Any]]
    total: int | None
    page: int | None
    page_size: int
    next_cursor: str | None = None

    @property
    def total_pages(self) -> int | None:
        """How many pages `total` rows fill (0 when no row matches; None when not counted)."""
        return None if self.total is None else math.ceil(self.total / self.page_size)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "total": self.total,
            "page": self.page,
            "page_size": self.page_size,
            "total_pages": self.total_pages,
            "next_cursor": self.next_cursor,
        }
