"""The database layer: the llm_calls model, engines and session factories, writes, migrations.

Only this package imports SQLAlchemy (ruff's banned-api rule enforces it). Everything else in
course_llm passes an `async_sessionmaker` around and hands `CallRecord`s to `insert_records`.

    models   LLMCall, the table definition (mirrors records.CallRecord)
    session  create_session_factory, Database: URL → engine → sessions (SQLite tuned for concurrency)
    writes   insert_records (idempotent batch INSERT), count_calls, fetch_request
    held     BatchWriter: the logging writer's batches on one connection kept between them
    migrate  upgrade_database: Alembic, from a checkout or from the installed wheel
    errors   is_transient_db_error, is_database_error: "the database is away" vs "these rows are bad"
"""

from course_llm.db.errors import is_database_error, is_transient_db_error
from course_llm.db.held import BatchWriter
from course_llm.db.migrate import (
    MigrationsNotFoundError,
    alembic_config,
    head_revision,
    migrations_path,
    upgrade_database,
    upgrade_database_async,
)
from course_llm.db.models import Base, LLMCall
from course_llm.db.session import (
    Database,
    SessionFactory,
    create_engine,
    create_session_factory,
    dispose_session_factory,
    redact_url,
)
from course_llm.db.writes import count_calls, fetch_request, insert_records

__all__ = [
    "Base",
    "BatchWriter",
    "Database",
    "LLMCall",
    "MigrationsNotFoundError",
    "SessionFactory",
    "alembic_config",
    "count_calls",
    "create_engine",
    "create_session_factory",
    "dispose_session_factory",
    "fetch_request",
    "head_revision",
    "insert_records",
    "is_database_error",
    "is_transient_db_error",
    "migrations_path",
    "redact_url",
    "upgrade_database",
    "upgrade_database_async",
]
