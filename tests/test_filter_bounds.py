"""Numbers from users are bounded: a bad one is a 400 from the usage API and a one-line CLI error.

Measured before: `since=99999999999d`, `since=1000000w` and `since=0001-01-01T00:00+05:00` answered
500 (and a CLI traceback), `page=10^18` answered 503. The shared parser (course_llm.reporting.usage)
now refuses spans over 100 years and pages over `MAX_PAGE`, and clamps times into a range Python,
SQLite and PostgreSQL all accept. Run against the seeded rows on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from course_llm.cli import app
from course_llm.errors import UsageQueryError
from course_llm.reporting.usage import MAX_PAGE, MAX_TIME, MIN_TIME, parse_page, parse_time
from tests.test_usage_api import AUTH, _client
from tests.test_usage_cli import seeded_url  # noqa: F401 (a fixture)
from tests.usage_seed import seed

Factory = async_sessionmaker[AsyncSession]
NOW = datetime(2025, 3, 3, tzinfo=UTC)
HUGE = "9" * 5000


# --- the parser ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "99999999999d",
        "1000000w",
        "5219w",
        "36526d",
        "876601h",
        "3155760001s",
        "0000036526d",
        pytest.param(f"{HUGE}m", id="5000-digits-m"),
    ],
)
def test_a_span_over_100_years_is_refused(raw: str) -> None:
    with pytest.raises(UsageQueryError, match=r"^since: .* reaches back more than 100 years"):
        parse_time("since", raw, NOW)


@pytest.mark.parametrize("raw", ["36525d", "5217w", "876600h", "3155760000s", "0d"])
def test_a_span_up_to_100_years_is_taken(raw: str) -> None:
    assert parse_time("since", raw, NOW) <= NOW


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0001-01-01T00:00+05:00", MIN_TIME),  # year 0 in UTC: Python cannot even hold it
        ("0001-01-01", MIN_TIME),
        ("9999-12-31T23:59:59-05:00", MAX_TIME),  # year 10000 in UTC
        ("9999-12-31T23:59:59", MAX_TIME),
        ("2025-03-01T12:00:00+02:00", datetime(2025, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_a_time_is_clamped_into_the_range_both_databases_take(raw: str, expected: datetime) -> None:
    assert parse_time("until", raw, NOW) == expected


@pytest.mark.parametrize(
    ("page", "page_size", "message"),
    [
        (10**18, 50, "page: must be at most 1,000,000,000, got 1000000000000000000"),
        (str(10**18), 50, "page: must be at most 1,000,000,000"),
        (HUGE, 50, "page: 5000 characters is no whole number in range"),
        (10**5000, 50, "page: must be at most 1,000,000,000, got a number of over 30 digits"),
        (1, 10**18, "page_size: must be between 1 and 1000"),
        (-(10**18), 50, "page: must be 1 or more"),
        ("1e3", 50, "page: '1e3' is not a whole number"),
    ],
    ids=["1e18", "1e18-text", "5000-digit-text", "5000-digit-int", "page-size-1e18", "-1e18", "1e3"],
)
def test_a_page_out_of_range_is_refused(page: Any, page_size: Any, message: str) -> None:
    with pytest.raises(UsageQueryError) as caught:
        parse_page(page, page_size)
    assert str(caught.value).startswith(message)


# --- the HTTP API --------------------------------------------------------------------------------


@pytest.fixture
async def client(session_factory: Factory) -> AsyncIterator[httpx.AsyncClient]:
    await seed(session_factory)
    async with _client(session_factory) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "params", "error"),
    [
        ("/usage/calls", {"since": "99999999999d"}, "since: '99999999999d' reaches back more than 100 years"),
        ("/usage/calls", {"since": "1000000w"}, "since: '1000000w' reaches back more than 100 years"),
        ("/usage/summary", {"until": "1000000w"}, "until: '1000000w' reaches back more than 100 years"),
        ("/usage/summary", {"since": f"{HUGE}d"}, "since: '9999"),
        ("/usage/calls", {"page": str(10**18)}, "page: must be at most 1,000,000,000"),
        ("/usage/calls", {"page_size": str(10**18)}, "page_size: must be between 1 and 1000"),
        ("/usage/calls", {"page": HUGE}, "page: 5000 characters is no whole number in range"),
        ("/usage/summary", {"tenant_id": "a\x00b"}, "tenant_id: contains a NUL character"),
    ],
)  # fmt: skip
async def test_an_unbounded_value_is_a_400_naming_the_field(
    client: httpx.AsyncClient, path: str, params: dict[str, str], error: str
) -> None:
    response = await client.get(path, params=params, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(error)


@pytest.mark.parametrize(
    ("params", "rows"),
    [
        ({"since": "0001-01-01T00:00+05:00"}, 9),
        ({"since": "0001-01-01", "until": "9999-12-31T23:59:59-05:00"}, 9),
        ({"until": "0001-01-01T00:00+05:00"}, 0),
        ({"since": "9999-12-31T23:59:59-05:00"}, 0),
        ({"since": "36525d"}, 9),
    ],
)
async def test_times_at_the_ends_of_the_range_are_answered(
    client: httpx.AsyncClient, params: dict[str, str], rows: int
) -> None:
    calls = await client.get("/usage/calls", params=params, headers=AUTH)
    assert calls.status_code == 200, calls.text
    assert calls.json()["total"] == rows
    summary = await client.get("/usage/summary", params={**params, "group_by": "day"}, headers=AUTH)
    assert summary.status_code == 200, summary.text
    assert summary.json()["totals"]["calls"] == rows


async def test_the_last_page_allowed_is_answered_empty(client: httpx.AsyncClient) -> None:
    params = {"page": str(MAX_PAGE), "page_size": "1000"}
    response = await client.get("/usage/calls", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    assert (response.json()["data"], response.json()["total"]) == ([], 9)


# --- the CLI -------------------------------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.mark.usefixtures("seeded_url")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["calls", "--since", "99999999999d"], "error: since: '99999999999d' reaches back more than 100"),
        (["usage", "--since", "1000000w"], "error: since: '1000000w' reaches back more than 100 years"),
        (["export", "--until", "1000000w", "-o", "x.csv"], "error: until: '1000000w' reaches back"),
        (["calls", "--page", str(10**18)], "error: page: must be at most 1,000,000,000"),
        (["calls", "--page-size", str(10**18)], "error: page_size: must be between 1 and 1000"),
        (["usage", "--tenant", "a\x00b"], "error: tenant_id: contains a NUL character"),
        (["calls", "--request-id", "\x00"], "error: request_id: contains a NUL character"),
    ],
)  # fmt: skip
def test_an_unbounded_option_is_one_line_and_exit_1(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(message), result.output


@pytest.mark.usefixtures("seeded_url")
def test_a_time_before_year_1_in_utc_is_answered_by_the_cli() -> None:
    result = run("usage", "--json", "--since", "0001-01-01T00:00+05:00", "--until", "9999-12-31T23:59-05:00")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["calls"] == 9
