"""The usage HTTP API (course_llm.proxy.usage_api) over seeded rows, on SQLite and PostgreSQL.

The router is mounted on a bare FastAPI app and called in-process through httpx's ASGI transport.
Expected figures come from the table in tests/usage_seed.py, worked out by hand.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import create_session_factory, dispose_session_factory
from course_llm.proxy.usage_api import create_usage_router
from tests.usage_seed import NEWEST_FIRST, seed

Factory = async_sessionmaker[AsyncSession]
KEY = "sk-test-master-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROUTES = ["/usage/calls", "/usage/summary", "/usage/requests/req-1"]


def _client(factory: Factory | None, key: str | None = KEY) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(create_usage_router(lambda: factory, lambda: key))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy.test")


@pytest.fixture
async def client(session_factory: Factory) -> AsyncIterator[httpx.AsyncClient]:
    await seed(session_factory)
    async with _client(session_factory) as client:
        yield client


async def _get(client: httpx.AsyncClient, path: str, **params: Any) -> httpx.Response:
    return await client.get(path, params=params, headers=AUTH)


async def test_calls_returns_a_page_of_rows_newest_first_with_totals(client: httpx.AsyncClient) -> None:
    response = await _get(client, "/usage/calls")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["data", "total", "page", "page_size", "total_pages", "next_cursor"]
    assert (body["total"], body["page"], body["page_size"], body["total_pages"]) == (9, 1, 50, 1)
    assert body["next_cursor"] is None
    assert [(r["request_id"], r["attempt"]) for r in body["data"]] == NEWEST_FIRST
    assert body["data"][0]["metadata"] == {"tags": {"seed": "req-5"}}


async def test_calls_pages_cover_every_row_exactly_once(client: httpx.AsyncClient) -> None:
    bodies = [(await _get(client, "/usage/calls", page=n, page_size=2)).json() for n in range(1, 6)]
    assert {b["total_pages"] for b in bodies} == {5}
    assert [(r["request_id"], r["attempt"]) for b in bodies for r in b["data"]] == NEWEST_FIRST


async def test_calls_by_cursor_walk_every_row_once_and_count_nothing(client: httpx.AsyncClient) -> None:
    seen, cursor, bodies = [], "", []
    while cursor is not None:
        body = (await _get(client, "/usage/calls", cursor=cursor, page_size=2)).json()
        bodies.append(body)
        seen += [(r["request_id"], r["attempt"]) for r in body["data"]]
        cursor = body["next_cursor"]
    assert seen == NEWEST_FIRST
    assert len(bodies) == 5
    assert {(b["total"], b["page"], b["total_pages"]) for b in bodies} == {(None, None, None)}


async def test_a_numbered_page_hands_out_the_cursor_of_the_next(client: httpx.AsyncClient) -> None:
    first = (await _get(client, "/usage/calls", page=1, page_size=4, status="error")).json()
    assert first["total"] == 4
    rest = (await _get(client, "/usage/calls", cursor=first["next_cursor"] or "", status="error")).json()
    assert first["next_cursor"] is None  # 4 errors fill page 1 exactly: no row follows
    assert len(rest["data"]) == 4  # an empty cursor starts again from the newest
    first = (await _get(client, "/usage/calls", page=1, page_size=3, status="error")).json()
    rest = (await _get(client, "/usage/calls", cursor=first["next_cursor"], status="error")).json()
    assert [(r["request_id"], r["attempt"]) for r in rest["data"]] == [("req-1", 1)]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cursor": "not-a-cursor"}, "cursor: is not a cursor this API handed out"),
        ({"cursor": "x' OR 1=1 --"}, "cursor: is not a cursor this API handed out"),
        ({"cursor": "", "page": "2"}, "cursor: give page or cursor, not both"),
    ],
)
async def test_a_bad_cursor_is_a_400_with_a_reason(
    client: httpx.AsyncClient, params: dict[str, str], message: str
) -> None:
    response = await _get(client, "/usage/calls", **params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


async def test_calls_applies_every_filter_given(client: httpx.AsyncClient) -> None:
    body = (await _get(client, "/usage/calls", action="video_analysis", status="success")).json()
    assert [(r["request_id"], r["attempt"]) for r in body["data"]] == [("req-2", 1), ("req-1", 2)]
    body = (await _get(client, "/usage/calls", tenant_id="globex", since="2025-03-02T09:00:01Z")).json()
    assert [(r["request_id"], r["attempt"]) for r in body["data"]] == [
        ("req-5", 1),
        ("req-3", 3),
        ("req-3", 2),
    ]


async def test_blank_filter_values_mean_any(client: httpx.AsyncClient) -> None:
    body = (await _get(client, "/usage/calls", action="", status="", tenant_id="")).json()
    assert body["total"] == 9


async def test_summary_groups_by_the_keys_given_with_exact_sums(client: httpx.AsyncClient) -> None:
    body = (await _get(client, "/usage/summary", group_by="action,model_id")).json()
    assert list(body) == ["groups", "totals"]
    got = [(g["action"], g["model_id"], g["calls"], g["failures"], g["cost_usd"]) for g in body["groups"]]
    assert got == [
        ("video_analysis", "gemini-2.5-flash", 2, 0, 1.5),
        ("course_structuring", "gemini-2.5-flash", 1, 0, 0.25),
        ("text_processing", "deepseek-chat", 2, 1, 0.125),
        ("presentation_analysis", "gemini-2.5-flash", 1, 0, 0.0625),
        ("course_structuring", "claude-sonnet", 2, 2, 0.0),
        ("video_analysis", "gemini-2.5-pro", 1, 1, 0.0),
    ]
    assert body["totals"]["calls"] == 9
    assert body["totals"]["cost_usd"] == 1.9375
    assert body["totals"]["fallback_rate"] == 0.4


async def test_summary_by_day_with_a_filter(client: httpx.AsyncClient) -> None:
    body = (await _get(client, "/usage/summary", group_by="day", status="error")).json()
    assert [(g["day"], g["calls"]) for g in body["groups"]] == [("2025-03-01", 1), ("2025-03-02", 3)]
    assert body["totals"]["error_rate"] == 1.0


async def test_a_request_drill_down_lists_its_attempts_in_order(client: httpx.AsyncClient) -> None:
    response = await _get(client, "/usage/requests/req-3")
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == "req-3"
    assert [(a["attempt"], a["model_id"], a["success"]) for a in body["attempts"]] == [
        (1, "claude-sonnet", False),
        (2, "claude-sonnet", False),
        (3, "gemini-2.5-flash", True),
    ]


async def test_an_unknown_request_is_404_with_a_reason(client: httpx.AsyncClient) -> None:
    response = await _get(client, "/usage/requests/no-such-request")
    assert response.status_code == 404
    assert response.json() == {"error": "no calls recorded for request 'no-such-request'"}


async def test_an_unknown_id_shorter_than_a_prefix_is_400(client: httpx.AsyncClient) -> None:
    response = await _get(client, "/usage/requests/nope")
    assert response.status_code == 400
    assert response.json() == {
        "error": "request_id: 'nope' is no recorded id, and a prefix needs at least 8 characters"
    }


@pytest.mark.parametrize("path", ROUTES)
async def test_every_route_rejects_a_missing_key(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 401
    assert "Authorization" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("header", [f"Bearer {KEY}x", "Bearer ", f"Basic {KEY}", KEY, "Bearer sk-wrong"])
async def test_every_route_rejects_a_wrong_key(client: httpx.AsyncClient, path: str, header: str) -> None:
    response = await client.get(path, headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json() == {"error": "invalid master key"}


async def test_a_wrong_key_is_refused_before_the_filters_are_read(client: httpx.AsyncClient) -> None:
    response = await client.get("/usage/calls", params={"status": "bogus"})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ROUTES)
async def test_a_server_without_a_master_key_serves_no_usage_data(
    session_factory: Factory, path: str
) -> None:
    async with _client(session_factory, key=None) as client:
        response = await client.get(path, headers={"Authorization": "Bearer "})
    assert response.status_code == 503
    assert "no master key" in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "params", "error"),
    [
        ("/usage/calls", {"status": "ok"}, "status: 'ok' is not one of: success, error"),
        ("/usage/calls", {"since": "last tuesday"}, "since: 'last tuesday' is neither an ISO 8601 time"),
        ("/usage/calls", {"since": "2025-03-02", "until": "2025-03-01"}, "since: 2025-03-02T00:00:00+00:00"),
        ("/usage/calls", {"page": "0"}, "page: must be 1 or more, got 0"),
        ("/usage/calls", {"page_size": "5000"}, "page_size: must be between 1 and 1000, got 5000"),
        ("/usage/calls", {"model": "gpt-4o"}, "model: unknown parameter; valid parameters: since, until"),
        ("/usage/calls", {"group_by": "action"}, "group_by: unknown parameter"),
        ("/usage/summary", {"group_by": "action,price"}, "group_by: unknown key 'price'; valid keys: action"),
        ("/usage/summary", {"page": "2"}, "page: unknown parameter"),
        ("/usage/requests/req-1", {"action": "x"}, "action: unknown parameter"),
    ],
)  # fmt: skip
async def test_a_bad_filter_is_a_400_naming_the_field(
    client: httpx.AsyncClient, path: str, params: dict[str, str], error: str
) -> None:
    response = await _get(client, path, **params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(error)


async def test_a_repeated_filter_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/usage/calls?action=a&action=b", headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {"error": "action: given more than once"}


async def test_an_unreadable_database_is_a_503_with_a_reason(tmp_path: Path) -> None:
    factory = create_session_factory(f"sqlite+aiosqlite:///{tmp_path / 'never-migrated.db'}")
    try:
        async with _client(factory) as client:
            response = await _get(client, "/usage/summary", group_by="action")
    finally:
        await dispose_session_factory(factory)
    assert response.status_code == 503
    assert response.json()["error"].startswith("database error:")
    assert "llm_calls" in response.json()["error"]


async def test_a_proxy_without_a_database_is_a_503() -> None:
    async with _client(None) as client:
        response = await _get(client, "/usage/calls")
    assert response.status_code == 503
    assert "no database" in response.json()["error"]


async def test_the_requests_view_export_holds_the_attempts_of_requests_that_failed_in_the_end(
    client: httpx.AsyncClient,
) -> None:
    def exported(response: httpx.Response) -> list[tuple[str, str]]:
        assert response.status_code == 200, response.text
        rows = list(csv.DictReader(io.StringIO(response.text)))
        return sorted((row["request_id"], row["attempt"]) for row in rows)

    attempts_view = await _get(client, "/usage/export.csv", status="error", since="2025-02-01T00:00:00")
    requests_view = await _get(
        client, "/usage/export.csv", status="error", since="2025-02-01T00:00:00", view="requests"
    )

    # Failed attempts (seed rows 1, 4, 5, 8); but only req-5 failed in the end (1 and 3 fell back).
    assert exported(attempts_view) == [("req-1", "1"), ("req-3", "1"), ("req-3", "2"), ("req-5", "1")]
    assert exported(requests_view) == [("req-5", "1")]


async def test_an_unknown_export_view_is_a_400(client: httpx.AsyncClient) -> None:
    response = await _get(client, "/usage/export.csv", view="everything")
    assert response.status_code == 400 and "view" in response.json()["error"]
