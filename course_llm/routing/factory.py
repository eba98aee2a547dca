"""Building a ModelRouter from the settings, and the one-call `complete` for scripts.

`create_model_router(settings, session_factory)` reads what a router needs from `Settings`
(COURSE_LLM_*): the registry, the retry and fallback settings, the journal and the database its
rows go to, the secrets to mask. `facade.py` holds the router itself and takes everything as
arguments, so tests and applications can build one without the environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from course_llm.recording.prompts import set_preview_chars
from course_llm.recording.secrets import register_secrets, secret_values_from
from course_llm.recording.writer import RecordWriter
from course_llm.routing.facade import LLMResponse, ModelRouter, Prompt
from course_llm.routing.registry import DEFAULT_STRATEGY, Registry, load_registry
from course_llm.settings import Settings

if TYPE_CHECKING:
    from course_llm.db import SessionFactory

log = structlog.get_logger()


def create_model_router(
    settings: Settings | None = None,
    session_factory: SessionFactory | None = None,
    *,
    max_attempts: int | None = None,
    fallback_strategy: str | None = None,
    registry: Registry | None = None,
) -> ModelRouter:
    """A ModelRouter over `settings.registry_path`; with a session factory every attempt is logged.

    `settings.mock` (COURSE_LLM_MOCK=1) makes every model answer offline from the mock.

    `max_attempts` and `fallback_strategy` default to the settings' values (2 and none).
    """
    settings = settings or Settings()
    registry = registry or load_registry(settings.registry_path)
    # Provider keys, the master key and the database password are masked in every row and log.
    register_secrets(secret_values_from(settings, registry))
    # The response preview's length is process-wide, like the secrets (recording/prompts.py).
    set_preview_chars(settings.response_preview_chars)
    writer = (
        RecordWriter(
            session_factory,
            spool_path=settings.journal_path,
            fsync=settings.journal_fsync,
            max_queue=settings.log_queue_size,
        )
        if session_factory is not None
        else None
    )
    return ModelRouter(
        registry,
        writer=writer,
        max_attempts=max_attempts if max_attempts is not None else settings.max_attempts,
        fallback_strategy=fallback_strategy if fallback_strategy is not None else settings.fallback_strategy,
        timeout_s=settings.request_timeout_s,
        mock=settings.mock,
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        spend_source=spend_source(settings, registry, session_factory),
    )


def spend_source(settings: Settings, registry: Registry, session_factory: SessionFactory | None) -> Any:
    """Where the budgets read what every process spent: the rows in the database, or Redis
    seeded from them when COURSE_LLM_REDIS_URL is set; None without budgets or a database."""
    if session_factory is None or not registry.budgets:
        return None
    from course_llm.db.spend import DatabaseSpend

    source = DatabaseSpend(session_factory)
    if settings.redis_url is None:
        return source
    from course_llm.control.redis_spend import RedisSpend

    return RedisSpend(settings.redis_url.get_secret_value(), registry.budgets, seed=source)


async def complete(
    action: str, prompt: Prompt, strategy: str = DEFAULT_STRATEGY, **params: Any
) -> LLMResponse:
    """One call over a router built from `Settings()`, logged to its database, rows flushed on return.

    Convenient for scripts; an application making many calls should keep one router open instead.
    """
    from course_llm.db import (
        create_session_factory,
        dispose_session_factory,
        is_transient_db_error,
        upgrade_database_async,
    )

    settings = Settings()
    try:
        await upgrade_database_async(settings.database_url)
    except Exception as exc:
        if not is_transient_db_error(exc):
            raise
        # The database is away: answer anyway; the rows wait in the spool.
        log.error("database_unavailable", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
    session_factory = create_session_factory(settings.database_url, **settings.pool_options())
    try:
        async with create_model_router(settings, session_factory) as router:
            return await router.complete(action, prompt, strategy=strategy, **params)
    finally:
        await dispose_session_factory(session_factory)
