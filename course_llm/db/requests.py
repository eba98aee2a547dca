"""Request-level queries over llm_calls: one line per request, and the breakdown by tag.

`list_requests` pages through requests (not attempts), newest first: the requests that have at
least one attempt matching the filters, ordered by their first attempt's start. The filters
pick the requests; a request's outcome (success: any attempt succeeded), the `status` filter
and the failed count are over *every* attempt of the request, so a request that `model_id=sonnet`
picks by its failed first attempt, and that a fallback to another model rescued, succeeded.
`status=error` means the final outcome (no attempt succeeded), not the status of single
attempts. Each line is built by `course_llm.reporting.requests.request_line` from
*every* attempt of the request, so a request that began before `since` still shows all its
hops. The page costs three statements, each through the request_id index: the counts, the ids
of the page, and the attempts of those ids.

`tag_breakdown` groups the matching attempts by tag. The `tags` of a row's metadata are what the
caller gave: a mapping (`{"course": "bio101"}`, one group per `course=bio101`), a list
(`["beta"]`, one group per element) or a single value. JSON functions differ per database
(SQLite's table-valued `json_each`, PostgreSQL's `jsonb_each`/`jsonb_array_elements` in a LATERAL
subquery) and so does how each spells a JSON value as text (`[1,2]` or `[1, 2]`, `1.0e+20` or
`100000000000000000000`). So SQL groups by (key, JSON type, value) and `_label` spells every label
in Python, one way on both databases:

- a string is itself, `true`, `false` and `null` are so spelled;
- a number is an integer when its value is whole and fits 64 bits (`1.0` is `1`), else Python's
  float repr (`2.5`, `1e+20`);
- an object or array is compact JSON with sorted keys, its numbers spelled as above;
- a mapping member is `key=value`, except under an empty key, where it is its value alone (as a
  list element would be), never `=value`.

Groups whose labels agree (`1` and `1.0` on PostgreSQL) are merged.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from course_llm.db.filtering import (
    COLUMNS,
    ROW_COLUMNS,
    conditions,
    finite,
    int_sum,
    resolve_filters,
    row_dict,
)
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
        requests = _per_request(filters).subquery("per_request")
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


#: How far outside the range a picked request's other attempts are looked for. A request's attempts
#: are bounded by their timeouts: 10 minutes each by default, a dozen at most in a long chain with
#: a fallback strategy, so 2 hours; 6 hours leaves room and keeps the read small.
REQUEST_SPAN = timedelta(hours=6)


def _just_outside(filters: UsageFilters) -> list[sa.ColumnElement[bool]]:
    """The times within `REQUEST_SPAN` before `since` and after `until` (both ends open-ended)."""
    sides = []
    if filters.since is not None:
        before = UsageFilters(since=filters.since - REQUEST_SPAN, until=filters.since)
        sides.append(sa.and_(*conditions(before)))
    if filters.until is not None:
        after = UsageFilters(since=filters.until, until=filters.until + REQUEST_SPAN)
        sides.append(sa.and_(*conditions(after)))
    return sides


def _per_request(filters: UsageFilters) -> sa.Select[Any]:
    """Per picked request: its first attempt's start and whether any attempt succeeded (the
    `status` filter picks by that outcome).

    The filters pick the requests; the outcome is over *every* attempt of each: a request rescued
    by a fallback on another model succeeded even when `model_id` picks the failure. Reading every
    attempt of 160,000 picked ids by id made PostgreSQL scan the whole table (3.9 s at 10M rows),
    so attempts are read by time: those in the range, grouped per request, and those within
    `REQUEST_SPAN` before and after it, grouped likewise and joined on, which amend the start
    and the outcome of a request that straddles an end of the range.
    """
    succeeded = sa.func.max(sa.case((COLUMNS.success == sa.true(), 1), else_=0))
    in_range = conditions(UsageFilters(since=filters.since, until=filters.until))
    others = conditions(dataclasses.replace(filters, since=None, until=None), status=False)
    if filters.status == "cached":  # requests with an answer from the cache (always a success)
        others.append(COLUMNS.cache_hit == sa.true())
    # Filters beyond the range pick requests by any of their attempts in it.
    picked = (
        [COLUMNS.request_id.in_(sa.select(COLUMNS.request_id).where(*in_range, *others))] if others else []
    )
    inside = (
        sa.select(
            COLUMNS.request_id.label("request_id"),
            sa.func.min(COLUMNS.created_at).label("started_at"),
            succeeded.label("succeeded"),
        )
        .where(*in_range, *picked)
        .group_by(COLUMNS.request_id)
        .cte("inside")
    )
    started_at: sa.ColumnElement[Any] = inside.c.started_at
    outcome: sa.ColumnElement[Any] = inside.c.succeeded
    source: sa.FromClause = inside
    if in_range:
        outside = (
            sa.select(
                COLUMNS.request_id.label("request_id"),
                sa.func.min(COLUMNS.created_at).label("started_at"),
                succeeded.label("succeeded"),
            )
            .where(sa.or_(*_just_outside(filters)))
            .group_by(COLUMNS.request_id)
            .subquery("outside")
        )
        # A join, not a UNION regrouped: only requests with attempts outside are amended.
        source = inside.outerjoin(outside, outside.c.request_id == inside.c.request_id)
        started_at = sa.case(
            (outside.c.started_at < inside.c.started_at, outside.c.started_at), else_=inside.c.started_at
        )
        outcome = sa.case((outside.c.succeeded == 1, 1), else_=inside.c.succeeded)
    per_request = sa.select(
        inside.c.request_id.label("request_id"), started_at.label("started_at"), outcome.label("succeeded")
    ).select_from(source)
    if filters.status in ("success", "error"):  # the request's final outcome
        per_request = per_request.where(outcome == (1 if filters.status == "success" else 0))
    return per_request


async def _attempts_of(session: AsyncSession, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    if ids:
        statement = sa.select(*ROW_COLUMNS).where(COLUMNS.request_id.in_(ids))
        for row in (await session.execute(statement)).mappings():
            found[row["request_id"]].append(row_dict(row))
    return found


# --- tags ----------------------------------------------------------------------------------------

#: PostgreSQL: one row per tag of the enclosing llm_calls row, whatever the shape of its tags:
#: the member's key (NULL for a list element or a single value), its JSON type, its text (`#>>`).
_POSTGRESQL_TAGS = """
SELECT key AS key, jsonb_typeof(value) AS kind, value #>> '{}' AS value FROM jsonb_each(
    CASE WHEN jsonb_typeof(llm_calls.metadata -> 'tags') = 'object' THEN llm_calls.metadata -> 'tags' END)
