"""SQLAlchemy models: the `llm_calls` table, one row per LLM attempt.

`LLMCall` mirrors `course_llm.recording.records.CallRecord` field for field, so a record's `as_dict()` is an
INSERT's parameters as it stands. The schema itself only ever changes through Alembic
(`alembic/versions/`); `tests/test_db.py` proves these models and the migrations agree on SQLite and
PostgreSQL, so a column added here without a migration (or the other way round) fails the suite.

Every type is chosen to work on both databases: `Uuid` is native on PostgreSQL and CHAR(32) on
SQLite, `JSON` becomes JSONB on PostgreSQL, and the only server defaults are `false()`, which each
dialect renders in its own spelling.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from course_llm.recording.records import CallRecord, new_id, utcnow

__all__ = ["NAMING_CONVENTION", "Base", "LLMCall", "UTCDateTime"]

#: Constraint and index names (Alembic's "naming" docs), so SQLite and PostgreSQL get the same names
#: and a migration can drop them by name. `column_0_N_name` spells out every column of a composite
#: index (`ix_llm_calls_action_created_at`), where the docs' `column_0_label` would name only the first.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that stores UTC and always reads back a UTC-aware datetime.

    PostgreSQL keeps the instant in `timestamptz`, but SQLite stores a bare string and drops the
    offset: an aware non-UTC value would be written as its wall-clock time and read back naive.
    Converting to UTC on the way in and tagging UTC on the way out makes both databases agree.
    A naive datetime is refused rather than guessed at: LiteLLM's own timestamps are naive *local*
    time, and silently calling them UTC would shift every row by the server's offset.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} for a UTC column; attach a timezone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every course_llm table; carries the naming convention."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class LLMCall(Base):
    """One attempt of one LLM request (docs/architecture.md, "The llm_calls table")."""

    __tablename__ = "llm_calls"
    __table_args__ = (
        # Every usage query filters on a time range, mostly together with one grouping column.
        sa.Index("ix_llm_calls_created_at", "created_at"),
        sa.Index("ix_llm_calls_action_created_at", "action", "created_at"),
        sa.Index("ix_llm_calls_tenant_id_created_at", "tenant_id", "created_at"),
        sa.Index("ix_llm_calls_model_id_created_at", "model_id", "created_at"),
        sa.Index("ix_llm_calls_provider_created_at", "provider", "created_at"),
        # `/usage/requests/{request_id}` reads every attempt of one request.
        sa.Index("ix_llm_calls_request_id", "request_id"),
        # `status=cached` pages and summaries read only the (few) cache hits (alembic 0004).
        sa.Index(
            "ix_llm_calls_cache_hit_created_at",
            "created_at",
            postgresql_where=sa.text("cache_hit"),
            sqlite_where=sa.text("cache_hit"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid(), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(sa.String(64))
    attempt: Mapped[int] = mapped_column(sa.SmallInteger())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    action: Mapped[str] = mapped_column(sa.String(64))
    strategy: Mapped[str] = mapped_column(sa.String(64))
    served_strategy: Mapped[str] = mapped_column(sa.String(64))
    provider: Mapped[str] = mapped_column(sa.String(64))
    model_id: Mapped[str] = mapped_column(sa.String(128))
    tokens_in: Mapped[int | None] = mapped_column(sa.Integer())
    tokens_out: Mapped[int | None] = mapped_column(sa.Integer())
    latency_ms: Mapped[float | None] = mapped_column(sa.Double())
    cost_usd: Mapped[float | None] = mapped_column(sa.Double())
    success: Mapped[bool] = mapped_column(sa.Boolean())
    status_code: Mapped[int | None] = mapped_column(sa.Integer())
    error_class: Mapped[str | None] = mapped_column(sa.String(128))
    error_message: Mapped[str | None] = mapped_column(sa.Text())
    stream: Mapped[bool] = mapped_column(sa.Boolean(), default=False, server_default=sa.false())
    cache_hit: Mapped[bool] = mapped_column(sa.Boolean(), default=False, server_default=sa.false())
    tenant_id: Mapped[str | None] = mapped_column(sa.String(128))
    operation: Mapped[str | None] = mapped_column(sa.String(128))
    end_user: Mapped[str | None] = mapped_column(sa.String(256))
    # Added by migration 0003 (docs/architecture.md, "The llm_calls table").
    system_prompt_hash: Mapped[str | None] = mapped_column(sa.String(64))
    user_prompt_hash: Mapped[str | None] = mapped_column(sa.String(64))
    response_preview: Mapped[str | None] = mapped_column(sa.Text())
    source: Mapped[str] = mapped_column(sa.String(16))
    # `metadata` is taken by DeclarativeBase (the MetaData object), hence the trailing underscore.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON_TYPE, default=dict)

    def __repr__(self) -> str:
        return (
            f"LLMCall(id={self.id}, request_id={self.request_id!r}, attempt={self.attempt}, "
            f"model_id={self.model_id!r}, success={self.success})"
        )

    @classmethod
    def from_record(cls, record: CallRecord) -> LLMCall:
        """The row for `record` (not yet added to any session)."""
        values = record.as_dict()
        values["metadata_"] = values.pop("metadata")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Column name → value, the same keys as `CallRecord.as_dict()` (so `metadata`, not `metadata_`)."""
        mapper = sa.inspect(type(self))
        return {prop.columns[0].key: getattr(self, prop.key) for prop in mapper.column_attrs}
