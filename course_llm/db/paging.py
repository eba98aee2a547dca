"""Pages of llm_calls rows, newest first: by page number (OFFSET, counted) or by keyset cursor.

`course_llm.reporting.paging` says what each way promises; this module holds the two queries.
Both order by `created_at DESC, id DESC` (`NEWEST_FIRST`) and read one row more than the page, so
they know whether another page follows (`next_cursor`) without counting.

The keyset condition is written as `created_at <= t AND (created_at < t OR id < i)` rather than
the row comparison `(created_at, id) < (t, i)`: both databases take the first term as a range on
any index that leads with `created_at` (or follows an equality filter, `ix_llm_calls_action_created_at`
and the like), so a page 100,000 rows deep reads about one page of index entries. Ties on
`created_at` are ordered by id (PostgreSQL sorts the few equal timestamps incrementally), so rows
written at the same instant are neither skipped nor repeated.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from course_llm.db.filtering import (
    COLUMNS,
    NEWEST_FIRST,
    ROW_COLUMNS,
    TABLE,
    conditions,
    resolve_filters,
    row_dict,
)
from course_llm.db.session import SessionFactory
from course_llm.reporting.paging import CallsPage, Cursor, encode_cursor
from course_llm.reporting.usage import UsageFilters

__all__ = ["list_calls", "list_calls_after"]


def _next_cursor(rows: list[Any], page_size: int) -> str | None:
    """The cursor after the page's last row when a row follows it (one more was read), else None."""
    if len(rows) <= page_size:
        return None
    last = rows[page_size - 1]
    return encode_cursor(Cursor(created_at=last["created_at"], id=last["id"]))


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
            sa.select(*ROW_COLUMNS)
            .where(*conditions(filters))
            .order_by(*NEWEST_FIRST)
            .limit(page_size + 1)
            .offset((page - 1) * page_size)
        )
        total_statement = sa.select(sa.func.count()).select_from(TABLE).where(*conditions(filters))
        total = int(await session.scalar(total_statement) or 0)
        rows = list((await session.execute(statement)).mappings().all()) if total else []
    return CallsPage(
        data=[row_dict(row) for row in rows[:page_size]],
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
    where = []
    if cursor is not None:
        created_at, row_id = COLUMNS.created_at, COLUMNS.id
        where = [
            created_at <= cursor.created_at,
            sa.or_(created_at < cursor.created_at, row_id < cursor.id),
        ]
    async with session_factory() as session:
        filters = await resolve_filters(session, filters)
        statement = (
            sa.select(*ROW_COLUMNS)
            .where(*conditions(filters), *where)
            .order_by(*NEWEST_FIRST)
            .limit(page_size + 1)
        )
        rows = list((await session.execute(statement)).mappings().all())
    return CallsPage(
        data=[row_dict(row) for row in rows[:page_size]],
        total=None,
        page=None,
        page_size=page_size,
        next_cursor=_next_cursor(rows, page_size),
    )
