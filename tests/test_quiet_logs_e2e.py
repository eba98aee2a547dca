"""What `course-llm serve --mock` prints: measured on the real process's stdout and stderr.

The start-up prints no warning and upgrades the database once; a request whose every model
failed is one `llm_request_failed` line listing its attempts; a refused request (a missing or
wrong key, a bad body) is at most one INFO line, never an ERROR or a traceback.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from course_llm.db import create_session_factory, dispose_session_factory, fetch_request, is_database_error
from course_llm.proxy.serve import DEV_KEY
from tests.proxy_process import ProxyProcess, free_port, serve_argv

pytestmark = pytest.mark.e2e

ALL_FAIL = "[mock-fail deepseek-chat=503,gemini-2.5-flash=503]"


def mock_env(tmp: Path) -> dict[str, str]:
    """A `serve --mock` as `make run` starts it: no key set, so the development key."""
    return {
        "LITELLM_MASTER_KEY": "",
        "COURSE_LLM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'calls.db'}",
        "COURSE_LLM_SPOOL_PATH": str(tmp / "journal"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("quiet")
    port = free_port()
    process = ProxyProcess(serve_argv("--mock", "--port", str(port)), mock_env(tmp), port, tmp / "log")
    yield process.start()
    process.stop()


class LogWindow:
    """What the proxy printed from now on (its answer to a request is sent after its log lines)."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.start = len(proxy.log())

    def lines(self) -> list[str]:
        return [line for line in self.proxy.log()[self.start :].splitlines() if line.strip()]


def chat(proxy: ProxyProcess, model: str, content: str, key: str | None = DEV_KEY) -> httpx.Response:
    return httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"} if key else {},
        json={"model": model, "messages": [{"role": "user", "content": content}]},
        timeout=60,
    )


async def rows_of(proxy: ProxyProcess, request_id: str, count: int, timeout_s: float = 20) -> int:
    url = proxy.env["COURSE_LLM_DATABASE_URL"]
    factory = create_session_factory(url)
    try:
        deadline = time.monotonic() + timeout_s
        found = 0
        while found < count and time.monotonic() < deadline:
            try:
                found = len(await fetch_request(factory, request_id))
            except Exception as exc:
                if not is_database_error(exc):
                    raise
            await asyncio.sleep(0.05)
        return found
    finally:
        await dispose_session_factory(factory)


def test_start_up_prints_no_pricing_warning_and_no_warning_at_all(proxy: ProxyProcess) -> None:
    started = proxy.log()
    assert "register_model" not in started
    assert "Set models" not in started and "text_processing/budget" not in started  # LiteLLM's list
    assert "course_llm proxy on" in started  # the banner still prints
    assert "WARNING" not in started and "[warning" not in started, started
    assert "Traceback" not in started


async def test_the_database_is_upgraded_once_at_start_up(proxy: ProxyProcess) -> None:
    response = chat(proxy, "text_processing", "hello")
    assert response.status_code == 200
    # A row is written only after the row writer's own start-up (where a second upgrade ran).
    assert await rows_of(proxy, response.headers["x-course-llm-request-id"], 1) == 1
    assert proxy.log().count("database_upgrade_started") == 1
    assert proxy.log().count("database_upgrade_finished") == 1


def test_a_request_where_every_model_failed_is_one_line_listing_its_attempts(proxy: ProxyProcess) -> None:
    window = LogWindow(proxy)
    response = chat(proxy, "text_processing/budget", f"outline {ALL_FAIL}")
    assert response.status_code == 503
    request_id = re.search(r"request ([0-9a-f-]{36})", response.text)
    assert request_id, response.text
    [line] = window.lines()
    assert "llm_request_failed" in line and request_id.group(1) in line
    expected = [
        "#1 deepseek-chat (budget) 503",
        "#2 deepseek-chat (budget) 503",
        "#3 deepseek-chat (default) 503",
        "#4 deepseek-chat (default) 503",
        "#5 gemini-2.5-flash (default) 503",
        "#6 gemini-2.5-flash (default) 503",
    ]
    assert all(attempt in line for attempt in expected), line
    assert "Traceback" not in proxy.log()


def test_a_missing_or_wrong_key_logs_no_error(proxy: ProxyProcess) -> None:
    window = LogWindow(proxy)
    assert chat(proxy, "text_processing", "hi", key=None).status_code == 401
    assert chat(proxy, "text_processing", "hi", key="sk-wrong").status_code == 401
    for path in ("/v1/models", "/health"):  # routes LiteLLM authenticates itself
        wrong = httpx.get(f"{proxy.base_url}{path}", headers={"Authorization": "Bearer sk-wrong"})
        assert wrong.status_code == 401
    lines = window.lines()
    assert len(lines) <= 4, lines
    assert all("[info" in line for line in lines), lines


def test_a_bad_body_logs_no_error(proxy: ProxyProcess) -> None:
    window = LogWindow(proxy)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"}
    not_json = httpx.post(f"{proxy.base_url}/v1/chat/completions", headers=headers, content=b"{nope")
    assert not_json.status_code == 400
    assert chat(proxy, "poetry", "hi").status_code == 400
    # Refused by the pre-call hook, after LiteLLM read the body (the guard does not see embeddings).
    embedding = httpx.post(
        f"{proxy.base_url}/v1/embeddings", headers=headers, json={"model": "poetry", "input": "x"}
    )
    assert embedding.status_code == 400
    lines = window.lines()
    assert len(lines) <= 3, lines
    assert all("[info" in line for line in lines), lines
