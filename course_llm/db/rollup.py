"""Summaries from the hourly and daily aggregates, with raw rows only at the range's partial hours.

`summarize` (`course_llm.db.usage`) comes here when every group key and filter is one the
aggregates keep (`servable`). The range `[since, until)` is cut into:

- whole UTC days, read from `llm_usage_daily`;
- whole hours outside them, read from `llm_usage_hourly` (all of the range when grouping by hour);
- the partial hours at either end, read from llm_calls, counted into the same histogram buckets.

An open end needs no raw part: the trigger keeps the aggregates exact to the last commit, the
current hour and day included. Counts, tokens and cost are therefore exact; p50/p95 come from
the merged histograms (`course_llm.reporting.histogram`, within 5 % or 2 ms).

Each part is one GROUP BY returning a row per group; the parts are merged here, in Python, so a
30-day summary reads about 30 days × groups aggregate rows plus two hours of raw rows.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from course_llm.db.aggregates import BUCKET_COLUMNS, DAILY, DIMENSIONS, PRUNED, Grain, table_of
from course_llm.db.filtering import TABLE, conditions, group_expression, int_sum
from course_llm.reporting.histogram import BOUNDS, bucket_sql, percentile
from course_llm.reporting.usage import UsageFilters

__all__ = ["Part", "aggregates_exist", "count_rows", "plan", "pruned_before", "servable", "summarize_rollup"]

_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
#: Group keys the aggregates can answer: their dimensions and the period's day or hour.
_KEYS = frozenset({*DIMENSIONS, "day", "hour"} - {"success"})
_COUNTS = ("calls", "failures", "successes", "fallbacks", "tokens_in", "tokens_out")


def servable(filters: UsageFilters, group_by: Sequence[str]) -> bool:
    """Whether the aggregates can answer this summary (a request id, cache hits (they have no
    `cache_hit` column) or an end-user group cannot)."""
    return filters.request_id is None and filters.status != "cached" and all(key in _KEYS for key in group_by)


#: Engines whose database has the aggregate tables (only a yes is remembered: an upgrade adds them).
_HAS_AGGREGATES: weakref.WeakSet[Any] = weakref.WeakSet()


async def aggregates_exist(session: AsyncSession) -> bool:
    """Whether the database has the aggregates (a read-only CLI may meet one never upgraded)."""
    bind = session.get_bind()
    if bind in _HAS_AGGREGATES:
        return True
    if bind.dialect.name == "postgresql":
        found = await session.scalar(sa.select(sa.func.to_regclass(DAILY.name).is_not(None)))
    else:
        statement = sa.text("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = :name")
        found = bool(await session.scalar(statement, {"name": DAILY.name}))
    if found:
        _HAS_AGGREGATES.add(bind)
    return bool(found)


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """`[since, until)` (None: open) read from `source`: "raw", "hour" or "day"."""

    source: str
    since: datetime | None
    until: datetime | None


def _floor(moment: datetime, step: timedelta) -> datetime:
    floored = moment.replace(minute=0, second=0, microsecond=0)
    return floored.replace(hour=0) if step == _DAY else floored


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floored = _floor(moment, step)
    return floored if floored == moment else floored + step


def plan(since: datetime | None, until: datetime | None, *, by_hour: bool = False) -> list[Part]:
    """The parts `[since, until)` is read from (aware bounds; `by_hour`: no daily part)."""
    since = since.astimezone(UTC) if since is not None else None  # hours and days are UTC's
    until = until.astimezone(UTC) if until is not None else None
    low = _ceil(since, _HOUR) if since is not None else None
    high = _floor(until, _HOUR) if until is not None else None
    if low is not None and high is not None and low >= high:
        return [Part("raw", since, until)]  # no whole hour inside
    parts = []
    if since is not None and low is not None and since < low:
        parts.append(Part("raw", since, low))
    if until is not None and high is not None and high < until:
        parts.append(Part("raw", high, until))
    day_low = _ceil(low, _DAY) if low is not None else None
    day_high = _floor(high, _DAY) if high is not None else None
    if by_hour or (day_low is not None and day_high is not None and day_low >= day_high):
        return [*parts, Part("hour", low, high)]
    parts.append(Part("day", day_low, day_high))
    if low is not None and day_low is not None and low < day_low:
        parts.append(Part("hour", low, day_low))
    if high is not None and day_high is not None and day_high < high:
        parts.append(Part("hour", day_high, high))
    return parts


async def pruned_before(session: AsyncSession) -> datetime | None:
    """The prune cutoff (`course_llm.db.prune`): older rows are gone but still in the aggregates."""
    moment: datetime | None = await session.scalar(sa.select(PRUNED.c.pruned_before).where(PRUNED.c.id == 1))
    return moment


def _whole_hours_if_pruned(part: Part, cutoff: datetime | None) -> Part:
    """A raw part older than the prune cutoff, as the whole hours around it.

    Its rows are gone, but the hourly aggregate still has them, so the summary stays right to the
    hour instead of losing the part. (The cutoff is a UTC midnight and a raw part lies within one
    hour, so a part is either wholly before it or not at all.)
    """
    if part.source != "raw" or cutoff is None or part.since is None or part.until is None:
        return part
    if part.until > cutoff:
        return part
    return Part("hour", _floor(part.since, _HOUR), _ceil(part.until, _HOUR))


def _aggregate_select(part: Part, names: list[str], filters: UsageFilters, dialect: str) -> sa.Select[Any]:
    grain: Grain = "hour" if part.source == "hour" else "day"
    table = table_of(grain)
    columns = table.c
    keys = [group_expression(name, dialect, columns, "period") for name in names]
    bounded = dataclasses.replace(filters, since=part.since, until=part.until)
    return (
        sa.select(
            *keys,
            sa.func.sum(columns.calls).label("calls"),
            sa.func.sum(sa.case((columns.success == sa.false(), columns.calls), else_=0)).label("failures"),
            sa.func.sum(sa.case((columns.success == sa.true(), columns.calls), else_=0)).label("successes"),
            sa.func.sum(columns.fallbacks).label("fallbacks"),
            int_sum(columns.tokens_in, dialect).label("tokens_in"),
            int_sum(columns.tokens_out, dialect).label("tokens_out"),
            sa.func.sum(columns.cost_usd).label("cost_usd"),
            # A NaN or ±Infinity cost makes the raw SUM non-finite: no value, as there.
            sa.func.max(
                sa.case((sa.or_(columns.cost_usd.is_(None), columns.cost_nonfinite != 0), 1), else_=0)
            ).label("cost_unknown"),
            *(int_sum(columns[bucket], dialect).label(bucket) for bucket in BUCKET_COLUMNS),
        )
        .where(*conditions(bounded, columns=columns, time_column="period"))
        .group_by(*keys)
    )


def _bucket(latency: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """The histogram bucket of each raw row's latency, as `bucket_of` (NULL for no latency)."""
    if dialect == "postgresql":  # a binary search over the bounds, as bisect_right; NaN: the last
        bounds: sa.ColumnElement[Any] = sa.literal(list(BOUNDS), postgresql.ARRAY(sa.Double()))
        return sa.func.width_bucket(latency, bounds, type_=sa.Integer())
    return sa.literal_column(bucket_sql(latency.name), sa.Integer())


