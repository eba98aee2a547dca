"""The dashboard's controls, clicked in headless Chromium (Playwright) against the app in a thread.

The app is tests/test_dashboard.py's (dashboard, usage and metrics routers over a migrated SQLite
file) with its seeded rows plus one tagged request; expected figures are worked out from those
records here.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from course_llm.db import create_session_factory, dispose_session_factory, insert_records
from course_llm.recording.records import CallRecord
from tests.dashboard_browser import browser_page
from tests.test_dashboard import HOUR, KEY, NOW, _database, seeded_records, serve
from tests.test_dashboard import chromium as chromium  # a fixture, used by name

pytestmark = pytest.mark.browser

TAGGED = CallRecord(
    request_id="req-tagged-0001", attempt=1, created_at=NOW - 2 * HOUR, action="course_structuring",
    strategy="default", served_strategy="default", provider="deepseek", model_id="deepseek-chat",
    tokens_in=100, tokens_out=20, latency_ms=400, cost_usd=0.03125, success=True, tenant_id="=1+2",
    operation="grade_essay", end_user="student-42", source="proxy",
    metadata={"tags": {"course": "bio101"}, "cohort": "2025"},
)  # fmt: skip
RECORDS = [*seeded_records(), TAGGED]


def _within(span: timedelta) -> list[CallRecord]:
    return [r for r in RECORDS if NOW - r.created_at < span]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(_database(tmp_path_factory.mktemp("interactions"), RECORDS), RECORDS) as url:
        yield url


def _loaded(page: object, loads: int) -> None:
    page.wait_for_selector(f'body[data-state=ready][data-loads="{loads}"]', state="attached")  # type: ignore[attr-defined]


def test_the_range_picker_changes_every_figure_and_the_buckets(chromium: str, app_url: str) -> None:
    with browser_page(chromium) as page:
        page.goto(f"{app_url}/dashboard#key={KEY}&range=30d")
        _loaded(page, 1)
        assert page.inner_text("#kpi-requests") == str(
            len({r.request_id for r in _within(timedelta(days=30))})
        )
        assert page.get_attribute("#chart-cost-by-action", "data-unit") == "day"
        page.select_option("#range", "24h")
        _loaded(page, 2)
        day = _within(timedelta(hours=24))  # req-c (5 h ago), req-e (1 h, failed), req-tagged (2 h)
        assert page.inner_text("#kpi-requests") == str(len({r.request_id for r in day})) == "3"
        assert page.inner_text("#kpi-request-error-rate-note") == "1 of 3 requests failed"
        assert page.get_attribute("#chart-cost-by-action", "data-unit") == "hour"
        tenants = page.eval_on_selector_all("#tenants-table tbody tr", "rows => rows.map(r => r.dataset.key)")
        assert sorted(tenants) == sorted({r.tenant_id for r in day})
        assert "range=24h" not in page.url  # the default range is not spelled out in the address


def test_a_custom_range_selects_only_its_rows(chromium: str, app_url: str) -> None:
    start = (NOW - timedelta(days=6, hours=1)).strftime("%Y-%m-%dT%H:%M")
    end = (NOW - timedelta(days=5)).strftime("%Y-%m-%dT%H:%M")
    with browser_page(chromium) as page:
        page.goto(f"{app_url}/dashboard#key={KEY}")
        _loaded(page, 1)
        page.select_option("#range", "custom")
        page.fill("#range-from", start)
        page.fill("#range-to", end)
        page.click("#custom-apply")
        _loaded(page, 2)
        ids = page.eval_on_selector_all(
            "#requests-table tbody tr", "rows => rows.map(r => r.dataset.requestId)"
        )
        assert ids == ["req-d"]  # the only request six days ago
        assert page.get_attribute("#chart-cost-by-action", "data-unit") == "hour"


def test_the_request_panel_opened_from_the_attempts_view_shows_attribution(
    chromium: str, app_url: str
) -> None:
    with browser_page(chromium) as page:
        page.goto(f"{app_url}/dashboard#key={KEY}")
        _loaded(page, 1)
        page.click('[data-view="attempts"]')
        page.wait_for_selector("#calls-table:not([hidden]) tbody tr[data-call-id]")
        page.click('#calls-table a[data-request-id="req-tagged-0001"]')
        page.wait_for_selector("#request-attempts li")
        assert page.inner_text("#request-operation") == "grade_essay"
        assert page.inner_text("#request-end-user") == "student-42"
        assert page.eval_on_selector_all("#request-tags .tag", "tags => tags.map(t => t.textContent)") == [
            "course=bio101"
        ]
        assert '"cohort": "2025"' in page.inner_text("#request-metadata")
        assert "#request=req-tagged-0001" in page.url or "request=req-tagged-0001" in page.url
        tags = page.eval_on_selector_all("#tags-table tbody tr", "rows => rows.map(r => r.dataset.key)")
        assert tags == ["course=bio101"]


def test_csv_export_downloads_the_current_filter_with_formulas_neutralised(
    chromium: str, app_url: str
) -> None:
    with browser_page(chromium, accept_downloads=True) as page:
        page.goto(f"{app_url}/dashboard#key={KEY}&operation=grade_essay&range=7d")
        _loaded(page, 1)
        with page.expect_download() as download:
            page.click("#export-csv")
        path = download.value.path()
        rows = list(csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
    assert [row["request_id"] for row in rows] == ["req-tagged-0001"]
    assert rows[0]["tenant_id"] == "'=1+2"  # a spreadsheet shows it, never runs it


def test_auto_refresh_brings_in_new_requests(chromium: str, tmp_path: Path) -> None:
    url = _database(tmp_path, seeded_records())
    with serve(url, []) as app, browser_page(chromium) as page:
        page.goto(f"{app}/dashboard#key={KEY}")
        _loaded(page, 1)
        page.select_option("#refresh-interval", "10")
        page.check("#refresh-toggle")
        assert page.get_attribute("body", "data-refresh") == "10"
        assert "refresh=10" in page.url
        # Playwright's sync API runs an event loop in this thread: write from another one.
        with ThreadPoolExecutor(1) as writer:
            writer.submit(asyncio.run, _insert(url, TAGGED)).result()
        page.wait_for_selector('#requests-table tr[data-request-id="req-tagged-0001"]')
        page.uncheck("#refresh-toggle")
        assert page.get_attribute("body", "data-refresh") == "0"


async def _insert(url: str, record: CallRecord) -> None:
    factory = create_session_factory(url)
    try:
        await insert_records(factory, [record])
    finally:
        await dispose_session_factory(factory)


# ---- overlapping loads, untrusted addresses, the requests view's export ---------------------------


def _count_usage_calls(hits: list[str], slow: dict[str, float]) -> Callable[[FastAPI], None]:
    """A middleware recording each /usage path and delaying those whose query holds a `slow` key."""

    def customise(app: FastAPI) -> None:
        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            if request.url.path.startswith("/usage/"):
                hits.append(request.url.path)
            delay = max((s for text, s in slow.items() if text in request.url.query), default=0.0)
            if delay:
                await asyncio.sleep(delay)
            return await call_next(request)

    return customise


def test_a_slow_earlier_filter_never_renders_over_a_later_one(chromium: str, tmp_path: Path) -> None:
    hits: list[str] = []
    slow = {"model_id=gemini-2.5-pro": 2.0}
    with (
        serve(_database(tmp_path, RECORDS), RECORDS, _count_usage_calls(hits, slow)) as app,
        browser_page(chromium) as page,
    ):
        page.goto(f"{app}/dashboard#key={KEY}&range=30d")
        _loaded(page, 1)
        page.fill("#filters [name=model_id]", "gemini-2.5-pro")
        page.press("#filters [name=model_id]", "Enter")
        page.wait_for_timeout(200)
        page.fill("#filters [name=model_id]", "deepseek-chat")
        page.press("#filters [name=model_id]", "Enter")
        _loaded(page, 2)
        page.wait_for_timeout(2500)  # the slow load has answered by now
        assert page.get_attribute("body", "data-loads") == "2"
        models = page.eval_on_selector_all("#models-table tbody tr", "rows => rows.map(r => r.dataset.model)")
        assert models == ["deepseek-chat"]
        deepseek = {r.request_id for r in RECORDS if r.model_id == "deepseek-chat"}
        assert page.inner_text("#kpi-requests") == str(len(deepseek))
        ids = page.eval_on_selector_all(
            "#requests-table tbody tr", "rows => rows.map(r => r.dataset.requestId)"
        )
        assert set(ids) == deepseek


@pytest.mark.parametrize("start", ["7d", "2025-03-01T12:00:00%2B01:00", "2025-13-45T99:00"])
def test_a_custom_range_the_picker_cannot_produce_falls_back_and_says_so(
    chromium: str, app_url: str, start: str
) -> None:
    with browser_page(chromium) as page:
        page.goto(f"{app_url}/dashboard#key={KEY}&range=custom&from={start}")
        page.wait_for_selector('body[data-state=ready][data-loads="1"]', state="attached", timeout=8000)
        assert page.get_attribute("#message", "data-kind") == "notice"
        assert page.is_visible("#message")
        assert "Ignored the custom range" in page.inner_text("#message")
        assert page.input_value("#range") == "24h"
        assert page.inner_text("#kpi-requests") == str(
            len({r.request_id for r in _within(timedelta(hours=24))})
        )
        assert "range=custom" not in page.url


def test_a_refresh_interval_the_picker_does_not_offer_is_ignored(chromium: str, tmp_path: Path) -> None:
    hits: list[str] = []
    with (
        serve(_database(tmp_path, RECORDS), RECORDS, _count_usage_calls(hits, {})) as app,
        browser_page(chromium) as page,
    ):
        page.goto(f"{app}/dashboard#key={KEY}&refresh=3000000")  # over 2^31-1 ms: setInterval fires at once
        _loaded(page, 1)
        after_load = len(hits)
        page.wait_for_timeout(1500)
        assert len(hits) == after_load
        assert page.get_attribute("body", "data-refresh") == "0"
        assert not page.is_checked("#refresh-toggle")
        assert "refresh=" not in page.url
        assert "Ignored refresh" in page.inner_text("#message")


def test_a_refresh_tick_is_skipped_while_a_load_is_in_flight(chromium: str, tmp_path: Path) -> None:
    hits: list[str] = []
    slow: dict[str, float] = {}
    with (
        serve(_database(tmp_path, RECORDS), RECORDS, _count_usage_calls(hits, slow)) as app,
        browser_page(chromium) as page,
    ):
        page.clock.install()
        page.goto(f"{app}/dashboard#key={KEY}&refresh=10")
        _loaded(page, 1)
        slow["group_by=tenant_id"] = 3.0  # every load from now on takes 3 s
        page.clock.run_for(10_000)  # a tick: a second load starts
        page.wait_for_timeout(300)
        page.clock.run_for(10_000)  # a tick during that load: skipped
        # A load's requests reach the server at once; the next tick is 10 s (of real time) away.
        page.wait_for_timeout(800)
        assert hits.count("/usage/tags") == 2  # one a load
        _loaded(page, 2)
        assert hits.count("/usage/tags") == 2


def test_the_requests_view_exports_the_attempts_of_the_requests_it_lists(chromium: str, app_url: str) -> None:
    def export(page: Any) -> list[dict[str, str]]:
        with page.expect_download() as download:
            page.click("#export-csv")
        return list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))

    with browser_page(chromium, accept_downloads=True) as page:
        page.goto(f"{app_url}/dashboard#key={KEY}&range=7d&status=error")
        _loaded(page, 1)
        # req-a and req-f failed once each but a fallback rescued them: not failed requests.
        ids = page.eval_on_selector_all(
            "#requests-table tbody tr", "rows => rows.map(r => r.dataset.requestId)"
        )
        assert ids == ["req-e"]
        assert [(row["request_id"], row["attempt"]) for row in export(page)] == [("req-e", "1")]
        page.click('[data-view="attempts"]')
        page.wait_for_selector("#calls-table:not([hidden]) tbody tr[data-call-id]")
        week = sorted(_within(timedelta(days=7)), key=lambda r: r.created_at)
        failed = [(r.request_id, str(r.attempt)) for r in week if not r.success]
        assert len(failed) == 3  # req-f's and req-a's first attempts, and req-e
        assert [(row["request_id"], row["attempt"]) for row in export(page)] == failed
