"""course_llm.db.requests and request-id prefixes, over seeded rows on SQLite and PostgreSQL.

The seeded rows are tabulated in tests/usage_seed.py; every expected figure below was worked out
by hand from that table.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import insert_records
from course_llm.db.requests import list_requests, tag_breakdown
from course_llm.db.usage import count_matching, list_calls, request_attempts, summarize
from course_llm.errors import UsageQueryError
from course_llm.reporting.usage import UsageFilters, parse_filters
from tests.rows import row
from tests.usage_seed import seed

Factory = async_sessionmaker[AsyncSession]


@pytest.fixture
async def seeded(session_factory: Factory) -> Factory:
    await seed(session_factory)
    return session_factory


async def test_requests_are_listed_newest_first_one_line_each(seeded: Factory) -> None:
    page = await list_requests(seeded, UsageFilters())
    assert [line["request_id"] for line in page.data] == [
        "req-5",
        "req-4",
        "req-3",
        "req-6",
        "req-2",
        "req-1",
    ]
    assert (page.total, page.failed) == (6, 1)
    assert page.as_dict()["totals"] == {"requests": 6, "failed_requests": 1, "error_rate": 1 / 6}


async def test_a_request_line_has_its_outcome_attempts_cost_and_serving_model(seeded: Factory) -> None:
    lines = {line["request_id"]: line for line in (await list_requests(seeded, UsageFilters())).data}
    req3 = lines["req-3"]
    # Rows 4-6: two sonnet failures, then flash on the default chain; started 09:00:00, the third
    # attempt started at 09:00:02 and took 400 ms.
    assert (req3["success"], req3["attempts"], req3["model_id"], req3["served_strategy"]) == (
        True,
        3,
        "gemini-2.5-flash",
        "default",
    )
    assert (req3["strategy"], req3["cost_usd"], req3["latency_ms"]) == ("quality", 0.25, 2400.0)
    assert req3["error_class"] is None
    req5 = lines["req-5"]
    assert (req5["success"], req5["status_code"], req5["error_class"], req5["cost_usd"]) == (
        False,
        503,
        "ServiceUnavailableError",
        None,
    )
    assert lines["req-1"]["latency_ms"] == 1300.0  # 1 s of wait before attempt 2, which took 300 ms


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": "error"}, ["req-5"]),
        ({"status": "success"}, ["req-4", "req-3", "req-6", "req-2", "req-1"]),
        ({"model_id": "claude-sonnet"}, ["req-3"]),
        ({"since": "2025-03-02T00:00:00Z"}, ["req-5", "req-4", "req-3"]),
        ({"tenant_id": "acme", "status": "success"}, ["req-6", "req-2", "req-1"]),
    ],
)
async def test_request_filters_select_whole_requests(
    seeded: Factory, filters: dict[str, str], expected: list[str]
) -> None:
    page = await list_requests(seeded, parse_filters(**filters))
    assert [line["request_id"] for line in page.data] == expected
    assert page.total == len(expected)


async def test_a_request_filtered_by_one_model_still_shows_every_attempt(seeded: Factory) -> None:
    (line,) = (await list_requests(seeded, parse_filters(model_id="claude-sonnet"))).data
    assert (line["attempts"], line["success"]) == (3, True)


async def test_request_pages_cover_every_request_once(seeded: Factory) -> None:
    pages = [await list_requests(seeded, UsageFilters(), page=n, page_size=4) for n in (1, 2, 3)]
    assert [p.total_pages for p in pages] == [2, 2, 2]
    assert [len(p.data) for p in pages] == [4, 2, 0]


async def test_an_hourly_summary_buckets_by_utc_hour(seeded: Factory) -> None:
    summary = await summarize(seeded, parse_filters(until="2025-03-02T00:00:00Z"), ["hour"])
    assert sorted((g["hour"], g["calls"]) for g in summary.groups) == [
        ("2025-03-01T10:00:00Z", 2),
        ("2025-03-01T11:00:00Z", 1),
        ("2025-03-01T23:00:00Z", 1),  # row 9, written at 01:00 UTC+2
    ]


async def test_errors_group_by_class_and_breakdowns_by_end_user(session_factory: Factory) -> None:
    await insert_records(
        session_factory,
        [
            row(1, success=False, error_class="RateLimitError", status_code=429, end_user="ana"),
            row(2, success=False, error_class="RateLimitError", status_code=429, end_user="ana"),
            row(3, success=False, error_class="Timeout", end_user="bo"),
            row(4, end_user="bo"),
        ],
    )
    errors = await summarize(session_factory, parse_filters(status="error"), ["error_class"])
    assert sorted((g["error_class"], g["calls"]) for g in errors.groups) == [
        ("RateLimitError", 2),
        ("Timeout", 1),
    ]
    users = await summarize(session_factory, UsageFilters(), ["end_user"])
    assert sorted((g["end_user"], g["calls"], g["failures"]) for g in users.groups) == [
        ("ana", 2, 2),
        ("bo", 2, 1),
    ]


async def test_tags_group_by_key_and_value_whatever_their_shape(session_factory: Factory) -> None:
    await insert_records(
        session_factory,
        [
            row(1, metadata={"tags": {"course": "bio101", "week": 3}}, cost_usd=0.5),
            row(2, metadata={"tags": {"course": "bio101", "beta": True}}, cost_usd=0.25, success=False),
            row(3, metadata={"tags": ["canary", "eu"]}, cost_usd=0.125),
            row(4, metadata={"tags": "solo"}),
            row(5, metadata={"other": 1}),
            row(6, metadata={"tags": {"course": "chem"}}, action="video_analysis"),
        ],
    )
    groups = await tag_breakdown(session_factory, UsageFilters())
    found = {g["tag"]: (g["calls"], g["failures"], g["cost_usd"]) for g in groups}
    assert found == {
        "course=bio101": (2, 1, 0.75),
        "week=3": (1, 0, 0.5),
        "beta=true": (1, 1, 0.25),
        "canary": (1, 0, 0.125),
        "eu": (1, 0, 0.125),
        "solo": (1, 0, 0.0),
        "course=chem": (1, 0, 0.0),
    }
    assert groups[0]["tag"] == "course=bio101"  # costliest first
    only_text = await tag_breakdown(session_factory, parse_filters(action="video_analysis"))
    assert [g["tag"] for g in only_text] == ["course=chem"]


# --- request-id prefixes -------------------------------------------------------------------------

A = "0193e1f4-7b2c-7aaa-8000-000000000001"
B = "0193e1f4-7b2c-7bbb-8000-000000000002"
UNDERSCORE = "0193e1f4_7b2c-7ccc-8000-000000000003"


@pytest.fixture
async def uuid_ids(session_factory: Factory) -> Factory:
    start = datetime(2025, 3, 1, tzinfo=UTC)
    records = [
        row(0, request_id=A, created_at=start),
        row(0, request_id=A, attempt=2, created_at=start + timedelta(seconds=1)),
        row(0, request_id=B, created_at=start),
        row(0, request_id=UNDERSCORE, created_at=start),
    ]
    await insert_records(session_factory, records)
    return session_factory


@pytest.mark.parametrize("typed", [A, A[:-1], "0193e1f4-7b2c-7a"])
async def test_a_unique_prefix_of_eight_or_more_characters_names_its_request(
    uuid_ids: Factory, typed: str
) -> None:
    assert [a["request_id"] for a in await request_attempts(uuid_ids, typed)] == [A, A]
    assert await count_matching(uuid_ids, UsageFilters(request_id=typed)) == 2
    page = await list_calls(uuid_ids, UsageFilters(request_id=typed))
    assert {r["request_id"] for r in page.data} == {A}
    (line,) = (await list_requests(uuid_ids, UsageFilters(request_id=typed))).data
    assert line["request_id"] == A


async def test_an_ambiguous_prefix_is_an_error_naming_the_count(uuid_ids: Factory) -> None:
    with pytest.raises(UsageQueryError) as caught:
        await list_calls(uuid_ids, UsageFilters(request_id="0193e1f4-7b2c"))
    assert caught.value.field == "request_id"
    assert "start of 2 request ids" in str(caught.value)
    with pytest.raises(UsageQueryError, match="start of 3 request ids"):
        await request_attempts(uuid_ids, "0193e1f4")


async def test_a_prefix_shorter_than_eight_characters_is_an_error(uuid_ids: Factory) -> None:
    with pytest.raises(UsageQueryError, match="at least 8 characters"):
        await summarize(uuid_ids, UsageFilters(request_id="0193e1f"), [])


async def test_like_wildcards_in_a_prefix_match_only_themselves(uuid_ids: Factory) -> None:
    # `_` and `%` would match any character; escaped, they match only an id that holds them.
    assert [a["request_id"] for a in await request_attempts(uuid_ids, "0193e1f4_")] == [UNDERSCORE]
    assert await request_attempts(uuid_ids, "0193e1f4%") == []
    assert await request_attempts(uuid_ids, "%%%%%%%%") == []


async def test_a_whole_short_id_is_taken_as_it_is(seeded: Factory) -> None:
    attempts: list[dict[str, Any]] = await request_attempts(seeded, "req-1")
    assert [a["attempt"] for a in attempts] == [1, 2]


# --- review fixes: outcome over every attempt, case-sensitive prefixes, tag labels ---------------


async def test_a_request_rescued_by_a_fallback_succeeded_whatever_attempts_the_filter_picks(
    session_factory: Factory,
) -> None:
    start = datetime(2025, 3, 1, 12, tzinfo=UTC)
    await insert_records(
        session_factory,
        [
            row(0, request_id="rescued", model_id="sonnet", success=False, created_at=start),
            row(
                0, request_id="rescued", attempt=2, model_id="flash", created_at=start + timedelta(seconds=1)
            ),
            row(
                0,
                request_id="failed",
                model_id="sonnet",
                success=False,
                created_at=start + timedelta(seconds=5),
            ),
        ],
    )
    by_sonnet = await list_requests(session_factory, parse_filters(model_id="sonnet"))
    assert {line["request_id"]: line["success"] for line in by_sonnet.data} == {
        "rescued": True,
        "failed": False,
    }
    assert by_sonnet.as_dict()["totals"] == {"requests": 2, "failed_requests": 1, "error_rate": 0.5}
    errors = await list_requests(session_factory, parse_filters(model_id="sonnet", status="error"))
    assert [line["request_id"] for line in errors.data] == ["failed"]
    assert errors.as_dict()["totals"] == {"requests": 1, "failed_requests": 1, "error_rate": 1.0}


async def test_a_prefix_matches_request_ids_case_sensitively(session_factory: Factory) -> None:
    await insert_records(
        session_factory, [row(0, request_id="0190abcd-0001-7000"), row(0, request_id="0190ABCD-ffff")]
    )
    assert [a["request_id"] for a in await request_attempts(session_factory, "0190ABCD")] == ["0190ABCD-ffff"]
    assert [a["request_id"] for a in await request_attempts(session_factory, "0190abcd")] == [
        "0190abcd-0001-7000"
    ]
    assert await request_attempts(session_factory, "0190ABCD-0001") == []


async def test_tag_labels_are_spelled_alike_on_both_databases(session_factory: Factory) -> None:
    tags: list[Any] = [
        ["beta", 1, 2.5, True, None],
        {"nested": {"b": 1, "a": [1, 2.0]}, "lst": [1, 2]},
        {"n": 1e20, "f": 1.0, "big": 2**62},
        [{"x": 1}],
        {"": "empty"},  # an empty key labels by the value alone, as a list element would
        {"none": None},
    ]
    await insert_records(session_factory, [row(i, metadata={"tags": t}) for i, t in enumerate(tags)])
    labels = sorted(g["tag"] for g in await tag_breakdown(session_factory, UsageFilters()))
    assert labels == sorted(
        [
            "beta", "1", "2.5", "true", "null",
            'nested={"a":[1,2],"b":1}', "lst=[1,2]",
            "n=1e+20", "f=1", f"big={2**62}",
            '{"x":1}',
            "empty",
            "none=null",
        ]
    )  # fmt: skip


async def test_a_tag_that_is_1_and_1_0_on_two_rows_is_one_group(session_factory: Factory) -> None:
    await insert_records(
        session_factory, [row(1, metadata={"tags": {"v": 1}}), row(2, metadata={"tags": {"v": 1.0}})]
    )
    assert [(g["tag"], g["calls"]) for g in await tag_breakdown(session_factory, UsageFilters())] == [
        ("v=1", 2)
    ]


async def test_a_request_straddling_the_range_is_judged_and_ordered_by_every_attempt(
    session_factory: Factory,
) -> None:
    """Attempts before `since` or after `until` still decide the outcome and the start.

    `early`: attempt 1 fails before the range, attempt 2 succeeds in it. `late`: attempt 1 fails
    in the range, attempt 2 succeeds after it. `lost`: attempt 1 fails in the range, attempt 2
    fails after it. `inside`: one success in the range.
    """
    since = datetime(2025, 3, 1, 12, tzinfo=UTC)
    until = since + timedelta(hours=1)
    second = timedelta(seconds=1)
    await insert_records(
        session_factory,
        [
            row(0, request_id="early", success=False, created_at=since - 30 * second),
            row(0, request_id="early", attempt=2, created_at=since + 10 * second),
            row(0, request_id="late", success=False, created_at=until - 5 * second),
            row(0, request_id="late", attempt=2, created_at=until + 5 * second),
            row(0, request_id="lost", success=False, created_at=until - 20 * second),
            row(0, request_id="lost", attempt=2, success=False, created_at=until + 20 * second),
            row(0, request_id="inside", created_at=since + 40 * second),
        ],
    )
    window = UsageFilters(since=since, until=until)

    page = await list_requests(session_factory, window)

    # Newest first by each request's first attempt: `early` started before the range, so it is last.
    assert [line["request_id"] for line in page.data] == ["late", "lost", "inside", "early"]
    assert {line["request_id"]: (line["success"], line["attempts"]) for line in page.data} == {
        "early": (True, 2),
        "late": (True, 2),
        "lost": (False, 2),
        "inside": (True, 1),
    }
    assert page.as_dict()["totals"] == {"requests": 4, "failed_requests": 1, "error_rate": 0.25}
    errors = await list_requests(session_factory, UsageFilters(since=since, until=until, status="error"))
    assert [line["request_id"] for line in errors.data] == ["lost"]
