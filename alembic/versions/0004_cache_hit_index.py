"""A partial index on llm_calls.created_at for the rows answered from the response cache.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

`status=cached` (the usage filter for cache hits, issue 13) picks rows by `cache_hit`. Hits are
usually a small share of the rows, so an index over `created_at` of only those rows serves the
filter's pages and summaries without scanning every attempt of the range, and costs nothing on
the inserts of ordinary attempts. Both databases take `WHERE cache_hit` (SQLite 3.8+).

On PostgreSQL, CREATE INDEX holds a lock that blocks writes to llm_calls until it is built; the
proxy's journal keeps every answered call meanwhile (the writer retries), so nothing is lost, but a
large table is better indexed by hand first with `CREATE INDEX CONCURRENTLY` under the same name.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_llm_calls_cache_hit_created_at"


def upgrade() -> None:
    op.create_index(
        INDEX,
        "llm_calls",
        ["created_at"],
        if_not_exists=True,
        postgresql_where=sa.text("cache_hit"),
        sqlite_where=sa.text("cache_hit"),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="llm_calls")
