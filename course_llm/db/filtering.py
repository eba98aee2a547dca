"""What every usage query shares: the WHERE clause of a `UsageFilters`, the row columns, the row dict.

`db/usage.py` (attempts, summaries, export) and `db/requests.py` (one line per request, tag
breakdowns) both read llm_calls through the pieces here, so a filter means the same rows in every
report.

Request ids are matched by prefix, as docs/architecture.md's newcomer contract asks: `resolve_filters` turns
the `request_id` a user typed into the one stored id it names, before any report runs:

- an id stored exactly as given is taken as it is (one indexed lookup), whatever its length: a
  short id such as `req-1` is a whole id, not a prefix;
- otherwise the value is a prefix, which must have at least `MIN_PREFIX` (8) characters, and must
  start exactly one stored id; several is a `UsageQueryError` naming how many (an ambiguous prefix
  must not silently merge two requests), none leaves the filter as typed, so it matches no row.

The prefix lookup is a `LIKE 'prefix%'` with `%`, `_` and the escape character itself escaped, so
`req_1` matches only `req_1…`, never `reqX1…`. LIKE ignores case on SQLite (not on PostgreSQL), so
`substr(request_id, 1, n) = prefix` beside it makes the match exact and case-sensitive on both,
while the LIKE keeps the request_id index range.

Time bounds (`since`, `until`) are bound through `TimeBound`: SQLite compares the stored text, and
a row another writer stored as `2025-03-01 12:00:00` (no fraction) sorts before the
`2025-03-01 12:00:00.000000` SQLAlchemy would bind, so a whole-second bound is bound without the
fraction, which orders correctly against both forms.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from course_llm.db.models import LLMCall
from course_llm.errors import UsageQueryError
from course_llm.reporting.requests import MIN_PREFIX, ambiguous_prefix_message, like_prefix
from course_llm.reporting.usage import FILTER_NAMES, UsageFilters

__all__ = [
    "COLUMNS",
    "NEWEST_FIRST",
    "ROW_COLUMNS",
    "TABLE",
    "TimeBound",
    "conditions",
    "finite",
    "group_expression",
    "int_sum",
    "resolve_filters",
    "resolve_request_id",
    "row_dict",
]

TABLE: sa.Table = LLMCall.__table__  # type: ignore[assignment]  # declared as FromClause; it is a Table
COLUMNS = TABLE.c
Columns = sa.ColumnCollection[str, sa.ColumnElement[Any]] | Any

#: Filters that are plain equality on the column of the same name: all but the time bounds and
#: `status` (which is `success`, or `cache_hit` for "cached").
_EQUALITY_FILTERS = tuple(name for name in FILTER_NAMES if name not in ("since", "until", "status"))

#: Newest first; the id (uuid7, time-ordered) breaks ties so pages never overlap or skip rows.
NEWEST_FIRST = (COLUMNS.created_at.desc(), COLUMNS.id.desc())

#: How many ids an ambiguous prefix reports at most ("matches more than 10 requests").
_AMBIGUITY_SHOWN = 10


class TimeBound(sa.TypeDecorator[datetime]):
    """A `since`/`until` instant: the column's own type, but on SQLite the shortest stored text form."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        utc = value.astimezone(UTC)
        text = utc.strftime("%Y-%m-%d %H:%M:%S")
        return f"{text}.{utc.microsecond:06d}" if utc.microsecond else text


