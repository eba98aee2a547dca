"""Browser tests of /dashboard: headless Chromium loads the page from a running app and draws seeded data.

The app is the real thing minus LiteLLM: the dashboard router, the real usage router
(`course_llm.proxy.usage_api`) over a migrated SQLite file holding the rows below, and the metrics
router, served by uvicorn on a free port in a background thread. Chromium is driven by its own
command line (`--dump-dom`, `--screenshot`), so no browser library is needed; the proxy key reaches
the page as `#key=…`, which the page moves into sessionStorage.

Chromium comes from Debian's `chromium` package. The `chromium` fixture installs it with apt-get
when it is missing; when that fails the tests fail under CI (a silent skip would hide them) and
skip elsewhere, with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import NoReturn

import pytest
import uvicorn
from fastapi import FastAPI

from course_llm.db import create_session_factory, dispose_session_factory, insert_records, upgrade_database
from course_llm.proxy.dashboard import create_dashboard_router
from course_llm.proxy.usage_api import create_usage_router
from course_llm.recording.records import CallRecord
from course_llm.reporting.metrics import MetricsRecorder, create_metrics_router

KEY = "sk-dashboard-test-key"
SCRIPTS = ("dashboard_format.js", "dashboard_charts.js", "dashboard_tables.js", "dashboard.js")
NOW = datetime.now(UTC).replace(microsecond=0)
PALETTE = ["#2f6fdf", "#e8833a", "#23a37a", "#c8372d", "#8a5cd1", "#d4b106", "#17a2b8"]

FLASH, PRO = ("gemini", "gemini-2.5-flash"), ("gemini", "gemini-2.5-pro")
CLAUDE, DEEPSEEK = ("anthropic", "claude-sonnet"), ("deepseek", "deepseek-chat")
DAY, HOUR, SEC = timedelta(days=1), timedelta(hours=1), timedelta(seconds=1)

# Costs are sums of powers of two so every total is exact. The last row is older than 30 days: it
# shows in a custom range reaching back far enough, but not in any figure of the 30-day range.
# request, attempt, age, action, strategy asked, served, model, tokens in/out, latency ms, cost, failure
ROWS = [
    ("req-a", 1, 2 * DAY, "video_analysis", "quality", "quality", PRO, None, None, 1200, None, 503),
    ("req-a", 2, 2*DAY - SEC, "video_analysis", "quality", "quality", FLASH, 1000, 200, 2500, 0.5, None),
    ("req-b", 1, DAY, "course_structuring", "quality", "quality", CLAUDE, 3000, 800, 8000, 1.25, None),
    ("req-c", 1, 5 * HOUR, "text_processing", "default", "default", DEEPSEEK, 500, 100, 900, 0.125, None),
    ("req-d", 1, 6 * DAY, "presentation_analysis", "default", "default", FLASH, 400, 50, 1500, 0.0625, None),
    ("req-e", 1, HOUR, "text_processing", "budget", "budget", DEEPSEEK, None, None, 300, None, 429),
    ("req-f", 1, 3 * DAY, "course_structuring", "quality", "quality", CLAUDE, None, None, 700, None, 500),
    ("req-f", 2, 3*DAY - SEC, "course_structuring", "quality", "default", FLASH, 2000, 300, 1800, 0.25, None),
    ("req-old", 1, 45 * DAY, "video_analysis", "default", "default", FLASH, 9000, 900, 3000, 2, None),
]  # fmt: skip
#: Provider error text is shown in the page; markup in it must stay text.
HOSTILE_ERROR = '<img src=x id="injected">rate limited'


def seeded_records() -> list[CallRecord]:
    return [
        CallRecord(
            request_id=request, attempt=attempt, created_at=NOW - age, action=action, strategy=strategy,
            served_strategy=served, provider=model[0], model_id=model[1], tokens_in=tokens_in,
            tokens_out=tokens_out, latency_ms=latency, cost_usd=cost, success=status is None,
            status_code=status, error_class=None if status is None else "APIError",
            error_message=None if status is None else HOSTILE_ERROR, tenant_id="acme", source="proxy",
        )
        for (request, attempt, age, action, strategy, served, model, tokens_in, tokens_out, latency, cost,
             status) in ROWS
    ]  # fmt: skip


RECENT = [r for r in seeded_records() if NOW - r.created_at <= timedelta(days=30)]


# ---- Chromium ------------------------------------------------------------------------------------


def _find_chromium() -> str | None:
    for candidate in (os.environ.get("COURSE_LLM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _install_chromium() -> str:
    """Run `apt-get update && apt-get install -y chromium`; return why it failed ('' when it did not)."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available (not a Debian/Ubuntu machine)"
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and shutil.which("sudo") is None:
        return "not root and sudo is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            done = subprocess.run(prefix + command, capture_output=True, text=True, timeout=1200, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(command)}: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"{' '.join(command)} exited {done.returncode}: {' | '.join(tail)}"
    return ""


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, installed from Debian's package when missing."""
    path = _find_chromium()
    if path is None:
        failure = _install_chromium()
        path = _find_chromium()
        if path is None:
            _unavailable(
                f"Chromium is missing and could not be installed: {failure or 'no binary after install'}"
            )
    return path


