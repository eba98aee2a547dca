"""track_llm_call: record an LLM call made outside LiteLLM (a direct openai/anthropic SDK call).

    async with track_llm_call(provider="openai", model_id="gpt-4o-mini", action="text_processing") as call:
        response = await client.chat.completions.create(...)
        call.record_usage(response)          # or: call.tokens_in = …; call.tokens_out = …

The row lands in llm_calls with `source="direct"`, attributed from `call_scope`, priced from the
registry when the model is known and no `cost_usd` was given. An exception inside the block is
recorded as a failed call and re-raised. Leaving the block never waits for the database: a
background writer inserts the row (`await flush_tracked_calls()` waits for it).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from course_llm.errors import RegistryError
from course_llm.recording.records import CallRecord, new_id, redact, status_code_of, utcnow
from course_llm.recording.writer import RecordWriter
from course_llm.routing.registry import DEFAULT_STRATEGY, Registry, load_registry
from course_llm.scope import current_scope
from course_llm.settings import Settings

if TYPE_CHECKING:
    from course_llm.db import SessionFactory

log = structlog.get_logger()

_WRITER_ATTRIBUTE = "_course_llm_writer"
_default_factories: dict[str, SessionFactory] = {}


@dataclass
class TrackedCall:
    """What the block tells about its call. Unset token counts are stored as unknown (null)."""

    provider: str
    model_id: str
    action: str
    request_id: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def record_usage(self, response: Any) -> None:
        """Take token counts from an OpenAI (prompt/completion_tokens) or Anthropic response."""
        usage = response.get("usage") if isinstance(response, Mapping) else getattr(response, "usage", None)
        if usage is None:
            return

        def read(*names: str) -> int | None:
            for name in names:
                value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
                if isinstance(value, int):
                    return value
            return None

        self.tokens_in = read("prompt_tokens", "input_tokens")
        self.tokens_out = read("completion_tokens", "output_tokens")


@functools.lru_cache(maxsize=4)
def _registry(path: str, mtime_ns: int) -> Registry | None:
    """The registry at `path`, read once per version of the file (not once per tracked call)."""
    try:
        return load_registry(path)
    except RegistryError:
        return None


def _registry_price(model_id: str, tokens_in: int | None, tokens_out: int | None) -> float | None:
    if tokens_in is None and tokens_out is None:
        return None
    path = Settings().registry_path
    try:
        registry = _registry(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None
    model = registry.models.get(model_id) if registry else None
    return model.estimate_cost(tokens_in, tokens_out) if model else None


def _default_session_factory() -> SessionFactory:
    from course_llm.db import create_session_factory, upgrade_database_async

    settings = Settings()
    url = settings.database_url
    if url not in _default_factories:
        # Migrate in the writer's task, not here: a database that is down must not stop the call.
        factory = create_session_factory(url, **settings.pool_options())
        setattr(factory, _WRITER_ATTRIBUTE, _new_writer(factory, prepare=lambda: upgrade_database_async(url)))
        _default_factories[url] = factory
    return _default_factories[url]


def _new_writer(session_factory: SessionFactory, **kwargs: Any) -> RecordWriter:
    settings = Settings()
    return RecordWriter(
        session_factory,
        spool_path=settings.journal_path,
        fsync=settings.journal_fsync,
        max_queue=settings.log_queue_size,
        **kwargs,
    )


def _writer_for(session_factory: SessionFactory) -> RecordWriter:
    """The writer for this session factory; it lives (and is collected) with the factory."""
    writer: RecordWriter | None = getattr(session_factory, _WRITER_ATTRIBUTE, None)
    if writer is None:
        writer = _new_writer(session_factory)
        setattr(session_factory, _WRITER_ATTRIBUTE, writer)
    return writer


async def flush_tracked_calls(session_factory: SessionFactory | None = None) -> None:
    """Wait until every call tracked so far (for this factory, or the default one) is written or spooled."""
    factory = session_factory or _default_session_factory()
    await _writer_for(factory).flush()


@asynccontextmanager
async def track_llm_call(
    *,
    provider: str,
    model_id: str,
    action: str,
    strategy: str = DEFAULT_STRATEGY,
    session_factory: SessionFactory | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> AsyncIterator[TrackedCall]:
    """Record the call made inside the block as one llm_calls row (`source="direct"`)."""
    factory = session_factory or _default_session_factory()
    call = TrackedCall(provider, model_id, action, str(new_id()), metadata=dict(metadata or {}))
    scope = current_scope()
    started_at = utcnow()
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield call
    except BaseException as exc:
        error = exc
        raise
    finally:
        cost = call.cost_usd
        if cost is None and error is None:
            cost = _registry_price(model_id, call.tokens_in, call.tokens_out)
        extra = dict(call.metadata)
        if scope.tags:
            extra["tags"] = dict(scope.tags)
        record = CallRecord(
            request_id=call.request_id,
            attempt=1,
            created_at=started_at,
            action=action,
            strategy=strategy,
            served_strategy=strategy,
            provider=provider,
            model_id=model_id,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            latency_ms=(time.perf_counter() - started) * 1000,
            cost_usd=cost,
            success=error is None,
            status_code=status_code_of(error) if error is not None else None,
            error_class=type(error).__name__ if error is not None else None,
            error_message=redact(str(error)) if error is not None else None,
            tenant_id=scope.tenant_id,
            operation=scope.operation,
            end_user=scope.end_user,
            source="direct",
            metadata=extra,
        )
        # Never wait for the database here: the background writer inserts (or spools) the row,
        # and rows still in memory when the interpreter exits are spooled.
        _writer_for(factory).submit(record)