UNION ALL
SELECT NULL, jsonb_typeof(value), value #>> '{}' FROM jsonb_array_elements(
    CASE WHEN jsonb_typeof(llm_calls.metadata -> 'tags') = 'array' THEN llm_calls.metadata -> 'tags' END)
UNION ALL
SELECT NULL, jsonb_typeof(llm_calls.metadata -> 'tags'), llm_calls.metadata ->> 'tags'
WHERE jsonb_typeof(llm_calls.metadata -> 'tags') IN ('string', 'number', 'boolean')
"""

_TagColumns = tuple[sa.ColumnElement[Any], sa.ColumnElement[Any], sa.ColumnElement[Any]]


def _tag_source(dialect: str) -> tuple[_TagColumns, sa.FromClause, list[sa.ColumnElement[bool]]]:
    """(key, kind, value) of a tag, the FROM clause with one row per (attempt, tag), its conditions."""
    table = COLUMNS.id.table
    if dialect == "postgresql":
        columns = [sa.column(name, sa.String()) for name in ("key", "kind", "value")]
        tags = sa.lateral(sa.text(_POSTGRESQL_TAGS).columns(*columns), name="tags")
        return (tags.c.key, tags.c.kind, tags.c.value), table.join(tags, sa.true()), []
    each = sa.func.json_each(COLUMNS.metadata, "$.tags").table_valued(
        sa.column("key"),
        sa.column("value"),
        sa.column("type", sa.String()),
        sa.column("fullkey", sa.String()),
    )
    key = sa.case((sa.func.typeof(each.c.key) == "text", each.c.key))
    own = [
        # A row whose metadata is not JSON (plain SQL may write anything) would fail json_each.
        sa.func.json_valid(COLUMNS.metadata) == 1,
        # `"tags": null` is no tag (json_each yields one null row for it; PostgreSQL none).
        sa.or_(each.c.type != "null", each.c.fullkey != "$.tags"),
    ]
    return (key, each.c.type, each.c.value), table.join(each, sa.true()), own


def _number(value: Any) -> int | float:
    """A JSON number, spelled alike on both databases: whole values within 64 bits are integers."""
    number: int | float
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            number = float(value)
    else:
        number = value
    if isinstance(number, float) and number.is_integer() and abs(number) < 2**63:
        return int(number)
    if isinstance(number, int) and abs(number) >= 2**63:  # SQLite reads such a number as a float
        return float(number)
    return number


def _label(key: Any, kind: Any, value: Any) -> str:
    """The label of one tag from its (key, JSON type, value) as either database reports them."""
    if kind in ("true", "false", "null"):  # SQLite's types for those
        text = str(kind)
    elif kind in ("boolean", "text", "string"):  # PostgreSQL spells its booleans `true`/`false`
        text = str(value)
    elif kind in ("integer", "real", "number"):
        text = str(_number(value))
    else:  # object or array
        parsed = json.loads(str(value), parse_int=_number, parse_float=_number)
        text = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{key}={text}" if key else text


_SUMMED = ("calls", "failures", "tokens_in", "tokens_out", "cost_usd")


async def tag_breakdown(session_factory: SessionFactory, filters: UsageFilters) -> list[dict[str, Any]]:
    """Attempts, failures, tokens and cost per tag of the matching rows; costliest first.

    Each group is `{"tag", "calls", "failures", "error_rate", "tokens_in", "tokens_out",
    "cost_usd"}`; a row with two tags counts in both groups, a row without tags in none.
    """
    async with session_factory() as session:
        filters = await resolve_filters(session, filters)
        dialect = session.get_bind().dialect.name
        (key, kind, value), source, own = _tag_source(dialect)
        statement = (
            sa.select(
                key.label("key"),
                kind.label("kind"),
                value.label("value"),
                sa.func.count().label("calls"),
                sa.func.count().filter(COLUMNS.success == sa.false()).label("failures"),
                int_sum(COLUMNS.tokens_in, dialect).label("tokens_in"),
                int_sum(COLUMNS.tokens_out, dialect).label("tokens_out"),
                sa.func.coalesce(sa.func.sum(COLUMNS.cost_usd), 0.0).label("cost_usd"),
            )
            .select_from(source)
            .where(*conditions(filters), *own)
            .group_by(key, kind, value)
        )
        rows = (await session.execute(statement)).mappings().all()
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        figures = {
            "calls": int(row["calls"]),
            "failures": int(row["failures"]),
            "tokens_in": int(row["tokens_in"] or 0),
            "tokens_out": int(row["tokens_out"] or 0),
            "cost_usd": float(row["cost_usd"] or 0.0),
        }
        group = merged.setdefault(_label(row["key"], row["kind"], row["value"]), dict.fromkeys(_SUMMED, 0))
        for name in _SUMMED:
            group[name] += figures[name]
    groups = [
        {
            "tag": tag,
            "calls": group["calls"],
            "failures": group["failures"],
            "error_rate": group["failures"] / group["calls"],
            "tokens_in": group["tokens_in"],
            "tokens_out": group["tokens_out"],
            "cost_usd": finite(float(group["cost_usd"])),
        }
        for tag, group in merged.items()
    ]
    groups.sort(key=lambda g: (g["cost_usd"] is None, -(g["cost_usd"] or 0.0), g["tag"]))
    return groups
