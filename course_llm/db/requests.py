"""Request-level queries over llm_calls: one line per request, and the breakdown by tag.

`list_requests` pages through requests (not attempts), newest first: the requests that have at
least one attempt matching the filters, ordered by their first attempt's start. The `status`
filter means the request's final outcome here (`error`: no attempt succeeded), not the status
of single attempts. Each line is built by `course_llm.reporting.requests.request_line` from
*every* attempt of the request, so a request that began before `since` still shows all its
hops. The page costs two statements: one grouped by request id (the ids of the page and the
counts), one reading the attempts of those ids through the request_id index.

`tag_breakdown` groups the matching attempts by tag. The `tags` of a row's metadata are what the
caller gave: a mapping (`{"course": "bio101"}`, one group per `course=bio101`), a list
(`["beta"]`, one group per element) or a single value. JSON functions differ per database:
SQLite's table-valued `json_each`, PostgreSQL's `jsonb_each_text`/`jsonb_array_elements_text`
in a LATERAL subquery; both give the same labels for strings and numbers (`true`, `false` and
`null` are spelled so on both).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from course_llm.db.filtering import COLUMNS, ROW_COLUMNS, conditions, finite, resolve_filters, row_dict
from course_llm.db.session import SessionFactory
from course_llm.reporting.requests import RequestsPage, request_line
from course_llm.reporting.usage import UsageFilters

__all__ = ["list_requests", "tag_breakdown"]


async def list_requests(
    session_factory: SessionFactory, filters: UsageFilters, page: int = 1, page_size: int = 50
) -> RequestsPage:
    """Page `page` (from 1) of the matching requests, newest first, with request-level totals."""
    if page < 1 or page_size < 1:
        raise ValueError(f"page and page_size must be >= 1, got {page}, {page_size}")
    async with session_factory() as session:
        filters = await resolve_filters(session, filters)
        succeeded = sa.func.max(sa.case((COLUMNS.success == sa.true(), 1), else_=0))
        per_request = (
            sa.select(
                COLUMNS.request_id.label("request_id"),
                sa.func.min(COLUMNS.created_at).label("started_at"),
                succeeded.label("succeeded"),
            )
            .where(*conditions(filters, status=False))
            .group_by(COLUMNS.request_id)
        )
        if filters.status is not None:
            per_request = per_request.having(succeeded == (1 if filters.status == "success" else 0))
        requests = per_request.subquery("per_request")
        counts = sa.select(sa.func.count(), sa.func.count().filter(requests.c.succeeded == 0)).select_from(
            requests
        )
        total, failed = (await session.execute(counts)).one()
        ids: list[str] = []
        if total:
            page_ids = (
                sa.select(requests.c.request_id)
                .order_by(requests.c.started_at.desc(), requests.c.request_id.desc())
                .limit(page_size)
                .offset((page - 1) * page_size)
            )
            ids = list((await session.scalars(page_ids)).all())
        attempts = await _attempts_of(session, ids)
    lines = [request_line(attempts[request_id]) for request_id in ids if attempts[request_id]]
    return RequestsPage(data=lines, total=int(total), failed=int(failed or 0), page=page, page_size=page_size)


async def _attempts_of(session: AsyncSession, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    if ids:
        statement = sa.select(*ROW_COLUMNS).where(COLUMNS.request_id.in_(ids))
        for row in (await session.execute(statement)).mappings():
            found[row["request_id"]].append(row_dict(row))
    return found


# --- tags ----------------------------------------------------------------------------------------

#: PostgreSQL: one row per tag of the enclosing llm_calls row, whatever the shape of its tags.
_POSTGRESQL_TAGS = """
SELECT key || '=' || coalesce(value, 'null') AS tag FROM jsonb_each_text(
    CASE WHEN jsonb_typeof(llm_calls.metadata -> 'tags') = 'object' THEN llm_calls.metadata -> 'tags' END)
UNION ALL
SELECT coalesce(value, 'null') FROM jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(llm_calls.metadata -> 'tags') = 'array' THEN llm_calls.metadata -> 'tags' END)
UNION ALL
SELECT llm_calls.metadata ->> 'tags'
WHERE jsonb_typeof(llm_calls.metadata -> 'tags') IN ('string', 'number', 'boolean')
"""


def _tag_source(dialect: str) -> tuple[sa.ColumnElement[str], sa.FromClause, list[sa.ColumnElement[bool]]]:
    """The tag label, the FROM clause that yields one row per (attempt, tag), and its own conditions."""
    table = COLUMNS.id.table
    if dialect == "postgresql":
        tags = sa.lateral(sa.text(_POSTGRESQL_TAGS).columns(sa.column("tag", sa.String())), name="tags")
        return tags.c.tag, table.join(tags, sa.true()), []
    each = sa.func.json_each(COLUMNS.metadata, "$.tags").table_valued(
        sa.column("key", sa.String()), sa.column("value", sa.String()), sa.column("type", sa.String())
    )
    value = sa.case(
        (each.c.type.in_(("true", "false", "null")), each.c.type),
        else_=sa.cast(each.c.value, sa.String()),
    )
    label = sa.case((sa.func.typeof(each.c.key) == "text", each.c.key.concat("=").concat(value)), else_=value)
    # A row whose metadata is not JSON (plain SQL may write anything) would fail json_each.
    return label, table.join(each, sa.true()), [sa.func.json_valid(COLUMNS.metadata) == 1]


async def tag_breakdown(session_factory: SessionFactory, filters: UsageFilters) -> list[dict[str, Any]]:
    """Attempts, failures, tokens and cost per tag of the matching rows; costliest first.

    Each group is `{"tag", "calls", "failures", "error_rate", "tokens_in", "tokens_out",
    "cost_usd"}`; a row with two tags counts in both groups, a row without tags in none.
    """
    async with session_factory() as session:
        filters = await resolve_filters(session, filters)
        label, source, own = _tag_source(session.get_bind().dialect.name)
        tag = label.label("tag")
        statement = (
            sa.select(
                tag,
                sa.func.count().label("calls"),
                sa.func.count().filter(COLUMNS.success == sa.false()).label("failures"),
                sa.func.coalesce(sa.func.sum(COLUMNS.tokens_in), 0).label("tokens_in"),
                sa.func.coalesce(sa.func.sum(COLUMNS.tokens_out), 0).label("tokens_out"),
                sa.func.coalesce(sa.func.sum(COLUMNS.cost_usd), 0.0).label("cost_usd"),
            )
            .select_from(source)
            .where(*conditions(filters), *own)
            .group_by(label)
        )
        rows = (await session.execute(statement)).mappings().all()
    groups = [
        {
            "tag": row["tag"],
            "calls": int(row["calls"]),
            "failures": int(row["failures"]),
            "error_rate": int(row["failures"]) / int(row["calls"]),
            "tokens_in": int(row["tokens_in"] or 0),
            "tokens_out": int(row["tokens_out"] or 0),
            "cost_usd": finite(float(row["cost_usd"] or 0.0)),
        }
        for row in rows
        if row["tag"] is not None
    ]
    groups.sort(key=lambda g: (g["cost_usd"] is None, -(g["cost_usd"] or 0.0), g["tag"]))
    return groups
