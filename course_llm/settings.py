"""Runtime settings, read from the environment (prefix COURSE_LLM_) by pydantic-settings.

Settings are built in entry points and passed down; nothing here runs at import.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///course_llm.db"

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
    registry_path: Path = Field(Path("config/models.yaml"), description="the model registry YAML")
    max_attempts: int = Field(2, ge=1, le=10, description="attempts per model on transient errors")
    fallback_strategy: str | None = Field(None, description="strategy tried after the default chain")
    request_timeout_s: float = Field(600.0, gt=0, description="timeout of one upstream attempt")
    spool_path: Path = Field(
        Path("course_llm.spool.jsonl"), description="where rows wait while the database is down"
    )
    log_queue_size: int = Field(10_000, ge=100, description="rows held in memory before spooling")
    master_key: SecretStr | None = Field(
        None, validation_alias="LITELLM_MASTER_KEY", description="the proxy's key (LITELLM_MASTER_KEY)"
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return normalize_database_url(value)
