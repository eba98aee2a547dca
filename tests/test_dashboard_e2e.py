"""The dashboard of a real `course-llm serve --mock`, driven by Playwright in headless Chromium.

The proxy process is started as a user starts it; calls go through the official openai client,
some made to fail with the mock's `[mock-fail <model>=503]` prompt directive. The expected
figures are worked out here from the raw rows (`GET /usage/calls`), never from the summaries the
page itself reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.dashboard_browser import browser_page
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_dashboard import chromium  # noqa: F401 (a fixture)
from tests.test_proxy_e2e import KEY, ask, proxy_env

pytestmark = pytest.mark.browser

ALL_FAIL = "[mock-fail deepseek-chat=503,gemini-2.5-flash=503]"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    port = free_port()
    env = proxy_env(f"sqlite+aiosqlite:///{tmp_path / 'dash.db'}", tmp_path)
    process = ProxyProcess(serve_argv("--mock", "--port", str(port)), env, port, tmp_path / "log").start()
    try:
        yield process
    finally:
        process.stop()


def _rows(proxy: ProxyProcess, expected: int) -> list[dict[str, Any]]:
    """Every recorded attempt, once `expected` of them are in (the writer is asynchronous)."""
    for _ in range(200):
        body = httpx.get(
            f"{proxy.base_url}/usage/calls",
            params={"page_size": "1000"},
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()
        if body["total"] >= expected:
            return list(body["data"])
        time.sleep(0.1)
    raise AssertionError(f"only {body['total']} of {expected} attempts were recorded:\n{proxy.log()[-3000:]}")


async def _calls(proxy: ProxyProcess) -> tuple[list[str], str]:
    """Three plain requests, one served after a fallback, one where every model fails."""
    plain = [(await ask(proxy, "text_processing"))[0] for _ in range(3)]
    fallback, _ = await ask(proxy, "course_structuring/quality", "outline [mock-fail claude-sonnet=503]")
    with pytest.raises(openai.APIStatusError):
        await ask(proxy, "text_processing", f"hello {ALL_FAIL}")
    return plain, fallback


def test_a_running_mock_proxy_shows_request_and_attempt_error_rates(
    proxy: ProxyProcess,
    chromium: str,  # noqa: F811 (the fixture imported above)
) -> None:
    plain, fallback = asyncio.run(_calls(proxy))
    rows = _rows(proxy, 3 + 3 + 1)  # the three plain ones, the fallback's three, at least one failure

    requests = {row["request_id"] for row in rows}
    failed = requests - {row["request_id"] for row in rows if row["success"]}
    failures = sum(not row["success"] for row in rows)
    assert len(requests) == 5 and len(failed) == 1
    assert set(plain) | {fallback} == requests - failed

    with browser_page(chromium) as page:
        page.goto(f"{proxy.base_url}/dashboard#key={KEY}")
        page.wait_for_selector("body[data-state=ready]", state="attached")
        assert page.inner_text("#kpi-requests") == "5"
        assert page.inner_text("#kpi-request-error-rate") == "20.0%"
        assert page.inner_text("#kpi-request-error-rate-note") == "1 of 5 requests failed"
        assert page.inner_text("#kpi-attempt-error-rate") == f"{failures / len(rows) * 100:.1f}%"
        assert page.inner_text("#kpi-attempt-error-rate-note") == f"{failures} of {len(rows)} attempts failed"

        listed = page.eval_on_selector_all(
            "#requests-table tbody tr", "rows => rows.map(r => [r.dataset.requestId, r.dataset.success])"
        )
        assert sorted(listed) == sorted([request, str(request not in failed).lower()] for request in requests)

        page.click(f'#requests-table a[data-request-id="{fallback}"]')
        page.wait_for_selector("#request-attempts li >> nth=2")
        models = page.eval_on_selector_all("#request-attempts li", "items => items.map(i => i.dataset.model)")
        assert models == ["claude-sonnet", "claude-sonnet", "gemini-2.5-pro"]
        assert page.inner_text("#request-detail-id") == fallback  # in full


def test_the_dashboard_shows_the_budgets_and_the_open_circuits(
    tmp_path: Path,
    chromium: str,  # noqa: F811 (the fixture imported above)
) -> None:
    import yaml

    data = yaml.safe_load((Path(__file__).parent.parent / "config" / "models.yaml").read_text())
    data["budgets"] = {"everything": {"period": "month", "limit_usd": 100}}
    data["circuit_breaker"] = {"failures": 1, "cooldown_s": 600}
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump(data))
    port = free_port()
    env = proxy_env(f"sqlite+aiosqlite:///{tmp_path / 'dash.db'}", tmp_path)
    argv = serve_argv("--mock", "--registry", str(registry), "--port", str(port))
    process = ProxyProcess(argv, env, port, tmp_path / "log").start()
    try:
        # deepseek-chat fails once (transient): its circuit opens; gemini-2.5-flash answers.
        asyncio.run(ask(process, "text_processing", "hello [mock-fail deepseek-chat=503]"))
        with browser_page(chromium) as page:
            page.goto(f"{process.base_url}/dashboard#key={KEY}")
            page.wait_for_selector("body[data-state=ready]", state="attached")
            budgets = page.eval_on_selector_all(
                "#budgets-table tbody tr", "rows => rows.map(r => [r.dataset.key, r.dataset.state])"
            )
            circuits = page.eval_on_selector_all(
                "#circuits-table tbody tr", "rows => rows.map(r => [r.dataset.key, r.dataset.state])"
            )
    finally:
        process.stop()
    assert budgets == [["everything", "ok"]]
    assert circuits == [["deepseek-chat", "open"]]
