"""course_llm's HTTP routes, mounted on LiteLLM's proxy app by `course-llm serve`.

The usage API, /metrics and /dashboard read the same database the ProxyLogger writes to, and
answer only to the proxy's master key. With `--mock`, the offline upstream is mounted too.
"""

from __future__ import annotations

import os
from typing import Any

import structlog

from course_llm.proxy.hooks import proxy_logger

log = structlog.get_logger()


def _master_key() -> str | None:
    return os.environ.get("LITELLM_MASTER_KEY") or None


def mount_routes(app: Any, *, mock: bool = False) -> None:
    logger = proxy_logger()
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
        app.include_router(create_metrics_router(recorder, _master_key))
    except ImportError as exc:  # pragma: no cover
        log.warning("metrics_unavailable", error=str(exc))
    try:
        from course_llm.proxy.dashboard import create_dashboard_router

        app.include_router(create_dashboard_router())
    except ImportError as exc:  # pragma: no cover
        log.warning("dashboard_unavailable", error=str(exc))
