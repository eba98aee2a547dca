"""Tests of course_llm.db: schema, migrations, writes, engines, and shipping the migrations.

Every test taking `database_url` (directly or through `session_factory`, `db_session`, …) runs on
SQLite and on PostgreSQL (see the database section of conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from course_llm.db import (
    Base,
    Database,
    LLMCall,
    MigrationsNotFoundError,
    alembic_config,
    count_calls,
    create_engine,
    create_session_factory,
    dispose_session_factory,
    fetch_request,
    head_revision,
    insert_records,
    is_database_error,
    is_transient_db_error,
    migrations_path,
    redact_url,
    upgrade_database,
    upgrade_database_async,
)
from course_llm.recording.records import CallRecord, new_id

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_INDEXES = {
    "ix_llm_calls_created_at": ["created_at"],
    "ix_llm_calls_action_created_at": ["action", "created_at"],
    "ix_llm_calls_tenant_id_created_at": ["tenant_id", "created_at"],
    "ix_llm_calls_model_id_created_at": ["model_id", "created_at"],
    "ix_llm_calls_provider_created_at": ["provider", "created_at"],
    "ix_llm_calls_request_id": ["request_id"],
    "ix_llm_calls_cache_hit_created_at": ["created_at"],  # WHERE cache_hit (migration 0004)
}

Factory = async_sessionmaker[AsyncSession]


def make_record(**overrides: Any) -> CallRecord:
    """A CallRecord with every column set to a non-default value (unless overridden)."""
    values: dict[str, Any] = {
        "request_id": str(new_id()),
        "attempt": 2,
        "action": "course_structuring",
        "strategy": "quality",
        "served_strategy": "default",
        "provider": "anthropic",
        "model_id": "claude-sonnet",
        "success": False,
        "source": "proxy",
        "created_at": datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        "tokens_in": 1234,
        "tokens_out": 567,
        "latency_ms": 812.25,
        "cost_usd": 0.001234,
        "status_code": 429,
        "error_class": "RateLimitError",
        "error_message": "rate limited: retry after 2s … [truncated]",
        "stream": True,
        "cache_hit": True,
        "tenant_id": "acme",
        "operation": "grade_essay",
        "end_user": "user-42",
        "system_prompt_hash": "a" * 64,
        "user_prompt_hash": "b" * 64,
        "response_preview": "The cell is the unit of life",
        "metadata": {"tags": {"course": "bio101", "week": 3}, "list": [1, 2.5, None, {"deep": True}]},
    }
    values.update(overrides)
    return CallRecord(**values)


async def _run_on(database_url: str, fn: Any) -> Any:
    """Run the sync `fn(connection)` on a fresh connection to `database_url`."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(fn)
    finally:
        await engine.dispose()


def _schema_diff(metadata: sa.MetaData) -> Any:
    def diff(connection: sa.Connection) -> Any:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(context, metadata)

    return diff


def _current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


# --- migrations and models --------------------------------------------------------------------


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    assert await _run_on(database_url, _schema_diff(Base.metadata)) == []


async def test_schema_comparison_reports_a_column_the_migrations_lack(database_url: str) -> None:
    # Proves the test above can fail: a model column with no migration shows up in the diff.
    metadata = sa.MetaData()
    for other in Base.metadata.tables.values():
        other.to_metadata(metadata)
    table = metadata.tables["llm_calls"]
    table.append_column(sa.Column("region", sa.String(32), nullable=True))

    diff = await _run_on(database_url, _schema_diff(metadata))

    assert [(op[0], op[3].name) for op in diff] == [("add_column", "region")]


async def test_the_named_indexes_exist_on_llm_calls(database_url: str) -> None:
    def indexes(connection: sa.Connection) -> dict[str, list[str]]:
        return {ix["name"]: ix["column_names"] for ix in sa.inspect(connection).get_indexes("llm_calls")}

    assert await _run_on(database_url, indexes) == EXPECTED_INDEXES


def test_upgrade_database_twice_leaves_the_database_at_head(database_url: str) -> None:
    upgrade_database(database_url)
    upgrade_database(database_url)

    assert asyncio.run(_run_on(database_url, _current_revision)) == head_revision() == "0004"


