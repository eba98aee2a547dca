"""Alembic environment for course_llm: Alembic's async template, adapted to SQLite and PostgreSQL.

Changes from `alembic/templates/async/env.py`, each for a reason:
- the URL comes from the Config (`course_llm.db.migrate.alembic_config` sets it) or else from
  `COURSE_LLM_DATABASE_URL` / the Settings default, so the plain `alembic` command and
  `course-llm db upgrade` migrate the same database;
- the engine comes from `course_llm.db.session.create_engine`, so SQLite gets the same connection
  setup as the application (real BEGIN, WAL, busy timeout, parent directory created);
- `render_as_batch` on SQLite, whose ALTER TABLE cannot change or drop columns;
- `compare_type` so autogenerate (and the models-vs-migrations test) notices type changes;
- `render_item` writes a model's TypeDecorator (`UTCDateTime`) as the SQLAlchemy type it wraps, so
  a generated migration never imports course_llm code that may later change or disappear;
- on PostgreSQL the migration transaction first takes a transaction-scoped advisory lock: several
  `serve` replicas starting at once against one fresh database migrate it one after another (the
  later ones find it at head and do nothing) instead of racing to create the same tables.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

import sqlalchemy as sa
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url

from alembic import context
from course_llm.db.models import Base
from course_llm.db.session import create_engine
from course_llm.settings import Settings, normalize_database_url

config = context.config

# Only the `alembic` command has an ini file with logging sections; `alembic_config()` builds its
# Config in code and leaves logging to the application.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

#: The PostgreSQL advisory lock that serialises concurrent migrations (any constant bigint would
#: do; this one is "course_llm" in ASCII, truncated to 8 bytes).
MIGRATION_LOCK_KEY = int.from_bytes(b"course_l", "big") >> 1


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return normalize_database_url(url) if url else Settings().database_url


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    if type_ == "type" and isinstance(obj, sa.TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False  # everything else: Alembic's default rendering


def _configure_options(dialect_name: str) -> dict[str, Any]:
    return {"render_as_batch": dialect_name == "sqlite", "compare_type": True, "render_item": _render_item}


def run_migrations_offline() -> None:
    """Emit the migration SQL as text (`alembic upgrade head --sql`) instead of running it."""
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(make_url(url).get_backend_name()),
    )

    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        **_configure_options(connection.dialect.name),
    )

    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until this transaction ends; Alembic reads the current revision after it.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_async_migrations() -> None:
    """Open one connection (no pool: migrations are a one-off) and run the migrations on it."""
    connectable = create_engine(_database_url(), poolclass=pool.NullPool)

    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)

    await connectable.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
