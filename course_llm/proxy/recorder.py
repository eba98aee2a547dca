"""The recording half of the proxy's logger: where rows go, and the controls they feed.

`ProxyRecorder` is the CallLogger of the LiteLLM proxy (`source="proxy"`): every row goes to the
process's RecordWriter (journal first, then the database named by the settings) and to observers
(the Prometheus metrics). The rows also feed the registry's circuit breaker, whose gate decides
before each attempt whether it may go upstream (course_llm/control/breaker.py). The proxy's
request guards and stream hooks build on it in `hooks.py`.

The control sections reach the proxy through its config: the compiler copies them under the
top-level `course_llm` key (LiteLLM ignores it), and `proxy/callback.py` hands them over once
LiteLLM has loaded the config, in `course-llm serve` and plain `litellm --config` alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from pydantic import ValidationError

from course_llm._litellm import flush_logging_worker
from course_llm.control.breaker import CircuitBreaker
from course_llm.control.controls import Controls
from course_llm.control.sections import BudgetConfig, CircuitBreakerConfig
from course_llm.recording.callback import CallLogger, remember
from course_llm.recording.prompts import set_preview_chars
from course_llm.recording.records import CallRecord
from course_llm.recording.writer import RecordWriter
from course_llm.routing.compiler import CONTROLS_KEY
from course_llm.settings import Settings

log = structlog.get_logger()

#: Requests remembered at once for the all-failed message.
MAX_TRACKED = 10_000
#: Databases this process has upgraded already (`course-llm serve` does, before the proxy starts).
_upgraded: set[str] = set()


def database_upgraded(url: str) -> None:
    """Say that the database at `url` is at the latest schema: the row writer skips its upgrade."""
    _upgraded.add(url)


class ProxyRecorder(CallLogger):
    """Records proxy attempts into the database named by the settings; gates them by the breaker."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(self._record, source="proxy", gate=self._gate)
        self.settings = settings
        # The response preview's length is process-wide (recording/prompts.py).
        set_preview_chars(settings.response_preview_chars)
        self._writer: RecordWriter | None = None
        self._session_factory: Any = None
        self._observers: list[Callable[[CallRecord], None]] = []
        # Failed attempts per request (bounded), to tell a client every attempt when all failed.
        self._failures: OrderedDict[str, list[CallRecord]] = OrderedDict()
        #: The registry's budgets and circuit breaker (none until `configure_controls`).
        self.controls = Controls({}, None, self._has_chain)
        self._sections: dict[str, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # -- rows ----------------------------------------------------------------------------------

    @property
    def session_factory(self) -> Any:
        if self._session_factory is None:
            from course_llm.db import create_session_factory

            self._session_factory = create_session_factory(
                self.settings.database_url, **self.settings.pool_options()
            )
        return self._session_factory

    @property
    def writer(self) -> RecordWriter:
        if self._writer is None:
            from course_llm.db import upgrade_database_async

            url = self.settings.database_url
            self._writer = RecordWriter(
                None,
                # Built in the writer's task: a bad or unsupported URL is an outage that is logged
                # while rows wait in the journal, never an exception on a request's path.
                connect=lambda: self.session_factory,
                spool_path=self.settings.journal_path,
                fsync=self.settings.journal_fsync,
                max_queue=self.settings.log_queue_size,
                # Plain `litellm --config` never ran `course-llm db upgrade`: migrate first.
                prepare=None if url in _upgraded else (lambda: upgrade_database_async(url)),
            )
        return self._writer

    def add_observer(self, observer: Callable[[CallRecord], None]) -> None:
        """Also hand every row to `observer` (the Prometheus metrics)."""
        self._observers.append(observer)

    def _record(self, record: CallRecord) -> None:
        self.writer.submit(record)
        self.controls.observe(record)
        if record.success:
            self._failures.pop(record.request_id, None)  # it did not all fail after all
        else:
            earlier = self._failures.get(record.request_id, [])
            remember(self._failures, record.request_id, [*earlier, record], MAX_TRACKED)
        for observer in self._observers:
            try:
                observer(record)
            except Exception as exc:  # metrics must never cost a row
                log.error("llm_call_observer_failed", error=repr(exc))

    async def aclose(self) -> None:
        """Deliver LiteLLM's pending events, then write (or spool) every pending row."""
        await flush_logging_worker()
        await self.controls.aclose()
        if self._writer is not None:
            await self._writer.aclose()
            log.info("llm_calls_flushed_at_shutdown", **self._writer.stats())

    def install_shutdown_flush(self) -> None:
        """Make the proxy's shutdown (lifespan exit, e.g. on SIGTERM) flush rows first."""
        proxy_server = sys.modules.get("litellm.proxy.proxy_server")
        original = getattr(proxy_server, "proxy_shutdown_event", None)
        if proxy_server is None or original is None or getattr(original, "_course_llm", False):
            return

        async def proxy_shutdown_event(*args: Any, **kwargs: Any) -> None:
            try:
                await self.aclose()
            finally:
                await original(*args, **kwargs)

        proxy_shutdown_event._course_llm = True  # type: ignore[attr-defined]
        setattr(proxy_server, "proxy_shutdown_event", proxy_shutdown_event)  # noqa: B010 (module attr)

    def has_failed_attempts(self, request_id: str) -> bool:
        """Whether attempts of this request failed and it has not succeeded (yet)."""
        return bool(self._failures.get(request_id))

    # -- controls ------------------------------------------------------------------------------

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self.controls.breaker

    def configure_controls(self, sections: Any) -> None:
        """Take the registry's control sections as the compiler copied them into the config.

        Invalid sections are an error naming the key (the registry was validated when compiled;
        a hand-edited config is checked again here). Called again with the same sections
        (LiteLLM may load the callback module twice), it keeps what it has: open circuits and
        budget figures included."""
        sections = sections if isinstance(sections, Mapping) else {}
        if sections == self._sections:
            return
        try:
            budgets = {
                str(name): BudgetConfig.model_validate(value)
                for name, value in (sections.get("budgets") or {}).items()
            }
            section = sections.get("circuit_breaker")
            breaker = CircuitBreakerConfig.model_validate(section) if section is not None else None
        except ValidationError as exc:
            raise ValueError(f"proxy config key {CONTROLS_KEY!r}: {exc}") from None
        source: Any = None
        if budgets:
            from course_llm.db.spend import DatabaseSpend

            source = DatabaseSpend(self.session_factory)
            if self.settings.redis_url is not None:
                from course_llm.control.redis_spend import RedisSpend

                source = RedisSpend(self.settings.redis_url.get_secret_value(), budgets, seed=source)
        circuits = None
        if breaker is not None and self.settings.redis_url is not None:
            from course_llm.control.redis_circuits import SharedCircuits

            circuits = SharedCircuits(self.settings.redis_url.get_secret_value())
        self._sections = dict(sections)
        old, self.controls = self.controls, Controls(budgets, breaker, self._has_chain, source, circuits)
        self.controls.start_soon()
        with contextlib.suppress(RuntimeError):  # no loop yet: the old controls never started
            task = asyncio.get_running_loop().create_task(old.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _has_chain(self, action: str, strategy: str) -> bool:
        """Whether the router has a chain for action×strategy. ProxyLogger (hooks.py), which knows
        LiteLLM's router, answers; a recorder alone cannot tell, so a downgrade is attempted."""
        return True

    def _gate(self, kwargs: Mapping[str, Any], model_id: str) -> tuple[str, str] | None:
        """Before each attempt: may it go upstream (CallLogger's `Gate`)?"""
        return self.controls.gate(model_id)
