"""Engines and session factories: the one place that turns a database URL into connections.

Everything that talks to the database gets an `async_sessionmaker` built here, never a module-level
engine (nothing runs at import). `Database` owns an engine and its factory for code that wants one
object with `aclose()`; `create_session_factory` is the contract entry point (docs/architecture.md, "Python
API") and `dispose_session_factory` closes what it opened.

SQLite needs three fixes to behave like a server database, all applied on every new connection:
- WAL journaling, so the proxy's readers (usage endpoints) never block the logging writer;
- a busy timeout, so a writer waits for a lock instead of failing at once with "database is locked";
- SQLAlchemy emits BEGIN itself. Python's sqlite3 (and aiosqlite on top of it) defers BEGIN until
  the first INSERT/UPDATE/DELETE and never emits it for SAVEPOINT or DDL, which breaks savepoints
  (a released savepoint commits for good) and transactional DDL. This is the workaround from the
  SQLAlchemy SQLite dialect docs, "Transactions with SQLite and the sqlite3 driver".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from course_llm.settings import normalize_database_url

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "Database",
    "SessionFactory",
    "create_engine",
    "create_session_factory",
    "dispose_session_factory",
    "redact_url",
]

#: What the rest of course_llm passes around: it opens sessions, it never sees an engine.
SessionFactory: TypeAlias = async_sessionmaker[AsyncSession]

#: How long an SQLite connection waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def redact_url(url: str) -> str:
    """`url` normalised to its async driver, with any password masked: safe to print or log."""
    try:
        return make_url(normalize_database_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        # Not a URL SQLAlchemy can parse; it may still hold a password, so do not echo it.
        return "<unparseable database URL>"


def _sqlite_file(url: URL) -> Path | None:
    """The database file of an SQLite URL, or None for in-memory databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query.get("mode"):
        return None
    return Path(database)


def _configure_sqlite(engine: AsyncEngine) -> None:
    # The connect and begin hooks work on the sync engine underneath; aiosqlite's adapter exposes
    # the sqlite3 API (`isolation_level`, `cursor()`), so the documented recipe applies unchanged.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _connection_record: Any) -> None:
        dbapi_connection.isolation_level = None  # sqlite3 stops emitting BEGIN; see `_on_begin`
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def create_engine(url: str, **engine_kwargs: Any) -> AsyncEngine:
    """An async engine for `url` (normalised to asyncpg/aiosqlite), with the SQLite fixes applied.

    `engine_kwargs` go to `create_async_engine` unchanged (`echo=True`, `poolclass=NullPool`, …).
    For an SQLite file the parent directory is created, so the default `course_llm.db` (or any
    `sqlite+aiosqlite:///some/dir/x.db`) works on a fresh checkout.
    """
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() == "postgresql":
        # An unreachable server must fail fast (asyncpg waits 60 s by default), and connections
        # that died with a server restart must be noticed before a batch is sent on them.
        engine_kwargs.setdefault("pool_pre_ping", True)
        # JIT off: course_llm's reports are short queries with many columns (a latency histogram
        # is 112), which PostgreSQL's planner costs above `jit_above_cost`; compiling one took 18 s
        # of a query that runs in 0.25 s (bench/bench_usage.py at 10M rows).
        connect_args = {"timeout": 5, "server_settings": {"jit": "off"}}
        engine_kwargs["connect_args"] = {**connect_args, **engine_kwargs.get("connect_args", {})}
    engine = create_async_engine(parsed, **engine_kwargs)
    if parsed.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def create_session_factory(url: str, **engine_kwargs: Any) -> SessionFactory:
    """An `async_sessionmaker` on a new engine for `url`; close it with `dispose_session_factory`.

    Sessions keep their objects loaded after commit (`expire_on_commit=False`): rows handed back to
    callers are read after the session is gone, and an expired attribute would need a live session.
    """
    return async_sessionmaker(create_engine(url, **engine_kwargs), expire_on_commit=False)


async def dispose_session_factory(factory: SessionFactory) -> None:
    """Close every pooled connection of the engine `factory` is bound to (no-op when unbound)."""
    bind = factory.kw.get("bind")
    if isinstance(bind, AsyncEngine):
        await bind.dispose()


class Database:
    """An engine and its session factory, owned together and closed together.

    ```python
    async with Database(settings.database_url) as db:
        await insert_records(db.session_factory, records)
    ```
    """

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.engine = create_engine(url, **engine_kwargs)
        self.session_factory: SessionFactory = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def url(self) -> URL:
        return self.engine.url

    @property
    def dialect_name(self) -> str:
        return self.engine.dialect.name

    async def aclose(self) -> None:
        """Dispose of the engine: every pooled connection is closed. Safe to call twice."""
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Database({redact_url(str(self.engine.url))!r})"
