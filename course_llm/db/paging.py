"""Pages of llm_calls rows, newest first: by page number (OFFSET, counted) or by keyset cursor.

`course_llm.reporting.paging` says what each way promises; this module holds the two queries.
Both order by `created_at DESC, id DESC` (`NEWEST_FIRST`) and read one row more than the page, so
they know whether another page follows (`next_cursor`) without counting. A numbered page's
`total` comes from the usage aggregates when its filters allow (`course_llm.db.rollup.count_rows`),
so it no longer costs a scan of every match.

The keyset condition is written as `created_at <= t AND (created_at < t OR id < i)` rather than
the row comparison `(created_at, id) < (t, i)`: both databases take the first term as a range on
any index that leads with `created_at` (or follows an equality filter, `ix_llm_calls_action_created_at`
and the like), so a page 100,000 rows deep reads about one page of index entries. Ties on
`created_at` are ordered by id (PostgreSQL sorts the few equal timestamps incrementally), so rows
written at the same instant are neither skipped nor repeated.

SQLite orders the stored text. Rows another writer stored in another form (`2025-03-01 12:00:00`
without the fraction, a dashed uuid) read back as the same datetime and uuid, but bound again
they become `…12:00:00.000000` and the hex id, which sort *after* the stored text, so the row
would follow its own cursor forever. On SQLite the page therefore also reads each row's stored
text (`type_coerce(..., String)`), the cursor carries it when it is not the canonical form, and the
next page compares text to text, in the very order of ORDER BY. As a last guard a page never
hands out the cursor it was given.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from course_llm.db.filtering import (
    COLUMNS,
    NEWEST_FIRST,
    ROW_COLUMNS,
    conditions,
    resolve_filters,
    row_dict,
)
from course_llm.db.rollup import count_rows
from course_llm.db.session import SessionFactory
from course_llm.reporting.paging import MAX_STORED_LENGTH, CallsPage, Cursor, encode_cursor
from course_llm.reporting.usage import UsageFilters

__all__ = ["list_calls", "list_calls_after"]


#: SQLite: the stored text of the keyset columns, read beside the row (not part of the row dict).
_STORED = (
    sa.type_coerce(COLUMNS.created_at, sa.String()).label("_stored_created_at"),
    sa.type_coerce(COLUMNS.id, sa.String()).label("_stored_id"),
)
_STORED_KEYS = tuple(column.name for column in _STORED)


def _columns(dialect: str) -> list[Any]:
    return [*ROW_COLUMNS, *_STORED] if dialect == "sqlite" else list(ROW_COLUMNS)


def _stored(row: Any) -> tuple[str, str] | None:
    """The row's stored keyset text when it differs from the form SQLAlchemy writes, else None."""
    if _STORED_KEYS[0] not in row:
        return None
    time_text, id_text = row[_STORED_KEYS[0]], row[_STORED_KEYS[1]]
    canonical = (row["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f"), row["id"].hex)
    if (time_text, id_text) == canonical:
        return None
    stored = (str(time_text), str(id_text))
    return stored if all(len(part) <= MAX_STORED_LENGTH for part in stored) else None


def _data(rows: list[Any], page_size: int) -> list[dict[str, Any]]:
    return [row_dict({k: v for k, v in row.items() if k not in _STORED_KEYS}) for row in rows[:page_size]]


def _next_cursor(rows: list[Any], page_size: int) -> str | None:
    """The cursor after the page's last row when a row follows it (one more was read), else None."""
    if len(rows) <= page_size:
        return None
    last = rows[page_size - 1]
    return encode_cursor(Cursor(created_at=last["created_at"], id=last["id"], stored=_stored(last)))


def _after(cursor: Cursor, dialect: str) -> list[sa.ColumnElement[bool]]:
    """Rows strictly after `cursor` in NEWEST_FIRST order (compared as stored text when it has one)."""
    created_at: sa.ColumnElement[Any] = COLUMNS.created_at
    row_id: sa.ColumnElement[Any] = COLUMNS.id
    at: Any = cursor.created_at
    before: Any = cursor.id
    if dialect == "sqlite" and cursor.stored is not None:
        created_at, row_id = (sa.type_coerce(column, sa.String()) for column in (created_at, row_id))
        at, before = cursor.stored
    return [created_at <= at, sa.or_(created_at < at, row_id < before)]


async def list_calls(
    session_factory: SessionFactory, filters: UsageFilters, page: int = 1, page_size: int = 50
) -> CallsPage:
    """Page `page` (from 1) of the matching rows, newest first, with the total count.

    A page past the end is empty (its `total` still counts every matching row). The page's
    `next_cursor` continues after it by keyset (`list_calls_after`).
    """
    if page < 1 or page_size < 1:
        raise ValueError(f"page and page_size must be >= 1, got {page}, {page_size}")
    async with session_factory() as session:
        filters = await resolve_filters(session, filters)
        statement = (
            sa.select(*_columns(session.get_bind().dialect.name))
            .where(*conditions(filters))
            .order_by(*NEWEST_FIRST)
            .limit(page_size + 1)
            .offset((page - 1) * page_size)
        )
        total = await count_rows(session, filters)
        rows = list((await session.execute(statement)).mappings().all())
    return CallsPage(
        data=_data(rows, page_size),
        total=total,
        page=page,
        page_size=page_size,
        next_cursor=_next_cursor(rows, page_size),
    )


async def list_calls_after(
    session_factory: SessionFactory, filters: UsageFilters, cursor: Cursor | None, page_size: int = 50
) -> CallsPage:
    """The `page_size` matching rows that follow `cursor` in newest-first order (None: the newest).

    Nothing is counted: `total` and `page` are None. `next_cursor` is None on the last page.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    async with session_factory() as session:
        filters = await resolve_filters(session, filters)
        dialect = session.get_bind().dialect.name
        where = _after(cursor, dialect) if cursor is not None else []
        statement = (
            sa.select(*_columns(dialect))
            .where(*conditions(filters), *where)
            .order_by(*NEWEST_FIRST)
            .limit(page_size + 1)
        )
        rows = list((await session.execute(statement)).mappings().all())
    next_cursor = _next_cursor(rows, page_size)
    if cursor is not None and next_cursor == encode_cursor(cursor):  # never a walk that cannot end
        next_cursor = None
    return CallsPage(
        data=_data(rows, page_size), total=None, page=None, page_size=page_size, next_cursor=next_cursor
    )