def _run_chromium(chromium: str, tmp: Path, *args: str) -> str:
    profile = tmp / f"profile-{time.monotonic_ns()}"
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,900",
        "--virtual-time-budget=10000", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


# ---- the DOM, as Chromium serialised it ----------------------------------------------------------


class Element:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs = tag, attrs
        self.children: list[Element | str] = []

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def select(self, tag: str, **attrs: str) -> list[Element]:
        """Descendants with `tag` (or any, for '*') whose attributes include `attrs` (`_` for `-`)."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            e
            for e in self.iter()
            if tag in ("*", e.tag) and all(e.attrs.get(k) == v for k, v in wanted.items())
        ]

    def by_id(self, element_id: str) -> Element:
        (found,) = self.select("*", id=element_id)
        return found

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)


class _TreeBuilder(HTMLParser):
    VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def dump_dom(chromium: str, tmp: Path, url: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(_run_chromium(chromium, tmp, "--dump-dom", url))
    return builder.root


# ---- PNG pixels (stdlib only) --------------------------------------------------------------------


def png_colours(data: bytes, box: tuple[int, int, int, int]) -> set[tuple[int, int, int]]:
    """The distinct RGB colours inside `box` (x, y, width, height) of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        offset += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, "unexpected PNG format"
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    x0, y0, w, h = box
    previous, colours = bytearray(stride), set()
    for row in range(min(height, y0 + h)):  # rows are filtered against the one above: decode from 0
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        previous = line
        if row >= y0:
            for x in range(x0, min(width, x0 + w)):
                colours.add((line[x * bpp], line[x * bpp + 1], line[x * bpp + 2]))
    return colours


# ---- the app under test --------------------------------------------------------------------------


@contextmanager
def serve(
    database_url: str, records: list[CallRecord], customise: Callable[[FastAPI], None] | None = None
) -> Iterator[str]:
    """The dashboard, usage and metrics routers over `database_url`, on a free local port.

    `customise(app)` runs before the server starts: a test adds middleware there (a slow route,
    a request counter).
    """
    session_factory = create_session_factory(database_url)
    recorder = MetricsRecorder()
    for record in records:
        recorder.observe(record)
    app = FastAPI()
    if customise is not None:
        customise(app)
    app.include_router(create_dashboard_router())
    app.include_router(create_usage_router(lambda: session_factory, lambda: KEY))
    app.include_router(create_metrics_router(recorder, lambda: KEY))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        asyncio.run(dispose_session_factory(session_factory))


def _database(tmp: Path, records: list[CallRecord]) -> str:
    url = f"sqlite+aiosqlite:///{tmp / 'dashboard.db'}"
    upgrade_database(url)

    async def seed() -> None:
        factory = create_session_factory(url)
        try:
            await insert_records(factory, records)
        finally:
            await dispose_session_factory(factory)

    asyncio.run(seed())
    return url


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    records = seeded_records()
    with serve(_database(tmp_path_factory.mktemp("seeded"), records), records) as url:
        yield url


@pytest.fixture(scope="module")
def page(chromium: str, app_url: str, tmp_path_factory: pytest.TempPathFactory) -> Element:
    """The dashboard's DOM after it loaded with the right key and the default filters."""
    url = f"{app_url}/dashboard#key={KEY}&range=30d"
    return dump_dom(chromium, tmp_path_factory.mktemp("chromium"), url)


