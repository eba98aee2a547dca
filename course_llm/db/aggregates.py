"""Hourly and daily usage aggregates of llm_calls, kept by the database itself.

`llm_usage_hourly` and `llm_usage_daily` hold, per period (the UTC hour or day of `created_at`)
and per group of `DIMENSIONS`, the attempts' counts and sums and a latency histogram
(`course_llm.reporting.histogram`). Summaries read them instead of the raw rows
(`course_llm.db.rollup`), so a 30-day report reads tens of thousands of rows, not millions.

Triggers on llm_calls count every inserted row, whoever inserts it (course_llm's writer, a COPY,
a plain SQL `INSERT`), take away every deleted row and recount every updated one, in the same
transaction, so the aggregates are exact at every commit, the current hour included:

- PostgreSQL: statement-level triggers with transition tables; each statement's rows are
  grouped once (by period, dimensions and latency bucket, then by period and dimensions) and
  upserted, in key order so concurrent writers lock aggregate rows in the same order;
- SQLite: row-level triggers (the only kind it has) upserting one row into each table.

Rows are matched on `(period, group_key)`: `group_key` spells every dimension unambiguously (a
length-prefixed value, `-` for NULL; SHA-256 of that on PostgreSQL, whose index entries are
bounded), because a unique index over nullable columns would let NULL groups repeat.

Rows older than the prune cutoff (`llm_usage_pruned`, set by `course-llm db prune`) stay counted
when deleted: that is what pruning is for. A group whose rows were all deleted keeps a row of
zeros, which summaries leave out. `backfill_sql` builds the aggregates from the rows already
there (migration 0002 runs it).
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
    "PRUNED",
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
#: Per group: attempts, successful attempts after the first (fallbacks), the sums, and how many
#: costs were NaN or ±Infinity (kept out of `cost_usd`, so correcting or deleting such a row
#: takes it away again: NaN - NaN would stay NaN).
SUM_COLUMNS: tuple[str, ...] = ("calls", "fallbacks", "tokens_in", "tokens_out", "cost_usd", "cost_nonfinite")
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
        # Finite costs only; NULL if even their sum overflows (SQLite stores that NaN as NULL).
        sa.Column("cost_usd", sa.Double(), nullable=True),
        sa.Column("cost_nonfinite", sa.BigInteger(), nullable=False),
        *(sa.Column(bucket, sa.Integer(), nullable=False) for bucket in BUCKET_COLUMNS),
    ]
    return sa.Table(name, Base.metadata, *columns, sa.PrimaryKeyConstraint("period", "group_key"))


#: The prune cutoff (one row, id 1): rows older than it were pruned and stay in the aggregates.
PRUNED = sa.Table(
    "llm_usage_pruned",
    Base.metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("pruned_before", UTCDateTime(), nullable=False),
)
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
#: Rows older than the prune cutoff stay counted when deleted (`course_llm.db.prune`).
_KEPT_BEFORE = f"(SELECT pruned_before FROM {PRUNED.name} WHERE id = 1)"


def _finite(cost: str) -> str:
    """`cost` when it is a finite number, else 0 (x - x = 0 fails for NaN, ±Infinity and NULL)."""
    return f"CASE WHEN {cost} - {cost} = 0 THEN {cost} ELSE 0.0 END"


def _nonfinite(cost: str) -> str:
    """Whether `cost` is NaN or ±Infinity (SQLite turns Infinity - Infinity into NULL)."""
    return f"{cost} IS NOT NULL AND NOT coalesce({cost} - {cost} = 0, false)"


def _grouped_insert(table: str, source: str, grain: Grain, dialect: str, *, sign: int = 1) -> str:
    """Add (sign 1) or take away (-1) the groups of the rows in `source`: by bucket, then by group."""
    dims = ", ".join(DIMENSIONS)
    tokens = "sum" if dialect == "postgresql" else "total"  # SQLite's sum() fails past 2**63
    per_bucket = (
        f"SELECT {_period('created_at', grain, dialect)} AS period, {dims},"
        f" {bucket_sql('latency_ms')} AS bucket, count(*) AS n,"
        " count(*) FILTER (WHERE success AND attempt > 1) AS fallbacks,"
        f" coalesce({tokens}(tokens_in), 0) AS tokens_in, coalesce({tokens}(tokens_out), 0) AS tokens_out,"
        f" coalesce(sum({_finite('cost_usd')}), 0.0) AS cost_usd,"
        f" count(*) FILTER (WHERE {_nonfinite('cost_usd')}) AS cost_nonfinite"
        f" FROM {source} GROUP BY period, {dims}, bucket"
    )
    buckets = ", ".join(
        f"{sign} * coalesce(sum(n) FILTER (WHERE bucket = {index}), 0)" for index in range(BUCKETS)
    )
    summed = [("sum", "n"), ("sum", "fallbacks"), (tokens, "tokens_in"), (tokens, "tokens_out")]
    summed += [("sum", "cost_usd"), ("sum", "cost_nonfinite")]
    sums = ", ".join(f"{sign} * {function}({column})" for function, column in summed)
    return (
        f"INSERT INTO {table} ({', '.join(_TARGET)})"
        f" SELECT period, {_group_key('', dialect)}, {dims}, {sums}, {buckets}"
        f" FROM ({per_bucket}) AS per_bucket GROUP BY period, {dims} ORDER BY 1, 2" + _on_conflict(table)
    )


def _on_conflict(table: str) -> str:
    added = ", ".join(
        f"{column} = {table}.{column} + excluded.{column}" for column in (*SUM_COLUMNS, *BUCKET_COLUMNS)
    )
    return f" ON CONFLICT (period, group_key) DO UPDATE SET {added}"


def backfill_sql(dialect: str) -> list[str]:
    """Statements that fill both (empty) aggregate tables from the llm_calls rows already there."""
    return [_grouped_insert(table.name, "llm_calls", grain, dialect) for grain, table in _GRAINS]


def postgresql_trigger_sql() -> list[str]:
    """The PostgreSQL function and its three statement-level triggers (insert, update, delete)."""

    def counted(source: str, sign: int) -> str:
        return ";\n".join(
            _grouped_insert(t.name, source, grain, "postgresql", sign=sign) for grain, t in _GRAINS
        )

    # A delete takes rows away unless they are older than the prune cutoff; an update always
    # takes the old version away (it was counted when inserted) and adds the new one.
    still_counted = f"(SELECT * FROM old_rows WHERE created_at >= coalesce({_KEPT_BEFORE}, '-infinity'))"
    body = (
        f"IF TG_OP = 'DELETE' THEN\n{counted(still_counted + ' AS old_counted', -1)};\nEND IF;\n"
        f"IF TG_OP = 'UPDATE' THEN\n{counted('old_rows', -1)};\nEND IF;\n"
        f"IF TG_OP IN ('INSERT', 'UPDATE') THEN\n{counted('new_rows', 1)};\nEND IF;\n"
    )
    transition = {
        "INSERT": "NEW TABLE AS new_rows",
        "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "DELETE": "OLD TABLE AS old_rows",
    }
    return [
        "CREATE OR REPLACE FUNCTION course_llm_count_calls() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
        f"BEGIN\n{body}RETURN NULL;\nEND\n$body$",
        *(
            f"CREATE TRIGGER llm_calls_count_{operation.lower()} AFTER {operation} ON llm_calls"
            f" REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION course_llm_count_calls()"
            for operation, tables in transition.items()
        ),
    ]


def _sqlite_upsert(row: str, sign: int) -> list[str]:
    """Add (sign 1) or take away (-1) one row (`NEW` or `OLD`) in both tables."""
    dims = ", ".join(f"{row}.{dimension}" for dimension in DIMENSIONS)
    buckets = ", ".join(f"{sign} * (bucket IS {index})" for index in range(BUCKETS))
    sums = (
        f"{sign}, {sign} * ({row}.success AND {row}.attempt > 1), {sign} * coalesce({row}.tokens_in, 0),"
        f" {sign} * coalesce({row}.tokens_out, 0), {sign} * ({_finite(f'{row}.cost_usd')}),"
        f" {sign} * ({_nonfinite(f'{row}.cost_usd')})"
    )
    # `WHERE true`: SQLite needs it to parse ON CONFLICT after INSERT … SELECT ("upsert" docs).
    return [
        f"INSERT INTO {table.name} ({', '.join(_TARGET)})"
        f" SELECT {_period(f'{row}.created_at', grain, 'sqlite')}, {_group_key(f'{row}.', 'sqlite')},"
        f" {dims}, {sums}, {buckets} FROM (SELECT {bucket_sql(f'{row}.latency_ms')} AS bucket) WHERE true"
        + _on_conflict(table.name)
        for grain, table in _GRAINS
    ]


def sqlite_trigger_sql() -> list[str]:
    """SQLite's row-level triggers: an insert adds the row, a delete takes it away, an update both."""
    kept = f"OLD.created_at < coalesce({_KEPT_BEFORE}, '')"

    def trigger(operation: str, statements: list[str], when: str = "") -> str:
        return (
            f"CREATE TRIGGER llm_calls_count_{operation.lower()} AFTER {operation} ON llm_calls{when} BEGIN\n"
            + ";\n".join(statements)
            + ";\nEND"
        )

    return [
        trigger("INSERT", _sqlite_upsert("NEW", 1)),
        trigger("DELETE", _sqlite_upsert("OLD", -1), f" WHEN NOT ({kept})"),
        trigger("UPDATE", [*_sqlite_upsert("OLD", -1), *_sqlite_upsert("NEW", 1)]),
    ]
