"""Hourly and daily usage aggregates, kept by a trigger on llm_calls, built from the rows already there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

The tables, the trigger and the backfill are course_llm.db.aggregates' (docs/architecture.md,
"Usage aggregates"). Unlike 0001 this migration imports them: the trigger's SQL is generated (112
histogram columns, a binary search over the bucket bounds), and a copy would drift from the
queries that read the tables. The histogram layout is a storage format: changing
`course_llm.reporting.histogram` needs a new migration that rebuilds the aggregates.

The triggers are created before the backfill, in the same transaction: on PostgreSQL, CREATE
TRIGGER locks llm_calls against writes until the commit, so no row is counted twice or missed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from course_llm.db.aggregates import (
    DAILY,
    HOURLY,
    PRUNED,
    backfill_sql,
    postgresql_trigger_sql,
    sqlite_trigger_sql,
)

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in (HOURLY, DAILY):
        columns = [
            sa.Column(
                column.name,
                sa.DateTime(timezone=True) if column.name == "period" else column.type,
                nullable=column.nullable,
            )
            for column in table.columns
        ]
        op.create_table(
            table.name,
            *columns,
            sa.PrimaryKeyConstraint("period", "group_key", name=op.f(f"pk_{table.name}")),
        )
    op.create_table(
        PRUNED.name,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("pruned_before", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{PRUNED.name}")),
    )
    trigger = postgresql_trigger_sql() if dialect == "postgresql" else sqlite_trigger_sql()
    for statement in [*trigger, *backfill_sql(dialect)]:
        op.execute(sa.text(statement))


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for operation in ("insert", "update", "delete"):
        on_table = " ON llm_calls" if postgresql else ""
        op.execute(sa.text(f"DROP TRIGGER IF EXISTS llm_calls_count_{operation}{on_table}"))
    if postgresql:
        op.execute(sa.text("DROP FUNCTION IF EXISTS course_llm_count_calls()"))
    for table in (PRUNED, DAILY, HOURLY):
        op.drop_table(table.name)
