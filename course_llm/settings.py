"""Runtime settings, read from the environment (prefix COURSE_LLM_) by pydantic-settings.

Settings are built in entry points and passed down; nothing here runs at import.

The registry defaults to `config/models.yaml` in the working directory when there is one, else to
the registry shipped with the package (`default_registry_path`), so the CLI and the facade work
from any directory. The database defaults to `course_llm.db` in the working directory;
`sqlite_file` tells where an SQLite URL keeps its data, so callers can check that it exists
before opening it (opening an SQLite file creates it).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///course_llm.db"
#: The registry a project keeps next to its code (relative to the working directory).
PROJECT_REGISTRY = Path("config/models.yaml")

#: course_llm/ (this file is course_llm/settings.py).
_PACKAGE_DIR = Path(__file__).resolve().parent

_DRIVER_REWRITES = {
    "postgres://": "postgresql+asyncpg://",
    "postgresql://": "postgresql+asyncpg://",
    "postgresql+psycopg2://": "postgresql+asyncpg://",
    "postgresql+psycopg://": "postgresql+asyncpg://",
    "sqlite://": "sqlite+aiosqlite://",
}


def normalize_database_url(url: str) -> str:
    """Rewrite a sync or bare database URL to its async driver (asyncpg, aiosqlite)."""
    for prefix, replacement in _DRIVER_REWRITES.items():
        if url.startswith(prefix):
            return replacement + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    """course_llm settings. Every field is read from `COURSE_LLM_<FIELD>` unless passed explicitly."""

    model_config = SettingsConfigDict(env_prefix="COURSE_LLM_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL, description="SQLAlchemy URL; postgresql:// is rewritten to asyncpg"
    )
    registry_path: Path = Field(
        default_factory=lambda: default_registry_path(),
        description="the model registry YAML (default: config/models.yaml if present, else the shipped one)",
    )
    max_attempts: int = Field(2, ge=1, le=10, description="attempts per model on transient errors")
    fallback_strategy: str | None = Field(None, description="strategy tried after the default chain")
    request_timeout_s: float = Field(600.0, gt=0, description="timeout of one upstream attempt")
    max_retry_wait_s: float = Field(
        5.0,
        ge=0,
        description="longest Retry-After waited for before a retry; a longer one moves on to the next model",
    )
    spool_path: Path | None = Field(
        None,
        description="journal prefix: every row is appended here before its answer leaves "
        "(default: next to the SQLite database, else in the user's state directory)",
    )
    journal_fsync: bool = Field(
        False,
        description="fdatasync each journal append: survive a power loss, not only a crash (slower)",
    )
    log_queue_size: int = Field(
        10_000,
        ge=100,
        description="rows held in memory; beyond that the writer reads them back from the journal",
    )
    mock: bool = Field(
        False,
        description="answer every model offline with the mock of `serve --mock` (no API keys, no network)",
    )
    response_preview_chars: int = Field(
        0,
        ge=0,
        description="keep the first N characters of each answer in llm_calls.response_preview, "
        "secrets masked (0: keep none)",
    )
    redis_url: SecretStr | None = Field(
        None,
        description="redis://…: the registry's `cache: {type: redis}`, and budgets, circuit breaker "
        "and LiteLLM's router state shared by every process and replica",
    )
    replica: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=200,
        description="this replica's name: the `replica` label of /metrics (default: the host name)",
    )
    master_key: SecretStr | None = Field(
        None, validation_alias="LITELLM_MASTER_KEY", description="the proxy's key (LITELLM_MASTER_KEY)"
    )
    db_pool_size: int = Field(
        5, ge=1, le=1000, description="PostgreSQL connections each process keeps open (SQLAlchemy's pool)"
    )
    db_max_overflow: int = Field(
        10, ge=0, le=1000, description="PostgreSQL connections a process may open beyond db_pool_size"
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return normalize_database_url(value)

    @model_validator(mode="after")
    def _pool_room(self) -> Self:
        if self.database_url.startswith("postgresql") and self.db_pool_size + self.db_max_overflow < 2:
            raise ValueError(
                "db_pool_size + db_max_overflow must be at least 2: the row writer keeps one "
                "connection, and the usage API and budgets need another"
            )
        return self

    @model_validator(mode="after")
    def _journal_location(self) -> Self:
        if self.spool_path is None:
            self.spool_path = default_journal_path(self.database_url)
        return self

    def pool_options(self) -> dict[str, int]:
        """The engine options of this process's PostgreSQL pool (none for SQLite, whose pool is
        SQLAlchemy's choice): with `--workers` and replicas, each process holds one such pool."""
        if not self.database_url.startswith("postgresql"):
            return {}
        return {"pool_size": self.db_pool_size, "max_overflow": self.db_max_overflow}

    @property
    def journal_path(self) -> Path:
        """The journal prefix (`spool_path`, resolved)."""
        return self.spool_path or default_journal_path(self.database_url)


def packaged_registry_path(package_dir: Path | None = None) -> Path:
    """The registry shipped with course_llm: `<package>/_registry/models.yaml` in an installed wheel
    (pyproject's hatch force-include copies `config/models.yaml` there), else the checkout's
    `config/models.yaml` next to the package (editable install, bare checkout)."""
    package = _PACKAGE_DIR if package_dir is None else package_dir
    shipped = package / "_registry" / "models.yaml"
    return shipped if shipped.is_file() else package.parent / "config" / "models.yaml"


def default_registry_path() -> Path:
    """`config/models.yaml` when the working directory has one, else the shipped registry."""
    if PROJECT_REGISTRY.is_file():
        return PROJECT_REGISTRY
    shipped = packaged_registry_path()
    return shipped if shipped.is_file() else PROJECT_REGISTRY


def is_packaged_registry(path: Path) -> bool:
    """True when `path` is the registry shipped with course_llm (not a project's own)."""
    try:
        return path.resolve() == packaged_registry_path().resolve()
    except OSError:
        return False


def sqlite_file(database_url: str) -> Path | None:
    """The file an SQLite URL keeps its data in; None for in-memory databases and other servers."""
    match = re.match(r"^sqlite(?:\+\w+)?:///(?P<path>[^?]+)", database_url)
    if not match or match["path"] in (":memory:", "") or match["path"].startswith("file:"):
        return None
    return Path(match["path"]).expanduser()


def default_journal_path(database_url: str) -> Path:
    """Where the journal lives unless COURSE_LLM_SPOOL_PATH says otherwise.

    Next to an SQLite file (`course_llm.db` → `course_llm.db.journal.*`), so it moves with the
    data it belongs to; for any other database, in the user's state directory, under a name
    derived from the URL, so that two projects on one machine never replay into each other
    (credentials left out: rotating a password must not orphan the journal).
    """
    database = sqlite_file(database_url)
    if database is not None:
        return database.absolute().with_name(database.name + ".journal")
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    digest = hashlib.sha256(re.sub(r"//[^@/]*@", "//", database_url).encode()).hexdigest()[:12]
    return state / "course_llm" / f"{digest}.journal"
