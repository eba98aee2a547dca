"""Usage reporting queries over llm_calls: summaries, one request's attempts, export (pages: `db/paging.py`).

Each function takes a session factory and a `UsageFilters` (parsed from user input by
`course_llm.reporting.usage`) and returns plain data: rows are dicts keyed by column name (`metadata` for the
JSON column), with the id as a string and `created_at` as an ISO 8601 UTC string, ready for JSON.

Every value reaches the database as a bound parameter; only column names and the fixed expressions
below are SQL text.

Summaries read the hourly and daily aggregates when they can (`course_llm.db.rollup`: exact
counts, tokens and cost, histogram percentiles); what follows is the raw path, which
`summarize(..., exact=True)`, a `request_id` filter and an `end_user` group take. Its figures,
per group and in total:
- `error_rate` = failures / calls;
- `fallback_rate` = the share of requests whose successful attempt was not the first: successful rows
  with `attempt > 1` / successful rows (each request has at most one successful attempt), 0 when
  the group has no success;
- p50/p95 latency: continuous percentiles (linear interpolation, PostgreSQL's `percentile_cont`)
  over the rows with a known latency; None when there is none. PostgreSQL computes them in SQL
  (see `_summarize_postgresql` for the shape that keeps a 30-day summary of 500,000 rows near half
  a second). SQLite has no percentile function: window functions rank each group's latencies and
  pick the two values around each percentile's position, and Python blends those two
  (`_ranked_picks`, `_blend`), so no scan is ever read into Python and the loop never stalls.
- `day` is the UTC calendar date of `created_at`, as YYYY-MM-DD; `hour` its UTC hour, as
  YYYY-MM-DDTHH:00:00Z.

A `request_id` filter may be a unique prefix of an id (`course_llm.db.filtering.resolve_filters`).

Every value read is JSON-safe: course_llm cleans what it writes (`recording/clean.py`), but a row
another path wrote (plain SQL) may hold NaN or ±Infinity in a float column (PostgreSQL keeps them;
SQLite keeps ±Infinity) or `NaN`/`Infinity` in SQLite's JSON text. Such values read as None, here
and in the summary figures, so no report fails to render because of one row.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from course_llm.db.filtering import (
    COLUMNS,
    ROW_COLUMNS,
    conditions,
    finite,
    group_expression,
    int_sum,
    resolve_filters,
    resolve_request_id,
    row_dict,
)
from course_llm.db.paging import list_calls, list_calls_after
from course_llm.db.rollup import aggregates_exist, count_rows, servable, summarize_rollup
from course_llm.db.session import SessionFactory
from course_llm.reporting.usage import GROUP_KEYS, CallsPage, Summary, UsageFilters

__all__ = [
    "CallsPage",
    "Summary",
    "UsageFilters",
    "count_matching",
    "iter_calls",
    "list_calls",
    "list_calls_after",
    "request_attempts",
    "summarize",
]

_C = COLUMNS
Key = tuple[Any, ...]


async def count_matching(session_factory: SessionFactory, filters: UsageFilters) -> int:
    """How many rows match `filters` (the `total` of a page, the length of an export)."""
    async with session_factory() as session:
        return await count_rows(session, await resolve_filters(session, filters))


async def request_attempts(session_factory: SessionFactory, request_id: str) -> list[dict[str, Any]]:
    """Every attempt of one request, in the order they were made (empty when the id is unknown).

    `request_id` may be a unique prefix of the id (see `course_llm.db.filtering`); an ambiguous or
    too short one is a `UsageQueryError`.
    """
    async with session_factory() as session:
        request_id = await resolve_request_id(session, request_id)
        statement = (
            sa.select(*ROW_COLUMNS)
            .where(_C.request_id == request_id)
            .order_by(_C.attempt, _C.created_at, _C.id)
        )
        rows = (await session.execute(statement)).mappings().all()
    return [row_dict(row) for row in rows]


async def iter_calls(
    session_factory: SessionFactory, filters: UsageFilters, batch: int = 1000
) -> AsyncIterator[dict[str, Any]]:
    """Every matching row, oldest first, fetched `batch` rows at a time (constant memory).

    Oldest first because an export is a log: appending a later export continues it in order.
    The rows come through a server-side cursor (asyncpg) or an incremental fetch (SQLite) inside
    one read transaction, so the export is a consistent snapshot on PostgreSQL.
    """
    async with session_factory() as session:
        filters = await resolve_filters(session, filters)
        statement = (
            sa.select(*ROW_COLUMNS)
            .where(*conditions(filters))
            .order_by(_C.created_at, _C.id)
            .execution_options(yield_per=batch)
        )
        result = await session.stream(statement)
        async for row in result.mappings():
            yield row_dict(row)


# --- summaries -----------------------------------------------------------------------------------


#: The percentiles reported, as fractions: p50 and p95.
_FRACTIONS = (0.5, 0.95)
_LATENCY_KEYS = ("p50_latency_ms", "p95_latency_ms")
_SUMS = ("calls", "failures", "successes", "fallbacks", "tokens_in", "tokens_out", "cost_usd")


def _sum_columns(dialect: str) -> list[sa.ColumnElement[Any]]:
    """Counts and sums per group, named as in `_SUMS` (token sums never overflow: `int_sum`)."""
    return [
        sa.func.count().label("calls"),
        sa.func.count().filter(_C.success == sa.false()).label("failures"),
        sa.func.count().filter(_C.success == sa.true()).label("successes"),
        sa.func.count().filter(sa.and_(_C.success == sa.true(), _C.attempt > 1)).label("fallbacks"),
        int_sum(_C.tokens_in, dialect).label("tokens_in"),
        int_sum(_C.tokens_out, dialect).label("tokens_out"),
        sa.func.coalesce(sa.func.sum(_C.cost_usd), 0.0).label("cost_usd"),
    ]


def _figures(row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's figures from one row of sums and latency percentiles."""
    calls, failures = int(row["calls"] or 0), int(row["failures"] or 0)
    successes, fallbacks = int(row["successes"] or 0), int(row["fallbacks"] or 0)
    return {
        "calls": calls,
        "failures": failures,
        "error_rate": failures / calls if calls else 0.0,
        "tokens_in": int(row["tokens_in"] or 0),
        "tokens_out": int(row["tokens_out"] or 0),
        "cost_usd": finite(float(row["cost_usd"] or 0.0)),
        "p50_latency_ms": finite(row["p50_latency_ms"]),
        "p95_latency_ms": finite(row["p95_latency_ms"]),
        "fallback_rate": fallbacks / successes if successes else 0.0,
    }


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """The continuous percentile of sorted values, as PostgreSQL's `percentile_cont` computes it."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (position - lower) * (ordered[upper] - ordered[lower])


Rows = tuple[list[dict[str, Any]], dict[str, Any]]


async def _summarize_postgresql(
    session: AsyncSession, keys: list[sa.ColumnElement[Any]], conditions: list[sa.ColumnElement[bool]]
) -> Rows:
    """Groups and totals in one statement, one scan: the 30-day benchmark's fast path.

    `percentile_cont … WITHIN GROUP` grouped by the keys makes PostgreSQL sort every row by the
    keys (an ordered-set aggregate rules out hashing), and the totals would need a second scan.
    Instead each group collects its latencies with `array_agg` (hash-aggregated, one scan); the
    percentiles are then taken over each group's array, and over all arrays for the totals.
    """
    fractions: sa.ColumnElement[Any] = sa.literal(list(_FRACTIONS), postgresql.ARRAY(sa.Double()))
    if not keys:  # totals only: one ordered-set aggregate over the rows, nothing to group
        ordered = sa.func.percentile_cont(fractions).within_group(_C.latency_ms)
        percentiles: sa.TypeCoerce[Any] = sa.type_coerce(ordered, postgresql.ARRAY(sa.Double()))
        statement = sa.select(*_sum_columns("postgresql"), percentiles.label("percentiles")).where(
            *conditions
        )
        return [], _unpack((await session.execute(statement)).mappings().one())
    latencies = sa.func.array_agg(_C.latency_ms).filter(_C.latency_ms.is_not(None))
    per_group = (
        sa.select(*keys, *_sum_columns("postgresql"), latencies.label("latencies"))
        .where(*conditions)
        .group_by(*keys)
        .cte("per_group")
    )
    every_group = per_group.alias("every_group")

    def percentiles_of(group: sa.CTE, *, lateral: bool = False) -> sa.Select[Any]:
        unnested = sa.func.unnest(group.c.latencies).table_valued("value").render_derived()
        values: sa.FromClause = unnested.lateral() if lateral else unnested
        ordered = sa.func.percentile_cont(fractions).within_group(values.c.value)
        statement: sa.Select[Any] = sa.select(sa.type_coerce(ordered, postgresql.ARRAY(sa.Double())))
        # Per group: `FROM unnest(per_group.latencies)`, correlated to the enclosing row. Totals:
        # `FROM every_group JOIN LATERAL unnest(every_group.latencies) ON true`, all groups at once.
        return statement.select_from(group.join(values, sa.true()) if lateral else values)

    names = [key.name for key in keys]
    groups_part = sa.select(
        sa.literal(False).label("is_total"),
        *(per_group.c[name] for name in names),
        *(per_group.c[name] for name in _SUMS),
        percentiles_of(per_group).scalar_subquery().label("percentiles"),
    )
    totals_part = sa.select(
        sa.literal(True),
        *(sa.null() for _ in names),
        *(sa.func.sum(per_group.c[name]) for name in _SUMS),
        percentiles_of(every_group, lateral=True).scalar_subquery(),
    )
    rows = (await session.execute(sa.union_all(groups_part, totals_part))).mappings().all()
    groups = [_unpack(row) for row in rows if not row["is_total"]]
    (totals,) = [_unpack(row) for row in rows if row["is_total"]]
    return groups, totals


def _unpack(row: sa.RowMapping) -> dict[str, Any]:
    """A result row with its `percentiles` array ([p50, p95], or NULL) spread into named figures."""
    values = dict(row)
    values.update(zip(_LATENCY_KEYS, values.pop("percentiles") or [None, None], strict=True))
    return values


def _ranked_picks(
    keys: list[sa.ColumnElement[Any]], conditions: list[sa.ColumnElement[bool]]
) -> sa.Select[Any]:
    """Per group of `keys`: its latency count `n` and, per fraction, the two ranked values to blend.

    Each row with a latency is ranked within its group (`row_number() - 1` over the group ordered by
    latency, window functions since SQLite 3.25); a group keeps only the values at rank
    floor(f·(n-1)) and the next one (capped at n-1), as `lo_<i>` and `hi_<i>` for fraction i.
    """
    partition = [key.element if isinstance(key, sa.Label) else key for key in keys]
    over: dict[str, Any] = {"partition_by": partition} if partition else {}
    ranked = (
        sa.select(
            *keys,
            _C.latency_ms.label("value"),
            (sa.func.row_number().over(order_by=_C.latency_ms, **over) - 1).label("rank"),
            sa.func.count().over(**over).label("n"),
        )
        .where(*conditions, _C.latency_ms.is_not(None))
        .subquery("ranked")
    )
    picks: list[sa.ColumnElement[Any]] = []
    for index, fraction in enumerate(_FRACTIONS):
        # CAST truncates, which is floor() for the non-negative position; the fraction is bound as a
        # float so SQLite multiplies the same doubles as `percentile`.
        lower = sa.cast(sa.bindparam(f"f{index}", fraction, sa.Float()) * (ranked.c.n - 1), sa.Integer())
        upper = sa.func.min(lower + 1, ranked.c.n - 1)
        picks.append(sa.func.max(sa.case((ranked.c.rank == lower, ranked.c.value))).label(f"lo_{index}"))
        picks.append(sa.func.max(sa.case((ranked.c.rank == upper, ranked.c.value))).label(f"hi_{index}"))
    names = [key.name for key in keys]
    group = [ranked.c[name] for name in names]
    return sa.select(*group, sa.func.max(ranked.c.n).label("n"), *picks).group_by(*group)


def _blend(row: Mapping[str, Any]) -> dict[str, float | None]:
    """The percentiles of one `_ranked_picks` row, interpolated exactly as `percentile` does."""
    n = row["n"]
    figures: dict[str, float | None] = {}
    for index, (name, fraction) in enumerate(zip(_LATENCY_KEYS, _FRACTIONS, strict=True)):
        if not n:
            figures[name] = None
            continue
        position = fraction * (n - 1)
        low, high = row[f"lo_{index}"], row[f"hi_{index}"]
        figures[name] = low + (position - math.floor(position)) * (high - low)
    return figures


async def _summarize_portable(
    session: AsyncSession, keys: list[sa.ColumnElement[Any]], conditions: list[sa.ColumnElement[bool]]
) -> Rows:
    """Groups and totals for databases without percentile functions (SQLite), all in SQL.

    Sums are plain aggregates; each percentile is picked from a window-ranked scan by
    `_ranked_picks`, so only two values per group and fraction reach Python, which interpolates
    them (`_blend`) like `percentile` would over every latency. The statements run in aiosqlite's
    thread, so a summary of any size leaves the event loop free.
    """
    sums = _sum_columns(session.get_bind().dialect.name)
    totals = dict((await session.execute(sa.select(*sums).where(*conditions))).mappings().one())
    totals.update(_blend((await session.execute(_ranked_picks([], conditions))).mappings().one()))
    groups = []
    if keys:
        statement = sa.select(*keys, *sums).where(*conditions).group_by(*keys)
        groups = [dict(row) for row in (await session.execute(statement)).mappings()]
    names = [key.name for key in keys]
    per_group: dict[Key, dict[str, float | None]] = {}
    if keys:
        result = await session.execute(_ranked_picks(keys, conditions))
        per_group = {tuple(row[n] for n in names): _blend(row) for row in result.mappings()}
    empty = _blend({"n": 0})  # a group whose rows all lack a latency
    for group in groups:
        group.update(per_group.get(tuple(group[n] for n in names), empty))
    return groups, totals


def _key(name: str, value: Any) -> Any:
    """A group key as JSON-friendly data: `day` as YYYY-MM-DD, `hour` as YYYY-MM-DDTHH:00:00Z."""
    if name == "hour" and value is not None:
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        return f"{text[:10]}T{text[11:13]}:00:00Z"
    return value.isoformat() if isinstance(value, date) else value


def _sort_key(group_by: Sequence[str]) -> Any:
    def key(group: dict[str, Any]) -> tuple[Any, ...]:
        # Cost first (highest first; unknown, from a non-finite stored cost, last), then the keys
        # with None after every value, for a stable order that does not depend on how each
        # database sorts NULLs.
        cost = group["cost_usd"]
        return (cost is None, -(cost or 0.0), *((group[k] is None, group[k] or "") for k in group_by))

    return key


async def summarize(
    session_factory: SessionFactory, filters: UsageFilters, group_by: Sequence[str], *, exact: bool = False
) -> Summary:
    """Figures for each group of `group_by` keys (see `GROUP_KEYS`) and for all matching rows.

    With no `group_by`, `groups` is empty and only `totals` are computed. The hourly and daily
    aggregates answer when they can (`course_llm.db.rollup`): counts, tokens and cost are exact,
    p50/p95 within 5 % or 2 ms. `exact` reads the raw rows instead, for exact percentiles.
    """
    unknown = [key for key in group_by if key not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"unknown group keys {unknown}; valid: {', '.join(GROUP_KEYS)}")
    names = list(group_by)
    async with session_factory() as session:
        filters = await resolve_filters(session, filters)
        dialect = session.get_bind().dialect.name
        if not exact and servable(filters, names) and await aggregates_exist(session):
            rows, totals_row = await summarize_rollup(session, filters, names)
        else:
            keys = [group_expression(name, dialect) for name in names]
            raw = _summarize_postgresql if dialect == "postgresql" else _summarize_portable
            rows, totals_row = await raw(session, keys, conditions(filters))
    groups = (
        [{**{name: _key(name, row[name]) for name in names}, **_figures(row)} for row in rows]
        if names
        else []
    )
    groups.sort(key=_sort_key(names))
    return Summary(group_by=names, groups=groups, totals=_figures(totals_row))
