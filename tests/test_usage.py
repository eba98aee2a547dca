"""course_llm.reporting.usage: parsing of the usage filters, group keys and pages, and the export formats.

No database here: these are the rules both front ends (CLI and HTTP) share.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from course_llm.errors import UsageQueryError
from course_llm.reporting.usage import (
    CALL_COLUMNS,
    CallsPage,
    UsageFilters,
    csv_line,
    filters_from,
    parse_export_format,
    parse_filters,
    parse_group_by,
    parse_page,
    write_export,
)

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("30m", datetime(2025, 6, 15, 11, 30, tzinfo=UTC)),
        ("24h", datetime(2025, 6, 14, 12, 0, tzinfo=UTC)),
        ("7d", datetime(2025, 6, 8, 12, 0, tzinfo=UTC)),
        ("2w", datetime(2025, 6, 1, 12, 0, tzinfo=UTC)),
    ],
)
def test_a_span_means_now_minus_that_span(span: str, expected: datetime) -> None:
    assert filters_from({"since": span}, now=NOW).since == expected


def test_a_naive_iso_time_is_read_as_utc() -> None:
    assert parse_filters(until="2025-03-01T10:30:00").until == datetime(2025, 3, 1, 10, 30, tzinfo=UTC)


def test_an_iso_time_with_an_offset_is_converted_to_utc() -> None:
    since = parse_filters(since="2025-03-02T01:00:00+02:00").since
    assert since == datetime(2025, 3, 1, 23, 0, tzinfo=UTC)
    assert since is not None and since.utcoffset() == timedelta(0)


def test_a_z_suffix_and_a_bare_date_are_accepted() -> None:
    assert parse_filters(since="2025-03-01T00:00:00Z").since == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_filters(since="2025-03-01").since == datetime(2025, 3, 1, tzinfo=UTC)


def test_a_time_that_is_neither_iso_nor_a_span_names_the_field_and_both_formats() -> None:
    with pytest.raises(UsageQueryError) as caught:
        parse_filters(until="yesterday")
    assert caught.value.field == "until"
    assert (
        "'yesterday'" in str(caught.value) and "ISO 8601" in str(caught.value) and "24h" in str(caught.value)
    )
    assert str(caught.value).startswith("until: ")


def test_status_accepts_success_error_and_cached_only_and_lists_them() -> None:
    assert parse_filters(status="success").status == "success"
    assert parse_filters(status="ERROR").status == "error"
    assert parse_filters(status="cached").status == "cached"
    with pytest.raises(UsageQueryError, match=r"^status: 'ok' is not one of: success, error, cached$"):
        parse_filters(status="ok")


def test_since_later_than_until_is_refused() -> None:
    with pytest.raises(UsageQueryError) as caught:
        parse_filters(since="2025-03-02", until="2025-03-01")
    assert caught.value.field == "since"
    assert "later than until" in str(caught.value)


def test_an_unknown_filter_name_lists_the_valid_ones() -> None:
    with pytest.raises(UsageQueryError) as caught:
        parse_filters(model="gemini-2.5-flash")
    assert caught.value.field == "model"
    assert "model_id" in str(caught.value) and "tenant_id" in str(caught.value)


def test_blank_and_missing_values_mean_any_and_text_is_trimmed() -> None:
    assert parse_filters(action="", tenant_id="  ", strategy=None) == UsageFilters()
    assert parse_filters(action=" video_analysis ").action == "video_analysis"


def test_group_by_keeps_the_order_given() -> None:
    assert parse_group_by("model_id, action,day") == ["model_id", "action", "day"]
    assert parse_group_by(["action", "tenant_id"]) == ["action", "tenant_id"]


def test_blank_group_by_means_no_grouping() -> None:
    assert parse_group_by(None) == []
    assert parse_group_by("") == []


def test_an_unknown_group_key_lists_the_valid_keys() -> None:
    with pytest.raises(UsageQueryError) as caught:
        parse_group_by("action,cost")
    assert caught.value.field == "group_by"
    assert "'cost'" in str(caught.value)
    assert "action, strategy, served_strategy, provider, model_id, tenant_id, operation, day" in str(
        caught.value
    )


def test_a_group_key_given_twice_is_refused() -> None:
    with pytest.raises(UsageQueryError, match="action given more than once"):
        parse_group_by("action,model_id,action")


def test_pages_default_to_the_first_page_of_fifty() -> None:
    assert parse_page(None, None) == (1, 50)
    assert parse_page("3", "1000") == (3, 1000)


@pytest.mark.parametrize(
    ("page", "page_size", "field"),
    [("0", None, "page"), ("-1", None, "page"), ("x", None, "page"), (None, "0", "page_size"),
     (None, "1001", "page_size"), (None, "ten", "page_size")],
)  # fmt: skip
def test_out_of_range_or_non_numeric_pages_are_refused(
    page: str | None, page_size: str | None, field: str
) -> None:
    with pytest.raises(UsageQueryError) as caught:
        parse_page(page, page_size)
    assert caught.value.field == field


def test_total_pages_rounds_up_and_is_zero_without_rows() -> None:
    assert CallsPage(data=[], total=9, page=1, page_size=4).total_pages == 3
    assert CallsPage(data=[], total=8, page=1, page_size=4).total_pages == 2
    assert CallsPage(data=[], total=0, page=1, page_size=4).total_pages == 0


def test_the_export_format_is_csv_or_jsonl() -> None:
    assert parse_export_format("CSV") == "csv"
    assert parse_export_format("jsonl") == "jsonl"
    with pytest.raises(UsageQueryError, match=r"^format: 'xml' is not one of: csv, jsonl$"):
        parse_export_format("xml")


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CALL_COLUMNS)
    row.update(id="0190-abc", request_id="req-1", attempt=1, success=False, stream=True, cache_hit=False)
    row.update(error_message='said "no", then\nleft', metadata={"tags": {"course": "bio,101"}})
    row.update(overrides)
    return row


def test_a_csv_line_quotes_text_and_spells_null_bool_and_json_plainly() -> None:
    (parsed,) = csv.DictReader(io.StringIO(",".join(CALL_COLUMNS) + "\n" + csv_line(_row())))
    assert parsed["error_message"] == 'said "no", then\nleft'
    assert parsed["tokens_in"] == ""
    assert (parsed["success"], parsed["stream"]) == ("false", "true")
    assert json.loads(parsed["metadata"]) == {"tags": {"course": "bio,101"}}


async def _rows(rows: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for row in rows:
        yield row


async def test_write_export_writes_a_header_then_one_csv_row_per_call() -> None:
    out, seen = io.StringIO(), []
    written = await write_export(
        _rows([_row(attempt=1), _row(attempt=2)]), "csv", out, lambda: seen.append(1)
    )
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert written == 2 and len(seen) == 2
    assert list(parsed[0]) == list(CALL_COLUMNS)
    assert [row["attempt"] for row in parsed] == ["1", "2"]


async def test_write_export_writes_one_json_object_per_line() -> None:
    out = io.StringIO()
    written = await write_export(_rows([_row(attempt=1), _row(attempt=2, cost_usd=0.25)]), "jsonl", out)
    lines = out.getvalue().splitlines()
    assert written == 2 and len(lines) == 2
    assert json.loads(lines[1]) == _row(attempt=2, cost_usd=0.25)


def test_filters_compare_as_values() -> None:
    # The CLI and HTTP API build filters independently; equal input must give equal filters.
    plus_two = timezone(timedelta(hours=2))
    a = parse_filters(since="2025-03-02T01:00:00+02:00", status="error")
    b = UsageFilters(since=datetime(2025, 3, 2, 1, 0, tzinfo=plus_two), status="error")
    assert a == b
