"""Create llm_calls: one row per LLM attempt, with the indexes the usage reports filter on.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Hand-checked to be portable: `sa.Uuid` is native UUID on PostgreSQL and CHAR(32) on SQLite, the
JSON column is JSONB on PostgreSQL only, and the boolean defaults use `sa.false()`, which each
dialect renders in its own spelling (autogenerate wrote `sa.text("false")`, PostgreSQL's). Types
are spelled out here rather than imported from course_llm.db.models: a migration must keep meaning
what it meant when it was written, whatever the models become.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index name, columns), named by the models' naming convention.
INDEXES: list[tuple[str, list[str]]] = [
    ("ix_llm_calls_created_at", ["created_at"]),
    ("ix_llm_calls_action_created_at", ["action", "created_at"]),
    ("ix_llm_calls_tenant_id_created_at", ["tenant_id", "created_at"]),
    ("ix_llm_calls_model_id_created_at", ["model_id", "created_at"]),
    ("ix_llm_calls_provider_created_at", ["provider", "created_at"]),
    ("ix_llm_calls_request_id", ["request_id"]),
]


def upgrade() -> None:
    op.create_table(
        "llm_calls",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("strategy", sa.String(length=64), nullable=False),
        sa.Column("served_strategy", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("cost_usd", sa.Double(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error_class", sa.String(length=128), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("stream", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=True),
        sa.Column("operation", sa.String(length=128), nullable=True),
        sa.Column("end_user", sa.String(length=256), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_calls")),
    )
    for name, columns in INDEXES:
        op.create_index(op.f(name), "llm_calls", columns, unique=False)


def downgrade() -> None:
    for name, _columns in reversed(INDEXES):
        op.drop_index(op.f(name), table_name="llm_calls")
    op.drop_table("llm_calls")
