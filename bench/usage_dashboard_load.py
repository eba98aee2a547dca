"""The dashboard's full load in headless Chromium, for bench/bench_usage.py.

Serves the real routers (dashboard, usage API, metrics) over the bench database with uvicorn in a
thread, the way tests/test_dashboard.py's `serve` does, then opens `/dashboard#key=…` in Debian's
`/usr/bin/chromium` through Playwright (no browser is downloaded) and times each load from the
navigation until `body[data-state=ready]`: the signal the dashboard tests wait on, set once every
panel's request has answered and been rendered (dashboard.js, `loadAll`).

Each load gets a fresh browser context (empty cache and storage), so the static files are fetched
too: that is what a person opening the dashboard waits for. The server is warm: one untimed load
first.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from course_llm.db import create_session_factory, dispose_session_factory
from course_llm.proxy.dashboard import create_dashboard_router
from course_llm.proxy.usage_api import create_usage_router
from course_llm.reporting.metrics import MetricsRecorder, create_metrics_router

#: How long one load may take before it counts as failed (a cold 10M-row database is slow).
LOAD_TIMEOUT_MS = 600_000


def find_chromium() -> str | None:
    """The Chromium binary the dashboard tests use ($COURSE_LLM_CHROMIUM, /usr/bin/chromium, PATH)."""
    for candidate in (os.environ.get("COURSE_LLM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable() -> str | None:
    """Why the browser part cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if find_chromium() is None:
        return "no Chromium binary (apt-get install chromium, or set COURSE_LLM_CHROMIUM)"
    return None


@contextmanager
def serve(database_url: str, key: str) -> Iterator[str]:
    """The dashboard and the usage API over `database_url` on a free local port; yields its base URL."""
    session_factory = create_session_factory(database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await dispose_session_factory(session_factory)  # on the loop its connections belong to

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_dashboard_router())
    app.include_router(create_usage_router(lambda: session_factory, lambda: key))
    app.include_router(create_metrics_router(MetricsRecorder(), lambda: key))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _load(browser: Any, url: str) -> float:
    """Seconds from navigating to `url` until the dashboard is ready; raises when it shows an error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_selector(
            "body[data-state=ready], body[data-state=error], body[data-state=empty]",
            state="attached",
            timeout=LOAD_TIMEOUT_MS,
        )
        elapsed = time.perf_counter() - start
        state = page.get_attribute("body", "data-state")
        if state != "ready" or errors:
            message = page.inner_text("#message") if state != "ready" else ""
            raise RuntimeError(f"the dashboard ended in {state!r}: {message} {errors}".strip())
        return elapsed
    finally:
        context.close()


def measure_loads(
    database_url: str, key: str, ranges: list[str], loads: int, report: Callable[[str, list[float]], None]
) -> None:
    """`loads` timed full loads (after one untimed) per dashboard range, handed to `report`."""
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    with serve(database_url, key) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for range_name in ranges:
                url = f"{base_url}/dashboard#key={key}&range={range_name}"
                _load(browser, url)  # warm-up: server connections, buffer cache
                timings = [_load(browser, url) for _ in range(loads)]
                report(f"dashboard full load, range={range_name} (headless Chromium)", timings)
        finally:
            browser.close()