def _day(record: CallRecord) -> str:
    return record.created_at.astimezone(UTC).date().isoformat()


def _usd(value: float) -> str:
    """The dashboard's money format for the seeded figures (all between $0.0001 and $1,000)."""
    if value >= 1:
        return f"${value:,.2f}"
    whole, _, decimals = f"{value:.4f}".rstrip("0").partition(".")
    return f"${whole}.{decimals:0<2}"


# ---- tests without a browser ---------------------------------------------------------------------


def _get(url: str, key: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["content-type"], error.read()


def test_dashboard_page_and_assets_are_served_without_a_key(app_url: str) -> None:
    status, content_type, body = _get(f"{app_url}/dashboard")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b'id="requests-table"' in body and b'id="calls-table"' in body
    for name, kind in [*((name, "text/javascript") for name in SCRIPTS), ("dashboard.css", "text/css")]:
        status, content_type, _ = _get(f"{app_url}/dashboard/static/{name}")
        assert status == 200 and content_type.startswith(kind)
    assert _get(f"{app_url}/dashboard/static/..%2Fdashboard.py")[0] == 404


def test_dashboard_loads_nothing_from_other_origins() -> None:
    static = Path(__file__).parents[1] / "course_llm" / "proxy" / "static"
    for asset in static.iterdir():
        text = asset.read_text().replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, asset.name


def test_metrics_are_mounted_next_to_the_dashboard_behind_the_key(app_url: str) -> None:
    assert _get(f"{app_url}/metrics")[0] == 401
    status, _, body = _get(f"{app_url}/metrics", key=KEY)
    assert status == 200
    assert b'course_llm_calls_total{action="video_analysis",model="gemini-2.5-flash"' in body


# ---- tests in Chromium ---------------------------------------------------------------------------


@pytest.mark.browser
def test_cost_charts_have_one_bar_segment_per_seeded_day_and_series(page: Element) -> None:
    for chart_id, key in (("chart-cost-by-action", "action"), ("chart-cost-by-model", "model_id")):
        chart = page.by_id(chart_id)
        expected: dict[tuple[str, str], float] = {}
        for r in RECENT:
            if r.cost_usd:
                expected[(_day(r), getattr(r, key))] = (
                    expected.get((_day(r), getattr(r, key)), 0) + r.cost_usd
                )
        segments = {(rect.attrs["data-bucket"], rect.attrs["data-series"]): float(rect.attrs["data-cost"])
                    for rect in chart.select("rect")}  # fmt: skip
        assert segments == expected, chart_id
        assert chart.attrs["data-bars"] == str(len(expected))
        # 30 days back from now, in whole UTC days: the first day's part and today's make 31.
        assert (chart.attrs["data-unit"], chart.attrs["data-buckets"]) == ("day", "31")
        legend = {span.attrs["data-series"]: span.text for span in chart.select("span")}
        per_series: dict[str, float] = {}
        for (_, series), cost in expected.items():
            per_series[series] = per_series.get(series, 0) + cost
        assert legend == {series: f"{series} {_usd(cost)}" for series, cost in per_series.items()}


@pytest.mark.browser
def test_headline_figures_are_the_seeded_30_day_totals_with_both_error_rates(page: Element) -> None:
    cost = sum(r.cost_usd or 0 for r in RECENT)
    assert cost == 2.1875
    assert page.by_id("kpi-cost").text == _usd(cost) == "$2.19"
    assert (_usd(0.5), _usd(0.125), _usd(0.0625)) == ("$0.50", "$0.125", "$0.0625")
    assert float(page.by_id("kpi-cost").attrs["data-value"]) == cost
    requests = {r.request_id for r in RECENT}
    succeeded = {r.request_id for r in RECENT if r.success}
    assert page.by_id("kpi-requests").text == str(len(requests)) == "6"
    # Per request: only req-e never succeeded. Per attempt: req-a, req-e and req-f each lost one.
    failed_requests = len(requests - succeeded)
    assert page.by_id("kpi-request-error-rate").text == f"{failed_requests / len(requests) * 100:.1f}%"
    assert page.by_id("kpi-request-error-rate-note").text == "1 of 6 requests failed"
    failures = sum(not r.success for r in RECENT)
    assert page.by_id("kpi-attempt-error-rate").text == f"{failures / len(RECENT) * 100:.1f}%"
    assert page.by_id("kpi-attempt-error-rate-note").text == f"{failures} of {len(RECENT)} attempts failed"
    # Five requests succeeded in the window; req-a and req-f needed a second attempt.
    assert page.by_id("kpi-fallback-rate").text == f"{2 / 5 * 100:.1f}%"
    assert page.select("body")[0].attrs["data-state"] == "ready"
    assert page.by_id("message").attrs.get("hidden") is not None


@pytest.mark.browser
def test_model_table_covers_the_same_range_as_the_header(page: Element) -> None:
    rows = {
        tr.attrs["data-model"]: tr
        for tr in page.by_id("models-table").select("tr")
        if "data-model" in tr.attrs
    }
    assert set(rows) == {r.model_id for r in RECENT}
    flash = [r for r in RECENT if r.model_id == "gemini-2.5-flash"]
    assert rows["gemini-2.5-flash"].select("td")[1].text == str(len(flash)) == "3"  # not the 45-day-old row
    claude = rows["claude-sonnet"]
    # claude-sonnet latencies: 8000 ms and 700 ms → continuous p50 4350 ms, read from the latency
    # histogram within 5 %.
    shown = claude.select("td", **{"class": "num p50"})[0].text
    assert shown.endswith(" s") and abs(float(shown[:-2]) * 1000 - 4350) <= 0.05 * 4350, shown


@pytest.mark.browser
def test_requests_view_lists_one_line_per_request_newest_first(page: Element) -> None:
    rows = page.by_id("requests-table").select("tbody")[0].select("tr")
    first_attempts = sorted((r for r in RECENT if r.attempt == 1), key=lambda r: r.created_at, reverse=True)
    assert [tr.attrs["data-request-id"] for tr in rows] == [r.request_id for r in first_attempts]
    by_id = {tr.attrs["data-request-id"]: tr for tr in rows}
    # req-f: attempt 1 at -3 d (700 ms), attempt 2 one second later (1800 ms): 2.8 s end to end.
    assert (by_id["req-f"].attrs["data-attempts"], by_id["req-f"].attrs["data-success"]) == ("2", "true")
    assert by_id["req-f"].select("td", **{"class": "num latency"})[0].text == "2.80 s"
    assert by_id["req-e"].attrs["data-success"] == "false"
    assert [a.text for a in by_id["req-a"].select("a")] == ["req-a"]  # the id in full
    assert page.by_id("page-info").text == "Page 1 of 1 · 6 requests"
    assert "hidden" in page.by_id("calls-table").attrs


@pytest.mark.browser
def test_attempts_view_lists_the_range_newest_first(chromium: str, app_url: str, tmp_path: Path) -> None:
    dom = dump_dom(chromium, tmp_path, f"{app_url}/dashboard#key={KEY}&range=30d&view=attempts")
    rows = dom.by_id("calls-table").select("tbody")[0].select("tr")
    expected = sorted(RECENT, key=lambda r: r.created_at, reverse=True)
    assert [(tr.attrs["data-request-id"], tr.attrs["data-success"]) for tr in rows] == [
        (r.request_id, str(r.success).lower()) for r in expected
    ]
    assert dom.by_id("page-info").text == f"Page 1 of 1 · {len(RECENT)} attempts"


@pytest.mark.browser
def test_provider_error_text_is_shown_as_text_not_markup(page: Element) -> None:
    assert page.select("img", id="injected") == []
    failed = [
        tr for tr in page.by_id("requests-table").select("tr") if tr.attrs.get("data-success") == "false"
    ]
    assert any(td.attrs.get("title") == HOSTILE_ERROR for tr in failed for td in tr.select("td"))


@pytest.mark.browser
def test_filters_in_the_url_reach_both_views(chromium: str, app_url: str, tmp_path: Path) -> None:
    everything = "range=custom&from=2000-01-01T00:00&status=error"
    dom = dump_dom(chromium, tmp_path, f"{app_url}/dashboard#key={KEY}&{everything}&view=attempts")
    rows = dom.by_id("calls-table").select("tbody")[0].select("tr")
    assert sorted(tr.attrs["data-request-id"] for tr in rows) == ["req-a", "req-e", "req-f"]
    assert all(tr.attrs["data-success"] == "false" for tr in rows)
    # As a request outcome, `error` means no attempt succeeded: only req-e.
    dom = dump_dom(chromium, tmp_path, f"{app_url}/dashboard#key={KEY}&{everything}")
    rows = dom.by_id("requests-table").select("tbody")[0].select("tr")
    assert [tr.attrs["data-request-id"] for tr in rows] == ["req-e"]


@pytest.mark.browser
def test_request_panel_shows_the_attempt_chain_and_latency_with_backoff(
    chromium: str, app_url: str, tmp_path: Path
) -> None:
    dom = dump_dom(chromium, tmp_path, f"{app_url}/dashboard#key={KEY}&request=req-f")
    detail = dom.by_id("request-detail")
    assert "hidden" not in detail.attrs
    attempts = detail.select("li")
    assert [
        (li.attrs["data-attempt"], li.attrs["data-model"], li.attrs["data-success"]) for li in attempts
    ] == [
        ("1", "claude-sonnet", "false"),
        ("2", "gemini-2.5-flash", "true"),
    ]
    assert "500 APIError" in attempts[0].text
    # 700 ms + 1800 ms of attempts, but 2.8 s from the first start to the last end.
    assert dom.by_id("request-latency").attrs["data-value"] == "2800"
    assert dom.by_id("request-summary").text.startswith(f"2 attempts · succeeded · {_usd(0.25)} · 2.80 s")


@pytest.mark.browser
def test_a_wrong_key_shows_a_401_message(chromium: str, app_url: str, tmp_path: Path) -> None:
    dom = dump_dom(chromium, tmp_path, f"{app_url}/dashboard#key=not-the-key")
    assert dom.select("body")[0].attrs["data-state"] == "unauthorized"
    message = dom.by_id("message")
    assert "hidden" not in message.attrs and "401" in message.text
    assert dom.by_id("chart-cost-by-action").select("rect") == []


@pytest.mark.browser
def test_without_a_key_the_page_asks_for_one(chromium: str, app_url: str, tmp_path: Path) -> None:
    dom = dump_dom(chromium, tmp_path, f"{app_url}/dashboard")
    assert dom.select("body")[0].attrs["data-state"] == "need-key"
    assert "Enter the proxy key" in dom.by_id("message").text


@pytest.mark.browser
def test_a_new_install_shows_how_to_make_the_first_call(chromium: str, tmp_path: Path) -> None:
    with serve(_database(tmp_path, []), []) as url:
        dom = dump_dom(chromium, tmp_path, f"{url}/dashboard#key={KEY}&range=30d")
    assert dom.select("body")[0].attrs["data-state"] == "empty"
    assert "No calls recorded yet" in dom.by_id("message").text
    assert "hidden" not in dom.by_id("first-steps").attrs
    curl = dom.by_id("first-curl").text
    # This proxy's own address; a key other than the development key stays off the screen.
    assert curl.startswith(f"curl {url}/v1/chat/completions")
    assert '"Authorization: Bearer $LITELLM_MASTER_KEY"' in curl and KEY not in curl
    assert dom.by_id("kpi-requests").text == "0"
    assert dom.by_id("chart-cost-by-action").select("rect") == []
    assert "No cost recorded" in dom.by_id("chart-cost-by-action").text
    assert "No requests match" in dom.by_id("requests-table").text


@pytest.mark.browser
def test_screenshot_shows_the_charts_in_their_series_colours(
    chromium: str, app_url: str, page: Element, tmp_path: Path
) -> None:
    shot = tmp_path / "dashboard.png"
    _run_chromium(chromium, tmp_path, f"--screenshot={shot}", f"{app_url}/dashboard#key={KEY}&range=30d")
    for chart_id in ("chart-cost-by-action", "chart-cost-by-model"):
        chart = page.by_id(chart_id)
        x, y, w, h = (int(v) for v in chart.attrs["data-layout"].split(","))
        assert y + h <= 900 and w > 300, f"{chart_id} is not in the first screen: {(x, y, w, h)}"
        colours = png_colours(shot.read_bytes(), (x, y, w, h))
        series = {rect.attrs["data-series"] for rect in chart.select("rect")}
        wanted = {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in PALETTE[: len(series)]}
        assert wanted <= colours, f"{chart_id}: series colours missing from the screenshot"
        assert len(colours) >= 6, f"{chart_id}: the chart area looks blank"
