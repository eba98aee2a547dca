"""Hourly and daily usage aggregates of llm_calls, kept by the database itself.

`llm_usage_hourly` and `llm_usage_daily` hold, per period (the UTC hour or day of `created_at`)
and per group of `DIMENSIONS`, the attempts' counts and sums and a latency histogram
(`course_llm.reporting.histogram`). Summaries read them instead of the raw rows
(`course_llm.db.rollup`), so a 30-day report reads tens of thousands of rows, not millions.

A trigger on llm_calls counts every inserted row, whoever inserts it (course_llm's writer, a COPY,
a plain SQL `INSERT`), in the same transaction, so the aggregates are exact at every commit,
the current hour included:

- PostgreSQL: one statement-level trigger with a transition table; each INSERT statement is
  grouped once (by period, dimensions and latency bucket, then by period and dimensions) and
  upserted, in key order so concurrent writers lock aggregate rows in the same order;
- SQLite: a row-level trigger (the only kind it has) upserting one row into each table.

Rows are matched on `(period, group_key)`: `group_key` spells every dimension unambiguously (a
length-prefixed value, `-` for NULL; SHA-256 of that on PostgreSQL, whose index entries are
bounded), because a unique index over nullable columns would let NULL groups repeat.

The aggregates count inserts only: `course-llm db prune` deletes raw rows and keeps them (that is
its purpose), and a row deleted or updated by hand still counts as inserted. `backfill_sql` builds
them from the rows already there (migration 0002 runs it).
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa

from course_llm.db.models import Base, UTCDateTime
from course_llm.reporting.histogram import BUCKETS, bucket_sql

__all__ = [
    "BUCKET_COLUMNS",
    "DAILY",
    "DIMENSIONS",
    "HOURLY",
    "SUM_COLUMNS",
    "Grain",
    "backfill_sql",
    "postgresql_trigger_sql",
    "sqlite_trigger_sql",
    "table_of",
]

Grain = Literal["hour", "day"]

#: The columns of llm_calls a group is made of (summaries can group and filter by each).
DIMENSIONS: tuple[str, ...] = (
    "action",
    "strategy",
    "served_strategy",
    "provider",
    "model_id",
    "tenant_id",
    "operation",
    "error_class",
    "success",
)
#: Per group: attempts, successful attempts after the first (fallbacks), and the sums.
SUM_COLUMNS: tuple[str, ...] = ("calls", "fallbacks", "tokens_in", "tokens_out", "cost_usd")
#: Per group: how many latencies fell in each histogram bucket.
BUCKET_COLUMNS: tuple[str, ...] = tuple(f"b{index}" for index in range(BUCKETS))

_LENGTHS = {"action": 64, "strategy": 64, "served_strategy": 64, "provider": 64, "model_id": 128}


def _table(name: str) -> sa.Table:
    columns: list[sa.Column[Any]] = [
        sa.Column("period", UTCDateTime(), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
    ]
    for dimension in DIMENSIONS:
        if dimension == "success":
            columns.append(sa.Column(dimension, sa.Boolean(), nullable=False))
        else:
            length = _LENGTHS.get(dimension, 128)
            columns.append(sa.Column(dimension, sa.String(length), nullable=dimension not in _LENGTHS))
    columns += [
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("fallbacks", sa.BigInteger(), nullable=False),
        sa.Column("tokens_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Double(), nullable=False),
        *(sa.Column(bucket, sa.Integer(), nullable=False) for bucket in BUCKET_COLUMNS),
    ]
    return sa.Table(name, Base.metadata, *columns, sa.PrimaryKeyConstraint("period", "group_key"))


HOURLY = _table("llm_usage_hourly")
DAILY = _table("llm_usage_daily")
_GRAINS: tuple[tuple[Grain, sa.Table], ...] = (("hour", HOURLY), ("day", DAILY))


def table_of(grain: Grain) -> sa.Table:
    return HOURLY if grain == "hour" else DAILY


# --- what the trigger and the backfill run (SQL text: both run inside the database) ---------------


def _group_key(prefix: str, dialect: str) -> str:
    parts = []
    for dimension in DIMENSIONS:
        column = f"{prefix}{dimension}"
        if dimension == "success":
            parts.append(f"CASE WHEN {column} THEN 't' ELSE 'f' END")
        else:
            parts.append(f"CASE WHEN {column} IS NULL THEN '-' ELSE length({column}) || ':' || {column} END")
    key = " || ".join(parts)
    return f"encode(sha256(convert_to({key}, 'UTF8')), 'hex')" if dialect == "postgresql" else key


def _period(column: str, grain: Grain, dialect: str) -> str:
    if dialect == "postgresql":
        return f"date_trunc('{grain}', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    # SQLite keeps `YYYY-MM-DD HH:MM:SS…` text (another writer may have used a `T`); the period is
    # stored in the same form, so it compares with bound times like created_at does.
    if grain == "hour":
        return f"replace(substr({column}, 1, 13), 'T', ' ') || ':00:00'"
    return f"substr({column}, 1, 10) || ' 00:00:00'"


_TARGET = ["period", "group_key", *DIMENSIONS, *SUM_COLUMNS, *BUCKET_COLUMNS]


def _grouped_insert(table: str, source: str, grain: Grain, dialect: str, *, upsert: bool) -> str:
    """INSERT INTO `table` the groups of the rows in `source`: by bucket first, then by group."""
    dims = ", ".join(DIMENSIONS)
    tokens = "sum" if dialect == "postgresql" else "total"  # SQLite's sum() fails past 2**63
    per_bucket = (
        f"SELECT {_period('created_at', grain, dialect)} AS period, {dims},"
        f" {bucket_sql('latency_ms')} AS bucket, count(*) AS n,"
        " count(*) FILTER (WHERE success AND attempt > 1) AS fallbacks,"
        f" coalesce({tokens}(tokens_in), 0) AS tokens_in, coalesce({tokens}(tokens_out), 0) AS tokens_out,"
        f" coalesce(sum(cost_usd), 0.0) AS cost_usd"
        f" FROM {source} GROUP BY period, {dims}, bucket"
    )
    buckets = ", ".join(f"coalesce(sum(n) FILTER (WHERE bucket = {index}), 0)" for index in range(BUCKETS))
    sums = f"sum(n), sum(fallbacks), {tokens}(tokens_in), {tokens}(tokens_out), sum(cost_usd)"
    statement = (
        f"INSERT INTO {table} ({', '.join(_TARGET)})"
        f" SELECT period, {_group_key('', dialect)}, {dims}, {sums}, {buckets}"
        f" FROM ({per_bucket}) AS per_bucket GROUP BY period, {dims} ORDER BY 1, 2"
    )
    return statement + (_on_conflict(table) if upsert else "")


def _on_conflict(table: str) -> str:
    added = ", ".join(
        f"{column} = {table}.{column} + excluded.{column}" for column in (*SUM_COLUMNS, *BUCKET_COLUMNS)
    )
    return f" ON CONFLICT (period, group_key) DO UPDATE SET {added}"


def backfill_sql(dialect: str) -> list[str]:
    """Statements that fill both (empty) aggregate tables from the llm_calls rows already there."""
    return [
        _grouped_insert(table.name, "llm_calls", grain, dialect, upsert=False) for grain, table in _GRAINS
    ]


def postgresql_trigger_sql() -> list[str]:
    """The PostgreSQL function and statement-level trigger that count every inserted row."""
    body = ";\n".join(
        _grouped_insert(table.name, "new_rows", grain, "postgresql", upsert=True) for grain, table in _GRAINS
    )
    return [
        "CREATE OR REPLACE FUNCTION course_llm_count_calls() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
        f"BEGIN\n{body};\nRETURN NULL;\nEND\n$body$",
        "CREATE TRIGGER llm_calls_count AFTER INSERT ON llm_calls REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION course_llm_count_calls()",
    ]


def sqlite_trigger_sql() -> list[str]:
    """The SQLite row-level trigger that counts every inserted row into both tables."""
    dims = ", ".join(f"NEW.{dimension}" for dimension in DIMENSIONS)
    buckets = ", ".join(f"(bucket IS {index})" for index in range(BUCKETS))
    inserts = []
    for grain, table in _GRAINS:
        # `WHERE true`: SQLite needs it to parse ON CONFLICT after INSERT … SELECT ("upsert" docs).
        inserts.append(
            f"INSERT INTO {table.name} ({', '.join(_TARGET)})"
            f" SELECT {_period('NEW.created_at', grain, 'sqlite')}, {_group_key('NEW.', 'sqlite')}, {dims},"
            " 1, (NEW.success AND NEW.attempt > 1), coalesce(NEW.tokens_in, 0),"
            f" coalesce(NEW.tokens_out, 0), coalesce(NEW.cost_usd, 0.0), {buckets}"
            f" FROM (SELECT {bucket_sql('NEW.latency_ms')} AS bucket) WHERE true" + _on_conflict(table.name)
        )
    return [
        "CREATE TRIGGER llm_calls_count AFTER INSERT ON llm_calls BEGIN\n" + ";\n".join(inserts) + ";\nEND"
    ]
