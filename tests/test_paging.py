"""Keyset paging of llm_calls (course_llm.reporting.paging, course_llm.db.paging), on SQLite and PostgreSQL.

Rows are made here with many sharing one `created_at`, so a cursor that compared the time alone
would skip or repeat them; the expected order is worked out in Python from the records themselves.
"""

from __future__ import annotations

import base64
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import insert_records
from course_llm.db.paging import list_calls, list_calls_after
from course_llm.errors import UsageQueryError
from course_llm.recording.records import CallRecord
from course_llm.reporting.paging import MAX_CURSOR_LENGTH, Cursor, encode_cursor, parse_cursor
from course_llm.reporting.usage import UsageFilters, parse_filters

Factory = async_sessionmaker[AsyncSession]
START = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def _records(count: int) -> list[CallRecord]:
    """`count` rows over 5 instants (so most share a created_at), two actions, one in 3 failing."""
    rng = random.Random(5)
    return [
        CallRecord(request_id=f"page-{i}", attempt=1, action=("video_analysis", "text_processing")[i % 2],
                   strategy="default", served_strategy="default", provider="gemini", model_id="flash",
                   success=i % 3 != 0, source="sdk", id=uuid.UUID(int=rng.getrandbits(128)),
                   created_at=START + timedelta(microseconds=rng.choice([0, 1, 7, 500_000, 3_000_000])))
        for i in range(count)
    ]  # fmt: skip


def _newest_first(records: list[CallRecord]) -> list[str]:
    return [str(r.id) for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)]


async def _walk(factory: Factory, filters: UsageFilters, page_size: int) -> list[list[str]]:
    """Every page by cursor from the newest row until `next_cursor` is null."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await list_calls_after(factory, filters, cursor, page_size)
        assert (page.total, page.page, page.total_pages) == (None, None, None)
        pages.append([row["id"] for row in page.data])
        if page.next_cursor is None:
            return pages
        cursor = parse_cursor(page.next_cursor)
        assert len(pages) <= 100, "the walk does not end"


@pytest.mark.parametrize("page_size", [1, 4, 7, 40])
async def test_walking_every_page_by_cursor_returns_every_row_once_newest_first(
    session_factory: Factory, page_size: int
) -> None:
    records = _records(40)
    await insert_records(session_factory, records)
    pages = await _walk(session_factory, UsageFilters(), page_size)
    assert [row for page in pages for row in page] == _newest_first(records)
    assert all(len(page) == page_size for page in pages[:-1])
    assert 0 < len(pages[-1]) <= page_size


async def test_filters_combine_with_the_cursor(session_factory: Factory) -> None:
    records = _records(40)
    await insert_records(session_factory, records)
    filters = parse_filters(action="video_analysis", status="error")
    pages = await _walk(session_factory, filters, 2)
    expected = [r for r in records if r.action == "video_analysis" and not r.success]
    assert [row for page in pages for row in page] == _newest_first(expected)


async def test_page_by_number_hands_out_the_cursor_that_continues_it(session_factory: Factory) -> None:
    records = _records(10)
    await insert_records(session_factory, records)
    first = await list_calls(session_factory, UsageFilters(), page=1, page_size=4)
    assert (first.total, first.total_pages) == (10, 3)
    assert first.next_cursor is not None
    rest = await list_calls_after(session_factory, UsageFilters(), parse_cursor(first.next_cursor), 100)
    assert [row["id"] for row in first.data + rest.data] == _newest_first(records)
    assert rest.next_cursor is None
    last = await list_calls(session_factory, UsageFilters(), page=3, page_size=4)
    assert (len(last.data), last.next_cursor) == (2, None)


async def test_a_cursor_past_the_oldest_row_gives_an_empty_last_page(session_factory: Factory) -> None:
    await insert_records(session_factory, _records(3))
    oldest = Cursor(created_at=START - timedelta(days=1), id=uuid.UUID(int=0))
    page = await list_calls_after(session_factory, UsageFilters(), oldest, 10)
    assert (page.data, page.next_cursor) == ([], None)


def test_a_cursor_round_trips_through_its_url_safe_text() -> None:
    cursor = Cursor(created_at=datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC), id=uuid.uuid4())
    text = encode_cursor(cursor)
    assert text.replace("-", "").replace("_", "").isalnum()
    assert parse_cursor(text) == cursor
    whole_second = Cursor(created_at=datetime(2025, 6, 1, tzinfo=UTC), id=uuid.UUID(int=1))
    assert parse_cursor(encode_cursor(whole_second)) == whole_second


def test_a_blank_cursor_means_start_at_the_newest_row() -> None:
    assert parse_cursor("") is None
    assert parse_cursor("  ") is None


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        "not a cursor!",
        "abc",  # no valid base64 length
        "A" * (MAX_CURSOR_LENGTH + 1),
        _b64("2025-06-01T12:00:00+00:00"),  # no id
        _b64("2025-06-01T12:00:00+00:00|" + "g" * 32),  # not hex
        _b64("2025-06-01T12:00:00+02:00|" + "a" * 32),  # not UTC
        _b64("2025-02-30T12:00:00+00:00|" + "a" * 32),  # no such day
        _b64("2025-06-01 12:00:00' OR '1'='1|" + "a" * 32),
        _b64("\u00e9t\u00e9|" + "a" * 32),  # not ASCII
    ],
)
def test_a_malformed_or_forged_cursor_is_a_usage_error_naming_the_field(raw: str) -> None:
    with pytest.raises(UsageQueryError) as caught:
        parse_cursor(raw)
    assert caught.value.field == "cursor"


async def test_a_cursor_walk_ends_over_rows_another_writer_stored_in_other_text_forms(
    sqlite_session_factory: Factory,  # only SQLite keeps the text another writer stored
) -> None:
    session_factory = sqlite_session_factory
    stored = [
        ("2025-03-01 12:00:00", "aaaaaaaa-bbbb-4bbb-8bbb-bbbbbbbbbbbb"),  # no fraction, dashed id
        ("2025-03-01 12:00:00", "aaaaaaaa5bbb4bbb8bbbbbbbbbbbbbbb"),
        ("2025-03-01 12:00:00.000000", "aaaaaaaa-cccc-4ccc-8ccc-cccccccccccc"),
        ("2025-03-01 11:00:00.000000", "11111111111141118111111111111111"),
    ]
    async with session_factory() as session, session.begin():
        for n, (ts, row_id) in enumerate(stored):
            await session.execute(
                sa.text(
                    "INSERT INTO llm_calls (id, request_id, attempt, created_at, action, strategy, "
                    "served_strategy, provider, model_id, success, source, metadata, stream, cache_hit) "
                    "VALUES (:id, :rid, 1, :ts, 'a', 's', 's', 'p', 'm', 1, 'sdk', '{}', 0, 0)"
                ),
                {"id": row_id, "rid": f"raw-{n}", "ts": ts},
            )
    everything = (await list_calls(session_factory, UsageFilters(), page_size=100)).data
    for page_size in (1, 2, 3):
        pages = await _walk(session_factory, UsageFilters(), page_size)
        assert [r for page in pages for r in page] == [r["id"] for r in everything]
    assert len(everything) == 4
