"""course_llm's HTTP routes, mounted on LiteLLM's proxy app by `course-llm serve`.

The usage API, /metrics and /dashboard read the same database the ProxyLogger writes to, and
answer only to the proxy's master key. With `--mock`, the offline upstream is mounted too.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from course_llm.proxy.hooks import proxy_logger

log = structlog.get_logger()


def _master_key() -> str | None:
    return os.environ.get("LITELLM_MASTER_KEY") or None


def recording_health(logger: Any) -> tuple[int, dict[str, Any]]:
    """The recording side of health: 503 while rows cannot be journaled before their answer."""
    stats = logger.writer.stats()
    degraded = stats["degraded"]
    body = {
        "status": "degraded" if degraded else "healthy",
        "reason": degraded,
        "database_available": stats["database_available"],
        "rows_pending": stats["pending"],
        "rows_lost": stats["rows_lost"],
    }
    return (503 if degraded else 200), body


class _ReadinessGuard:
    """ASGI middleware: starts the row writer with the server; `/health/readiness` answers 503
    while recording is degraded (a full or read-only journal disk), so a load balancer stops
    sending traffic the replica cannot record. Every other request passes straight through."""

    def __init__(self, app: Any, logger: Any) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # `serve` builds the logger before any event loop runs; start its writer as soon as
            # the server's loop does, so a journal left by a killed process is written at start-up,
            # before (and without) any request.
            self.logger.writer.start()
        elif scope["type"] == "http" and scope["path"] == "/health/readiness":
            status, body = recording_health(self.logger)
            if status != 200:
                await JSONResponse({"status": "degraded", "course_llm": body}, status_code=status)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


def mount_routes(app: Any, *, mock: bool = False) -> None:
    logger = proxy_logger()

    health = APIRouter()

    @health.get("/health/recording", include_in_schema=False)
    async def health_recording() -> JSONResponse:
        status, body = recording_health(logger)
        return JSONResponse(body, status_code=status)

    app.include_router(health)
    app.add_middleware(_ReadinessGuard, logger=logger)
    if mock:
        from course_llm.proxy.mock import create_mock_router

        app.include_router(create_mock_router())
    try:
        from course_llm.proxy.usage_api import create_usage_router

        app.include_router(create_usage_router(lambda: logger.session_factory, _master_key))
    except ImportError as exc:  # pragma: no cover - while the usage API is being built
        log.warning("usage_api_unavailable", error=str(exc))
    try:
        from course_llm.reporting.metrics import MetricsRecorder, create_metrics_router

        recorder = MetricsRecorder()
        logger.add_observer(recorder.observe)
        recorder.watch_writer(logger.writer.stats)
        app.include_router(create_metrics_router(recorder, _master_key))
    except ImportError as exc:  # pragma: no cover
        log.warning("metrics_unavailable", error=str(exc))
    try:
        from course_llm.proxy.dashboard import create_dashboard_router

        app.include_router(create_dashboard_router())
    except ImportError as exc:  # pragma: no cover
        log.warning("dashboard_unavailable", error=str(exc))
