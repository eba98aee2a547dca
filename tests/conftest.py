"""Shared fixtures for the course_llm test suite.

Sections, each owned by the tests that need it; add new fixtures in their own marked section.

Database (below): every DB test runs on SQLite and on PostgreSQL through the parametrized
`database_url` fixture. Each database is created and migrated once per session; tests either use
`session_factory` (real commits, table emptied after the test) or `db_session` /
`rollback_session_factory` (everything inside one outer transaction, rolled back after the test).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from course_llm.db import create_engine, create_session_factory, dispose_session_factory
from course_llm.db.migrate import upgrade_database
from tests.usage_seed import empty_usage

# LiteLLM state resets, fake provider keys and respx provider mocks.
pytest_plugins = ["tests.llm_fixtures"]


@pytest.fixture(autouse=True)
def _journal_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers built from `Settings()` journal under the test's tmp_path, never in the checkout
    (the default sits next to `course_llm.db` in the working directory)."""
    monkeypatch.setenv("COURSE_LLM_SPOOL_PATH", str(tmp_path / "default-journal"))


# ================================================================================================
# Database fixtures
# ================================================================================================

#: The server the PostgreSQL tests run on; each session creates (and drops) its own database there.
#: CI or a developer may point elsewhere with COURSE_LLM_TEST_POSTGRES_URL.
POSTGRES_ADMIN_URL = os.environ.get(
    "COURSE_LLM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def _postgres_admin_connection(admin_url: str) -> asyncpg.Connection:
    """A connection to the server's maintenance database (`postgres`, else `test`) to CREATE/DROP in."""
    url = make_url(admin_url)
    candidates = [url.database] if url.database else ["postgres", "test"]
    last_error: Exception | None = None
    for database in candidates:
        try:
            return await asyncpg.connect(
                host=url.host or "127.0.0.1",
                port=url.port or 5432,
                user=url.username or "postgres",
                password=url.password,
                database=database,
                timeout=5,
            )
        except asyncpg.InvalidCatalogNameError as exc:  # that maintenance database is missing
            last_error = exc
    assert last_error is not None
    raise last_error


async def _postgres_admin(admin_url: str, sql: str) -> None:
    connection = await _postgres_admin_connection(admin_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def _postgres_unreachable(reason: str) -> NoReturn:
    """Skip on a developer machine; fail under CI, where a silent skip would hide every PG test."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the PostgreSQL tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file for this test session."""
    path = tmp_path_factory.mktemp("sqlite") / "course_llm_test.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_database(url)
    return url


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database `course_llm_test_<random>`, dropped at session end.

    Sync on purpose: it runs its own short event loops (asyncio.run) for CREATE/DROP DATABASE, and
    `upgrade_database` needs a thread with no loop running, so no session-scoped loop is involved.
    """
    server = make_url(POSTGRES_ADMIN_URL)
    where = f"{server.host or '127.0.0.1'}:{server.port or 5432}"
    name = f"course_llm_test_{secrets.token_hex(6)}"
    try:
        # CREATE DATABASE cannot take a bind parameter; the name is ours (hex), so quoting is safe.
        asyncio.run(_postgres_admin(POSTGRES_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    except (
        OSError,  # refused connection, unknown host, timeout (TimeoutError is an OSError)
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,  # the server is still starting up
        asyncpg.InvalidAuthorizationSpecificationError,  # no such role, or password refused
    ) as exc:
        _postgres_unreachable(f"PostgreSQL not reachable on {where}: {type(exc).__name__}: {exc}")
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        yield url
    finally:
        # WITH (FORCE) (PostgreSQL 13+) ends connections a failed test may have leaked.
        asyncio.run(_postgres_admin(POSTGRES_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """URL of a migrated database; every test using it runs once on SQLite and once on PostgreSQL.

    The databases are set up lazily, so `-m "not postgres"` never touches the PostgreSQL server.
    """
    url: str = request.getfixturevalue(f"{request.param}_database_url")
    return url


async def _empty_llm_calls(factory: async_sessionmaker[AsyncSession]) -> None:
    async with factory() as session, session.begin():
        await empty_usage(session)


@pytest.fixture
async def session_factory(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A real `async_sessionmaker` on the migrated database: commits are real, as in production.

    llm_calls is emptied before (in case another fixture left rows) and after the test, and the
    engine is disposed. Use it for code that opens its own sessions and commits (the writer).
    """
    async for factory in _emptied_factory(database_url):
        yield factory


@pytest.fixture
async def sqlite_session_factory(sqlite_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """`session_factory` on SQLite only, for what only SQLite keeps (the text plain SQL stored)."""
    async for factory in _emptied_factory(sqlite_database_url):
        yield factory


async def _emptied_factory(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    factory = create_session_factory(url)
    try:
        await _empty_llm_calls(factory)
        yield factory
        await _empty_llm_calls(factory)
    finally:
        await dispose_session_factory(factory)


@pytest.fixture
async def db_connection(database_url: str) -> AsyncIterator[AsyncConnection]:
    """A connection inside an outer transaction that is rolled back after the test."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            transaction = await connection.begin()
            try:
                yield connection
            finally:
                await transaction.rollback()
    finally:
        await engine.dispose()


@pytest.fixture
async def db_session(db_connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    """An `AsyncSession` whose commits become SAVEPOINT releases inside `db_connection`'s transaction.

    Nothing it writes outlives the test ("Joining a Session into an External Transaction",
    SQLAlchemy docs), so tests using it need no cleanup and never see each other's rows.
    """
    session = AsyncSession(
        bind=db_connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        await session.close()


@pytest.fixture
def rollback_session_factory(db_connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """Like `db_session`, as a session factory: for code that takes one (`insert_records`, queries).

    Every session it makes joins the same outer transaction, so they all see each other's writes
    and everything is rolled back after the test.
    """
    return async_sessionmaker(
        bind=db_connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )


# ================================================================================================
# (end of database fixtures)
# ================================================================================================