def int_sum(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """The sum of an integer column, 0 over no rows; read it with `int()`.

    SQLite's `sum()` raises "integer overflow" past 2**63 (two rows of 2**62 tokens written by
    plain SQL would fail every report), so SQLite sums with `total()`, a float: exact up to 2**53.
    """
    if dialect == "sqlite":
        return sa.func.total(column, type_=sa.Float())
    return sa.func.coalesce(sa.func.sum(column), 0)


def conditions(
    filters: UsageFilters, *, status: bool = True, columns: Columns = COLUMNS, time_column: str = "created_at"
) -> list[sa.ColumnElement[bool]]:
    """The WHERE clause of `filters` (without the `status` filter when `status` is False).

    `columns` are llm_calls', or an aggregate table's (`course_llm.db.aggregates`, whose `period`
    is the time column): the filters name columns both have.
    """
    where: list[sa.ColumnElement[bool]] = []
    if filters.since is not None:
        where.append(columns[time_column] >= sa.bindparam(None, filters.since, TimeBound()))
    if filters.until is not None:
        where.append(columns[time_column] < sa.bindparam(None, filters.until, TimeBound()))
    for name in _EQUALITY_FILTERS:
        value = getattr(filters, name)
        if value is not None:
            where.append(columns[name] == value)
    if status and filters.status == "success":
        where.append(columns.success == sa.true())
    elif status and filters.status == "error":
        where.append(columns.success == sa.false())
    elif status and filters.status == "cached":
        where.append(columns.cache_hit == sa.true())
    return where


def group_expression(
    key: str, dialect: str, columns: Columns = COLUMNS, time_column: str = "created_at"
) -> sa.ColumnElement[Any]:
    """The expression a summary groups `key` by, labelled `key`: a column, or `day`/`hour` of the time."""
    if key not in ("day", "hour"):
        return columns[key].label(key)
    moment = columns[time_column]
    if dialect == "postgresql":
        # A date (or an hour), not to_char(): formatting half a million timestamps costs more than
        # the query.
        utc = sa.func.timezone("UTC", moment)
        if key == "hour":
            return sa.func.date_trunc("hour", utc, type_=sa.DateTime()).label("hour")
        return sa.cast(utc, sa.Date()).label("day")
    # SQLite stores the UTC timestamp as text, `YYYY-MM-DD HH:MM:SS…`: the date is its first 10
    # characters, the hour its first 13.
    return sa.func.substr(moment, 1, 10 if key == "day" else 13, type_=sa.String()).label(key)


async def resolve_request_id(session: AsyncSession, typed: str) -> str:
    """The stored request id that `typed` names: itself when stored, else the one it prefixes.

    Raises `UsageQueryError` (field `request_id`) for a prefix shorter than `MIN_PREFIX` or one
    that starts several ids. An unknown id of `MIN_PREFIX` or more characters comes back as typed.
    """
    exact = sa.select(COLUMNS.request_id).where(COLUMNS.request_id == typed).limit(1)
    if await session.scalar(exact) is not None:
        return typed
    if len(typed) < MIN_PREFIX:
        message = f"{typed!r} is no recorded id, and a prefix needs at least {MIN_PREFIX} characters"
        raise UsageQueryError("request_id", message)
    matching = (
        sa.select(COLUMNS.request_id)
        .where(
            COLUMNS.request_id.like(like_prefix(typed), escape="\\"),
            sa.func.substr(COLUMNS.request_id, 1, len(typed)) == typed,
        )
        .distinct()
        .limit(_AMBIGUITY_SHOWN + 1)
    )
    found = list((await session.scalars(matching)).all())
    if len(found) > 1:
        raise UsageQueryError("request_id", ambiguous_prefix_message(typed, len(found), _AMBIGUITY_SHOWN))
    return found[0] if found else typed


async def resolve_filters(session: AsyncSession, filters: UsageFilters) -> UsageFilters:
    """`filters` with its `request_id` prefix (if any) replaced by the full id it names."""
    if filters.request_id is None:
        return filters
    resolved = await resolve_request_id(session, filters.request_id)
    return filters if resolved == filters.request_id else dataclasses.replace(filters, request_id=resolved)


def _null_constant(_name: str) -> None:
    return None


class _ReadJSON(sa.TypeDecorator[Any]):
    """The metadata column as read for reports: `NaN` and `±Infinity` in the JSON text are None.

    SQLite hands over the stored text, parsed here with `parse_constant` at no extra cost. asyncpg
    decodes JSONB itself (and JSONB cannot hold NaN), so a value that is not text passes as is.
    """

    impl = sa.Text()
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, str):
            return json.loads(value, parse_constant=_null_constant)
        return value


#: Every column of llm_calls, the metadata column read through `_ReadJSON`.
ROW_COLUMNS = [
    sa.type_coerce(column, _ReadJSON()).label(column.name) if column.name == "metadata" else column
    for column in TABLE.columns
]


def finite(value: Any) -> Any:
    """None for NaN and ±Infinity, which JSON cannot carry; any other value as it is."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def row_dict(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A result row as JSON-friendly data: the uuid as a string, the timestamp as ISO 8601 UTC."""
    data = dict(row)
    data["id"] = str(data["id"])
    data["created_at"] = data["created_at"].isoformat()
    data["latency_ms"] = finite(data["latency_ms"])
    data["cost_usd"] = finite(data["cost_usd"])
    return data