def _raw_select(part: Part, names: list[str], filters: UsageFilters, dialect: str) -> sa.Select[Any]:
    """The raw rows of a partial hour, grouped by the keys and by latency bucket.

    A row per (group, bucket) rather than a column per bucket: 112 `count(*) FILTER (…)` columns
    cost more to plan than a few thousand rows cost to read.
    """
    bounded = dataclasses.replace(filters, since=part.since, until=part.until)
    columns = TABLE.c
    keys = [group_expression(name, dialect) for name in names]
    bucket = _bucket(columns.latency_ms, dialect).label("bucket")
    return (
        sa.select(
            *keys,
            bucket,
            sa.func.count().label("calls"),
            sa.func.count().filter(columns.success == sa.false()).label("failures"),
            sa.func.count().filter(columns.success == sa.true()).label("successes"),
            sa.func.count()
            .filter(sa.and_(columns.success == sa.true(), columns.attempt > 1))
            .label("fallbacks"),
            int_sum(columns.tokens_in, dialect).label("tokens_in"),
            int_sum(columns.tokens_out, dialect).label("tokens_out"),
            sa.func.sum(columns.cost_usd).label("cost_usd"),
            sa.literal(0).label("cost_unknown"),  # a NULL raw cost is no cost
        )
        .where(*conditions(bounded))
        .group_by(*keys, bucket)
    )


