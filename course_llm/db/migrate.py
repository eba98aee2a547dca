"""Running the Alembic migrations from code: `course-llm db upgrade`, `course-llm serve`, the tests.

The migrations live in the top-level `alembic/` directory of a checkout (fixed layout, docs/architecture.md).
A wheel cannot ship a top-level directory next to the package, so pyproject's hatch `force-include`
copies it to `course_llm/_alembic`. `migrations_path` looks there first, then next to the package,
so an installed wheel, an editable install and a bare checkout all find the same scripts.

The Alembic `Config` is built in code: nothing depends on `alembic.ini` or the working directory.
`alembic/alembic.ini` exists only so the plain `alembic` command works in a checkout.

Alembic's async `env.py` drives its own event loop with `asyncio.run`, so `upgrade_database` must
run where no loop is running; async callers use `upgrade_database_async`, which runs it in a worker
thread. Failures propagate unchanged: a half-applied schema must stop the caller, not be logged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import command
from course_llm.db.session import redact_url
from course_llm.errors import CourseLLMError
from course_llm.settings import normalize_database_url

__all__ = [
    "MigrationsNotFoundError",
    "alembic_config",
    "head_revision",
    "migrations_path",
    "upgrade_database",
    "upgrade_database_async",
]

log = structlog.get_logger()

#: course_llm/ (this file is course_llm/db/migrate.py).
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


class MigrationsNotFoundError(CourseLLMError, FileNotFoundError):
    """Neither `course_llm/_alembic` (wheel) nor `alembic/` next to the package (checkout) exists.

    `searched` lists the directories looked at, in order.
    """

    def __init__(self, searched: list[Path]) -> None:
        self.searched = searched
        where = ", ".join(str(path) for path in searched)
        super().__init__(f"course_llm migrations not found (looked in: {where})")


def migrations_path(package_dir: Path | None = None) -> Path:
    """The Alembic script directory: `<package>/_alembic` when installed, else `<package>/../alembic`.

    `package_dir` is the `course_llm` package directory (default: the one this module belongs to);
    tests pass a fake one to check both layouts.
    """
    package = _PACKAGE_DIR if package_dir is None else package_dir
    candidates = [package / "_alembic", package.parent / "alembic"]
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationsNotFoundError(candidates)


def alembic_config(url: str, *, script_location: Path | None = None) -> Config:
    """An Alembic `Config` for `url` (normalised to its async driver), built without any ini file."""
    config = Config()
    config.set_main_option("script_location", str(script_location or migrations_path()))
    # Config values go through configparser interpolation: a literal `%` (URL-encoded passwords,
    # `%40` for `@`) must be doubled or it is read as an interpolation marker.
    config.set_main_option("sqlalchemy.url", normalize_database_url(url).replace("%", "%%"))
    return config


def head_revision(script_location: Path | None = None) -> str:
    """The newest revision id among the migration scripts (what `upgrade_database` moves to)."""
    config = Config()
    config.set_main_option("script_location", str(script_location or migrations_path()))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise MigrationsNotFoundError([Path(config.get_main_option("script_location") or "")])
    return head


def upgrade_database(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision`; a no-op when it is already there.

    Must be called with no event loop running in this thread (env.py calls `asyncio.run`); from
    async code use `upgrade_database_async`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop running: the only state in which env.py's asyncio.run can work
    else:
        raise RuntimeError(
            "upgrade_database() cannot run inside an event loop; await upgrade_database_async()"
        )
    log.info("database_upgrade_started", url=redact_url(url), revision=revision)
    command.upgrade(alembic_config(url), revision)
    log.info("database_upgrade_finished", url=redact_url(url), revision=revision)


async def upgrade_database_async(url: str, revision: str = "head") -> None:
    """`upgrade_database` for async callers: runs it in a worker thread, which has no event loop."""
    await asyncio.to_thread(upgrade_database, url, revision)
