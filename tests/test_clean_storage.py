"""Poisoned values in a real database: cleaned rows are stored and read back, on SQLite and PostgreSQL.

Three parts: the raw poisons really break a database (so the rest proves something); the same
records, cleaned, are inserted with `insert_records` and read back through the usage queries and
the usage API; rows that another path (plain SQL) filled with NaN or ±Infinity still render.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import insert_records
from course_llm.db.usage import list_calls, request_attempts, summarize
from course_llm.db.writes import insert_rows
from course_llm.proxy.usage_api import create_usage_router
from course_llm.recording.clean import (
    MAX_METADATA_BYTES,
    OUT_OF_RANGE_KEY,
    TRUNCATED_KEY,
    clean_record,
    metadata_size,
)
from course_llm.recording.records import CallRecord, new_id
from course_llm.reporting.usage import UsageFilters
from tests.rows import row

Factory = async_sessionmaker[AsyncSession]
KEY = "sk-test-master-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NAN, INF = float("nan"), float("inf")


def record(request_id: str, **overrides: Any) -> CallRecord:
    """tests/rows.py's row, as the proxy records it, with a latency and a cost."""
    values: dict[str, Any] = {"source": "proxy", "latency_ms": 100.0, "cost_usd": 0.5, **overrides}
    return row(request_id=request_id, **values)


def poisoned(request_id: str) -> list[CallRecord]:
    """Two attempts carrying every poison a client or an upstream can send."""
    return [
        record(
            request_id,
            attempt=10**6,
            success=False,
            end_user="eve\x00x",
            tenant_id="acme\ud800",
            operation="\x00grade",
            error_class="Bad\udc00Error",
            error_message="upstream said \x00 \ud83d",
            status_code=2**40,
            tokens_in=10**20,
            tokens_out=-5,
            latency_ms=NAN,
            cost_usd=INF,
            metadata={
                "score": NAN,
                "k\x00": "\ud800",
                "infinities": [INF, -INF],
                "big": 10**30,
                "blob": "x" * 1_000_000,
                "object": object(),
                "tags": {"course": "bio\x00101"},
            },
        ),
        record(request_id, attempt=2, latency_ms=-INF, cost_usd=0.25, metadata={"score": -INF}),
    ]


def dialect(database_url: str) -> str:
    return "postgresql" if database_url.startswith("postgresql") else "sqlite"


def usage_client(factory: Factory) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(create_usage_router(lambda: factory, lambda: KEY))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy.test")


@pytest.fixture
async def client(session_factory: Factory) -> AsyncIterator[httpx.AsyncClient]:
    async with usage_client(session_factory) as client:
        yield client


# --- the poisons are real -----------------------------------------------------------------------

#: One poison at a time, and the databases that refuse it raw.
RAW_POISONS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("nul_in_text", {"end_user": "eve\x00x"}, {"postgresql"}),
    ("nul_in_json", {"metadata": {"k": "a\x00b"}}, {"postgresql"}),
    ("lone_surrogate", {"tenant_id": "acme\ud800"}, {"postgresql", "sqlite"}),
    ("nan_in_json", {"metadata": {"score": NAN}}, {"postgresql"}),
    ("huge_token_count", {"tokens_in": 10**20}, {"postgresql", "sqlite"}),
    ("attempt_past_smallint", {"attempt": 10**6}, {"postgresql"}),
]


@pytest.mark.parametrize(("poison", "fields", "refused_by"), RAW_POISONS, ids=[p[0] for p in RAW_POISONS])
async def test_a_raw_poison_is_refused_by_the_database_and_stored_once_cleaned(
    session_factory: Factory, database_url: str, poison: str, fields: dict[str, Any], refused_by: set[str]
) -> None:
    raw = record(str(new_id()), **fields)
    if dialect(database_url) in refused_by:
        # Row INSERTs show the database's own verdict (PostgreSQL's COPY path encodes metadata
        # with orjson, which writes NaN as null: the same value cleaning gives it).
        with pytest.raises(Exception):  # noqa: B017 - each driver raises its own type
            await insert_rows(session_factory, [raw])
    assert await insert_records(session_factory, [clean_record(raw)]) == 1
    [row] = await request_attempts(session_factory, raw.request_id)
    json.dumps(row, allow_nan=False)  # strict JSON as read back


