"""The PostgreSQL pool of each process: `COURSE_LLM_DB_POOL_SIZE` and `COURSE_LLM_DB_MAX_OVERFLOW`
(course_llm/settings.py), used by the proxy's recorder and the facade's one-call helper."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import sqlalchemy as sa

from course_llm.db import dispose_session_factory
from course_llm.proxy.recorder import ProxyRecorder
from course_llm.settings import Settings

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def test_the_pool_defaults_to_sqlalchemys_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings(database_url=PG).pool_options() == {"pool_size": 5, "max_overflow": 10}
    monkeypatch.setenv("COURSE_LLM_DB_POOL_SIZE", "2")
    monkeypatch.setenv("COURSE_LLM_DB_MAX_OVERFLOW", "0")

    assert Settings(database_url=PG).pool_options() == {"pool_size": 2, "max_overflow": 0}


def test_sqlite_keeps_sqlalchemys_own_pool(tmp_path: Path) -> None:
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    assert Settings(database_url=sqlite, db_pool_size=3).pool_options() == {}
    # The PostgreSQL pool's settings do not apply, so they are not checked either.
    assert Settings(database_url=sqlite, db_pool_size=1, db_max_overflow=0).pool_options() == {}


@pytest.mark.parametrize(("size", "overflow"), [(1, 0), (0, 5), (5, -1)])
def test_a_pool_with_no_room_beside_the_writer_is_refused_naming_the_setting(
    size: int, overflow: int
) -> None:
    with pytest.raises(pydantic.ValidationError, match="db_"):
        Settings(database_url=PG, db_pool_size=size, db_max_overflow=overflow)


@pytest.mark.postgres
async def test_the_proxy_recorder_opens_its_pool_with_the_settings(postgres_database_url: str) -> None:
    recorder = ProxyRecorder(Settings(database_url=postgres_database_url, db_pool_size=1, db_max_overflow=1))
    factory = recorder.session_factory
    try:
        pool = factory.kw["bind"].pool
        assert (pool.size(), pool._max_overflow) == (1, 1)
        # Two sessions at once fit: the writer's held connection and one more.
        async with factory() as first, factory() as second:
            assert await first.scalar(sa.text("SELECT 1")) == await second.scalar(sa.text("SELECT 2")) - 1
            assert pool.checkedout() == 2
    finally:
        await dispose_session_factory(factory)