async def test_upgrading_an_up_to_date_database_keeps_its_rows(
    session_factory: Factory, database_url: str
) -> None:
    await insert_records(session_factory, [make_record()])

    await upgrade_database_async(database_url)

    assert await count_calls(session_factory) == 1


def test_alembic_config_keeps_a_percent_encoded_password_intact() -> None:
    config = alembic_config("postgresql://app:p%40ss%25word@db/prod")

    assert config.get_main_option("sqlalchemy.url") == "postgresql+asyncpg://app:p%40ss%25word@db/prod"


def test_the_alembic_command_migrates_the_database_named_in_the_environment(tmp_path: Path) -> None:
    database = tmp_path / "from_cli.db"
    env = {**os.environ, "COURSE_LLM_DATABASE_URL": f"sqlite:///{database}"}
    command = [
        sys.executable,
        "-m",
        "alembic",
        "-c",
        str(ROOT / "alembic" / "alembic.ini"),
        "upgrade",
        "head",
    ]

    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )

    assert run.returncode == 0, run.stderr
    assert asyncio.run(_run_on(f"sqlite:///{database}", _current_revision)) == head_revision()


async def test_upgrade_database_refuses_to_run_inside_an_event_loop(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="upgrade_database_async"):
        upgrade_database(f"sqlite:///{tmp_path / 'never.db'}")

    assert not (tmp_path / "never.db").exists()


# --- writes -----------------------------------------------------------------------------------


async def test_a_call_record_round_trips_with_every_column(session_factory: Factory) -> None:
    record = make_record()
    assert all(value is not None for value in record.as_dict().values())

    assert await insert_records(session_factory, [record]) == 1
    [row] = await fetch_request(session_factory, record.request_id)

    assert row.as_dict() == record.as_dict()
    assert isinstance(row.id, uuid.UUID)
    assert row.created_at.tzinfo == UTC
    assert row.metadata_["tags"] == {"course": "bio101", "week": 3}


async def test_nullable_columns_round_trip_as_none(session_factory: Factory) -> None:
    record = CallRecord(
        request_id="r-1",
        attempt=1,
        action="text_processing",
        strategy="default",
        served_strategy="default",
        provider="deepseek",
        model_id="deepseek-chat",
        success=True,
        source="sdk",
    )
    await insert_records(session_factory, [record])

    [row] = await fetch_request(session_factory, "r-1")

    assert row.as_dict() == record.as_dict()
    assert row.tokens_in is None
    assert row.metadata_ == {}