# --- cleaned rows, read back --------------------------------------------------------------------


async def test_cleaned_poisoned_rows_are_stored_and_read_back_by_the_usage_queries(
    session_factory: Factory,
) -> None:
    request_id = str(new_id())
    assert await insert_records(session_factory, [clean_record(r) for r in poisoned(request_id)]) == 2

    # Attempt order: the clamped 32767 comes after attempt 2.
    second, first = await request_attempts(session_factory, request_id)
    assert (first["end_user"], first["tenant_id"], first["operation"]) == ("evex", "acme\ufffd", "grade")
    assert (first["error_class"], first["error_message"]) == ("Bad\ufffdError", "upstream said  \ufffd")
    assert (first["attempt"], first["status_code"], first["tokens_in"], first["tokens_out"]) == (
        32767,
        None,
        None,
        None,
    )
    assert (first["latency_ms"], first["cost_usd"], second["latency_ms"]) == (None, None, None)
    metadata = first["metadata"]
    assert metadata[OUT_OF_RANGE_KEY] == {
        "tokens_in": str(10**20),
        "tokens_out": "-5",
        "status_code": str(2**40),
    }
    assert (metadata["score"], metadata["k"], metadata["infinities"]) == (None, "\ufffd", [None, None])
    assert metadata["big"] == str(10**30)  # beyond 64 bits: kept as its text
    assert metadata["object"].startswith("<object object at")
    assert metadata["tags"] == {"course": "bio101"}
    assert metadata[TRUNCATED_KEY] is True
    assert 10_000 < len(metadata["blob"]) < MAX_METADATA_BYTES
    assert metadata_size(metadata) <= MAX_METADATA_BYTES
    assert second["metadata"] == {"score": None}

    page = await list_calls(session_factory, UsageFilters(request_id=request_id))
    assert page.total == 2
    json.dumps(page.as_dict(), allow_nan=False)
    summary = await summarize(session_factory, UsageFilters(request_id=request_id), ["tenant_id"])
    assert summary.totals["calls"] == 2 and summary.totals["cost_usd"] == 0.25
    assert {g["tenant_id"] for g in summary.groups} == {"acme\ufffd", None}


async def test_cleaned_poisoned_rows_are_served_by_the_usage_api(
    session_factory: Factory, client: httpx.AsyncClient
) -> None:
    request_id = str(new_id())
    await insert_records(session_factory, [clean_record(r) for r in poisoned(request_id)])

    calls = await client.get("/usage/calls", params={"tenant_id": "acme\ufffd"}, headers=AUTH)
    assert calls.status_code == 200
    assert [r["end_user"] for r in calls.json()["data"]] == ["evex"]
    summary = await client.get("/usage/summary", params={"group_by": "action,tenant_id"}, headers=AUTH)
    assert summary.status_code == 200
    assert summary.json()["totals"]["calls"] == 2
    drill_down = await client.get(f"/usage/requests/{request_id}", headers=AUTH)
    assert drill_down.status_code == 200
    assert [a["attempt"] for a in drill_down.json()["attempts"]] == [2, 32767]


# --- rows another path wrote --------------------------------------------------------------------