Key = tuple[Any, ...]


def _merge(total: dict[str, Any], row: sa.RowMapping) -> None:
    for name in _COUNTS:
        total[name] = total.get(name, 0) + int(row[name] or 0)
    # NaN or ±Infinity in a stored cost stays in the sum, as in a raw SUM (and reads as None); an
    # aggregate cost with no value (NULL) is such a sum.
    cost = math.nan if row["cost_unknown"] else float(row["cost_usd"] or 0.0)
    total["cost_usd"] = total.get("cost_usd", 0.0) + cost
    counts = total.setdefault("buckets", [0] * len(BUCKET_COLUMNS))
    if "bucket" in row:  # raw rows: one bucket per result row (None: no latency)
        if row["bucket"] is not None:
            counts[row["bucket"]] += int(row["calls"])
        return
    for index, bucket in enumerate(BUCKET_COLUMNS):
        counts[index] += int(row[bucket] or 0)


def _figures(sums: dict[str, Any]) -> dict[str, Any]:
    counts = sums.pop("buckets", [])
    sums["p50_latency_ms"] = percentile(counts, 0.5)
    sums["p95_latency_ms"] = percentile(counts, 0.95)
    return sums


async def summarize_rollup(
    session: AsyncSession, filters: UsageFilters, names: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Group rows (keys, sums, p50/p95) and totals, as `db.usage`'s raw summaries return them."""
    return await _rolled_up(session, filters, names, await pruned_before(session))


async def _rolled_up(
    session: AsyncSession, filters: UsageFilters, names: list[str], cutoff: datetime | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`summarize_rollup` with the prune cutoff already read."""
    dialect = session.get_bind().dialect.name
    groups: dict[Key, dict[str, Any]] = {}
    totals: dict[str, Any] = {}
    parts = plan(filters.since, filters.until, by_hour="hour" in names)
    for part in (_whole_hours_if_pruned(part, cutoff) for part in parts):
        if part.source == "raw":
            statement = _raw_select(part, names, filters, dialect)
        else:
            statement = _aggregate_select(part, names, filters, dialect)
        for row in (await session.execute(statement)).mappings():
            key = tuple(row[name] for name in names)
            group = groups.setdefault(key, dict(zip(names, key, strict=True)))
            _merge(group, row)
            _merge(totals, row)
    if not totals:
        totals = dict.fromkeys(_COUNTS, 0) | {"cost_usd": 0.0}
    # A group whose rows were all deleted is a row of zeros in the aggregates: not a group.
    return [_figures(group) for group in groups.values() if group["calls"]], _figures(totals)


async def count_rows(session: AsyncSession, filters: UsageFilters) -> int:
    """How many llm_calls rows match `filters`: from the aggregates when they can say, else counted.

    A `total` over millions of rows is a scan of every match; the aggregates answer at the cost of
    a summary. Pruned rows are still in the aggregates but no longer in the table, so the
    aggregates count from the prune cutoff on, and the rows stored before it (none, unless some
    arrived after the prune) are counted one by one.
    """
    if not (servable(filters, []) and await aggregates_exist(session)):
        return await _counted(session, filters)
    cutoff = await pruned_before(session)
    if cutoff is None:
        _, totals = await _rolled_up(session, filters, [], cutoff)
        return int(totals["calls"])
    total = 0
    if filters.since is None or filters.since < cutoff:
        until = cutoff if filters.until is None else min(filters.until, cutoff)
        total += await _counted(session, dataclasses.replace(filters, until=until))
    if filters.until is None or filters.until > cutoff:
        since = cutoff if filters.since is None else max(filters.since, cutoff)
        _, totals = await _rolled_up(session, dataclasses.replace(filters, since=since), [], cutoff)
        total += int(totals["calls"])
    return total


async def _counted(session: AsyncSession, filters: UsageFilters) -> int:
    statement = sa.select(sa.func.count()).select_from(TABLE).where(*conditions(filters))
    return int(await session.scalar(statement) or 0)