async def test_created_at_in_another_timezone_reads_back_as_the_same_instant_in_utc(
    session_factory: Factory,
) -> None:
    local = datetime(2025, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    record = make_record(created_at=local)
    await insert_records(session_factory, [record])

    [row] = await fetch_request(session_factory, record.request_id)

    assert row.created_at == local
    assert row.created_at.utcoffset() == timedelta(0)
    assert row.created_at.hour == 10


async def test_a_naive_created_at_is_refused_and_nothing_is_written(session_factory: Factory) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        await insert_records(session_factory, [make_record(), make_record(created_at=datetime(2025, 1, 1))])

    assert await count_calls(session_factory) == 0


async def test_replaying_the_same_records_inserts_nothing_new(session_factory: Factory) -> None:
    records = [make_record(attempt=n) for n in (1, 2, 3)]

    assert await insert_records(session_factory, records) == 3
    assert await insert_records(session_factory, records) == 0
    assert await count_calls(session_factory) == 3


async def test_a_batch_mixing_old_and_new_records_inserts_only_the_new_ones(session_factory: Factory) -> None:
    old = [make_record(), make_record()]
    await insert_records(session_factory, old)

    assert await insert_records(session_factory, [*old, make_record()]) == 1
    assert await count_calls(session_factory) == 3


async def test_a_large_batch_is_inserted_in_full(session_factory: Factory) -> None:
    # More rows than one multi-row INSERT carries (SQLite's bound-parameter limit splits it).
    records = [make_record() for _ in range(3_000)]

    assert await insert_records(session_factory, records) == 3_000
    assert await count_calls(session_factory) == 3_000


async def test_inserting_no_records_writes_nothing(session_factory: Factory) -> None:
    assert await insert_records(session_factory, []) == 0
    assert await count_calls(session_factory) == 0


async def test_fetch_request_returns_only_that_requests_attempts_in_attempt_order(
    session_factory: Factory,
) -> None:
    request_id = str(new_id())
    attempts = [make_record(request_id=request_id, attempt=n) for n in (3, 1, 2)]
    await insert_records(session_factory, [*attempts, make_record(attempt=1)])

    rows = await fetch_request(session_factory, request_id)

    assert [row.attempt for row in rows] == [1, 2, 3]
    assert {row.request_id for row in rows} == {request_id}


async def test_stream_and_cache_hit_default_to_false_in_the_database(db_connection: AsyncConnection) -> None:
    # An INSERT that omits them (an older writer, a manual fix-up) gets the server default.
    table = Base.metadata.tables["llm_calls"]
    values = make_record().as_dict()
    del values["stream"], values["cache_hit"]
    await db_connection.execute(table.insert().values(**values))

    row = (await db_connection.execute(sa.select(table.c.stream, table.c.cache_hit))).one()

    assert tuple(row) == (False, False)


# --- the rollback fixtures ----------------------------------------------------------------------


async def test_a_commit_in_db_session_stays_inside_the_test_transaction(
    session_factory: Factory, db_session: AsyncSession
) -> None:
    record = make_record()
    db_session.add(LLMCall.from_record(record))
    await db_session.commit()

    assert await db_session.scalar(sa.select(sa.func.count()).select_from(LLMCall)) == 1
    assert await count_calls(session_factory) == 0  # another connection sees nothing committed


async def test_rollback_session_factory_sessions_share_writes_that_no_one_else_sees(
    session_factory: Factory, rollback_session_factory: Factory
) -> None:
    await insert_records(rollback_session_factory, [make_record(), make_record()])

    assert await count_calls(rollback_session_factory) == 2
    assert await count_calls(session_factory) == 0


# --- engines and session factories ----------------------------------------------------------------


async def test_a_sqlite_file_gets_its_directory_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    factory = create_session_factory(f"sqlite:///{path}")
    try:
        async with factory() as session:
            journal = await session.scalar(sa.text("PRAGMA journal_mode"))
            timeout = await session.scalar(sa.text("PRAGMA busy_timeout"))
    finally:
        await dispose_session_factory(factory)

    assert path.is_file()
    assert (journal, timeout) == ("wal", 30_000)


async def test_a_sync_postgresql_url_is_given_the_asyncpg_driver() -> None:
    factory = create_session_factory("postgresql://user:secret@db.example:5432/app")
    engine = factory.kw["bind"]
    await dispose_session_factory(factory)  # never connected: nothing to reach

    assert engine.url.drivername == "postgresql+asyncpg"
    assert engine.url.host == "db.example"


async def test_database_aclose_closes_its_pooled_connections(database_url: str) -> None:
    async with Database(database_url) as database:
        assert await count_calls(database.session_factory) >= 0
        assert database.engine.pool.checkedin() == 1

    assert database.engine.pool.checkedin() == 0


# --- telling database failures apart --------------------------------------------------------------


async def test_a_refused_connection_is_a_transient_database_error() -> None:
    factory = create_session_factory("postgresql://postgres@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(OSError) as caught:
            await count_calls(factory)
    finally:
        await dispose_session_factory(factory)

    assert is_transient_db_error(caught.value)


async def test_a_missing_table_is_a_transient_database_error(database_url: str) -> None:
    # An unmigrated database: the rows are fine, they must wait (spooled) until it is migrated.
    with pytest.raises(sa.exc.DBAPIError) as caught:
        await _run_on(database_url, lambda connection: connection.execute(sa.text("SELECT * FROM nowhere")))

    assert is_transient_db_error(caught.value)
    assert is_database_error(caught.value)


async def test_a_duplicate_primary_key_is_a_row_error_not_a_transient_one(
    db_connection: AsyncConnection,
) -> None:
    table = Base.metadata.tables["llm_calls"]
    values = make_record().as_dict()
    await db_connection.execute(table.insert(), [values])

    with pytest.raises(sa.exc.IntegrityError) as caught:
        await db_connection.execute(table.insert(), [values])

    assert not is_transient_db_error(caught.value)
    assert is_database_error(caught.value)


async def test_a_value_the_column_refuses_is_a_row_error_not_a_transient_one(
    session_factory: Factory,
) -> None:
    with pytest.raises(StatementError) as caught:
        await insert_records(session_factory, [make_record(created_at=datetime(2025, 1, 1))])

    assert not is_transient_db_error(caught.value)


def test_an_error_from_our_own_code_is_not_a_database_error() -> None:
    error = ValueError("bad registry")

    assert not is_database_error(error)
    assert not is_transient_db_error(error)


def test_redact_url_masks_the_password_and_names_the_async_driver() -> None:
    assert redact_url("postgresql://app:s3cr%40t@db:5432/prod") == "postgresql+asyncpg://app:***@db:5432/prod"


def test_redact_url_does_not_echo_a_url_it_cannot_parse() -> None:
    assert "hunter2" not in redact_url("not a url :hunter2@")


# --- finding and shipping the migrations ----------------------------------------------------------


def _fake_package(root: Path, *, wheel: bool, checkout: bool) -> Path:
    package = root / "course_llm"
    package.mkdir(parents=True)
    for directory in ([package / "_alembic"] if wheel else []) + ([root / "alembic"] if checkout else []):
        directory.mkdir()
        (directory / "env.py").write_text("")
    return package


def test_migrations_are_found_next_to_the_package_in_a_checkout() -> None:
    assert migrations_path() == ROOT / "alembic"
    assert (migrations_path() / "versions" / "0001_create_llm_calls.py").is_file()


def test_an_installed_package_uses_the_migrations_shipped_inside_it(tmp_path: Path) -> None:
    # A wheel installed into a site-packages that happens to sit next to an `alembic/` directory
    # must still use its own copy.
    package = _fake_package(tmp_path, wheel=True, checkout=True)

    assert migrations_path(package) == package / "_alembic"


def test_missing_migrations_raise_an_error_naming_both_places_looked(tmp_path: Path) -> None:
    package = _fake_package(tmp_path, wheel=False, checkout=False)

    with pytest.raises(MigrationsNotFoundError) as caught:
        migrations_path(package)

    assert caught.value.searched == [package / "_alembic", tmp_path / "alembic"]


def test_pyproject_ships_the_alembic_directory_as_course_llm_alembic() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]

    assert force_include["alembic"] == "course_llm/_alembic"


def test_the_built_wheel_ships_migrations_that_upgrade_a_database(tmp_path: Path) -> None:
    # Built from a copy so the checkout gets no build artefacts. README.md may not exist yet on a
    # fresh branch; the wheel's metadata needs one, and its content does not matter here.
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.db", "*.db-*")
    for name in ("course_llm", "alembic", "config"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, source / name)
    if not (source / "README.md").exists():
        (source / "README.md").write_text("# course-llm\n")
    try:
        import hatchling  # noqa: F401  # only to choose the build mode
    except ImportError:
        isolation = []  # pip fetches the pinned hatchling into a throwaway build environment
    else:
        isolation = ["--no-build-isolation"]

    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            *isolation,
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "dist").glob("course_llm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "course_llm/_alembic/env.py",
        "course_llm/_alembic/script.py.mako",
        "course_llm/_alembic/versions/0001_create_llm_calls.py",
        "course_llm/db/migrate.py",
        "course_llm/_registry/models.yaml",  # the default registry, for a CLI run from any directory
        "course_llm/proxy/static/dashboard.js",
        "course_llm/proxy/static/dashboard_tables.js",
    } <= names

    # Unpacked, the wheel is an installed package: upgrade a database using only its own files.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    database = tmp_path / "from_wheel.db"
    script = (
        "from course_llm.db.migrate import migrations_path, upgrade_database;"
        f"upgrade_database('sqlite:///{database}');"
        "print(migrations_path())"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == str(site / "course_llm" / "_alembic")
    assert asyncio.run(_run_on(f"sqlite:///{database}", _current_revision)) == head_revision()
