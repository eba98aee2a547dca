"""Prompt hashes and the opt-in response preview on llm_calls.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Three nullable columns (course_llm/recording/prompts.py says what they hold): `system_prompt_hash`
and `user_prompt_hash`, SHA-256 in hex (64 characters), and `response_preview`, text. Rows written
before this revision keep null in all three: their prompts are gone, and null is the columns' own
"not recorded".

Nullable columns without a default are a metadata-only change on both databases: PostgreSQL (11+)
does not rewrite the table, SQLite's ADD COLUMN never does. No index: nothing filters on them yet,
and each index costs every insert. Downgrade uses plain DROP COLUMN (SQLite 3.35+), not a batch
copy of the table, which would drop the usage-aggregate triggers of 0002 with the old table.
Types are spelled out, not imported from the models (see 0001).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (name, type) of the added columns, in the order they are added.
COLUMNS: list[tuple[str, sa.types.TypeEngine[str]]] = [
    ("system_prompt_hash", sa.String(length=64)),
    ("user_prompt_hash", sa.String(length=64)),
    ("response_preview", sa.Text()),
]


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("llm_calls", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    for name, _type in reversed(COLUMNS):
        op.drop_column("llm_calls", name)