async def _poison_with_plain_sql(factory: Factory, database_url: str, request_id: str) -> None:
    """Overwrite one row's floats (and, on SQLite, its JSON text) with NaN and ±Infinity."""
    if dialect(database_url) == "sqlite":
        # SQLite stores NaN in a REAL column as NULL, but keeps ±Infinity (9e999), and its JSON
        # column is text: Python's json module writes and reads NaN and Infinity there.
        statement = (
            "UPDATE llm_calls SET latency_ms = 9e999, cost_usd = -9e999, "
            """metadata = '{"score": NaN, "tags": {"limit": Infinity}}' WHERE request_id = :id"""
        )
    else:
        # PostgreSQL keeps NaN and ±Infinity in double precision (JSONB refuses them).
        statement = (
            "UPDATE llm_calls SET latency_ms = 'NaN'::float8, cost_usd = 'Infinity'::float8 "
            "WHERE request_id = :id"
        )
    async with factory() as session, session.begin():
        result = await session.execute(sa.text(statement), {"id": request_id})
        assert result.rowcount == 1  # type: ignore[attr-defined]


async def test_rows_holding_nan_or_infinity_written_by_plain_sql_are_served_as_null(
    session_factory: Factory, client: httpx.AsyncClient, database_url: str
) -> None:
    bad, good = str(new_id()), str(new_id())
    await insert_records(session_factory, [record(bad, metadata={"score": 1.0}), record(good)])
    await _poison_with_plain_sql(session_factory, database_url, bad)

    # The queries themselves read such values as None (the CLI and the export use them too) ...
    [row] = await request_attempts(session_factory, bad)
    assert (row["latency_ms"], row["cost_usd"]) == (None, None)
    summary = await summarize(session_factory, UsageFilters(), ["action"])
    json.dumps([summary.as_dict(), row], allow_nan=False)

    # ... and the API serves them.
    calls = await client.get("/usage/calls", headers=AUTH)
    assert calls.status_code == 200
    rows = {row["request_id"]: row for row in calls.json()["data"]}
    assert (rows[bad]["latency_ms"], rows[bad]["cost_usd"]) == (None, None)
    assert (rows[good]["latency_ms"], rows[good]["cost_usd"]) == (100.0, 0.5)
    if dialect(database_url) == "sqlite":
        assert rows[bad]["metadata"] == {"score": None, "tags": {"limit": None}}

    drill_down = await client.get(f"/usage/requests/{bad}", headers=AUTH)
    assert drill_down.status_code == 200
    assert drill_down.json()["attempts"][0]["latency_ms"] is None

    for params in ({}, {"group_by": "action"}, {"group_by": "request_id"}):
        summary = await client.get("/usage/summary", params=params, headers=AUTH)
        if params.get("group_by") == "request_id":
            assert summary.status_code == 400  # not a group key: the route still answers in JSON
            continue
        assert summary.status_code == 200, summary.text
        totals = summary.json()["totals"]
        assert totals["calls"] == 2
        assert totals["cost_usd"] is None  # a sum with an infinite or NaN term has no value


async def test_a_nul_in_a_filter_or_request_id_is_answered_not_a_server_error(
    session_factory: Factory, client: httpx.AsyncClient
) -> None:
    await insert_records(session_factory, [record(str(new_id()))])
    calls = await client.get("/usage/calls", params={"tenant_id": "a\x00b"}, headers=AUTH)
    assert calls.status_code == 400
    assert calls.json() == {"error": "tenant_id: contains a NUL character"}
    drill_down = await client.get("/usage/requests/a%00b", headers=AUTH)
    assert drill_down.status_code == 404


async def test_the_usage_api_serves_a_value_json_cannot_carry_as_null(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever the queries return, the response renders: the API's own line of defence.
    async def attempts(factory: Any, request_id: str) -> list[dict[str, Any]]:
        return [{"request_id": request_id, "latency_ms": NAN, "metadata": {"x": [INF], "s": "a\ud800"}}]

    monkeypatch.setattr("course_llm.proxy.usage_api.request_attempts", attempts)
    async with usage_client(object()) as client:  # type: ignore[arg-type]  # never opened
        response = await client.get("/usage/requests/r-1", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["attempts"] == [
        {"request_id": "r-1", "latency_ms": None, "metadata": {"x": [None], "s": "a\ufffd"}}
    ]
