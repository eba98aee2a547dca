"""Usage reporting without a database: the filter and result types, and parsing of user input.

The CLI (`course-llm calls|usage|export`) and the HTTP API (`/usage/...`) take the same filters as
strings (docs/architecture.md, "Usage reporting"). They are parsed and validated here, once, so both
front ends accept the same values and reject bad ones with the same `UsageQueryError(field, message)`
naming the field and what would have been valid. The queries themselves live in
`course_llm.db.usage`; this module imports no SQLAlchemy, so the CLI can validate its options (and
fail fast on a typo) before a database driver is even loaded.

Numbers from users are bounded, so a hostile value is a 400 (or a one-line CLI error), never an
overflow deep in a query: spans up to `MAX_SPAN`, times clamped into `[MIN_TIME, MAX_TIME]`, pages
up to `MAX_PAGE`; a NUL character in any value is refused.

Also here: the result types (`Summary`; `CallsPage` lives in `course_llm.reporting.paging`) and
the row formats of `export` (CSV, JSONL), pure functions of the row dicts the queries return. CSV
text cells that start with `=`, `+`, `-`, `@`, a tab or a CR get a leading `'` (OWASP, "CSV
Injection"): a spreadsheet shows, never runs, them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TextIO, get_args

from course_llm.errors import UsageQueryError
from course_llm.reporting.paging import CallsPage

__all__ = [
    "CALL_COLUMNS",
    "EXPORT_FORMATS",
    "FIGURES",
    "FILTER_NAMES",
    "GROUP_KEYS",
    "MAX_PAGE",
    "MAX_PAGE_SIZE",
    "MAX_SPAN",
    "MAX_TIME",
    "MIN_TIME",
    "CallsPage",
    "ExportFormat",
    "Summary",
    "UsageFilters",
    "csv_header",
    "csv_line",
    "filters_from",
    "jsonl_line",
    "parse_export_format",
    "parse_filters",
    "parse_group_by",
    "parse_page",
    "parse_time",
    "write_export",
]

#: Filter names, in the order docs/architecture.md lists them.
FILTER_NAMES: tuple[str, ...] = (
    "since",
    "until",
    "action",
    "strategy",
    "served_strategy",
    "provider",
    "model_id",
    "status",
    "tenant_id",
    "operation",
    "request_id",
)

#: Keys `summarize` can group by. `day` is the UTC calendar date of `created_at` (YYYY-MM-DD),
#: `hour` its UTC hour (YYYY-MM-DDTHH:00:00Z).
GROUP_KEYS: tuple[str, ...] = (
    "action",
    "strategy",
    "served_strategy",
    "provider",
    "model_id",
    "tenant_id",
    "operation",
    "day",
    "end_user",
    "error_class",
    "hour",
)

#: The figures of every summary group and of the totals, in display order.
FIGURES: tuple[str, ...] = (
    "calls",
    "failures",
    "error_rate",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "p50_latency_ms",
    "p95_latency_ms",
    "fallback_rate",
)

#: Every llm_calls column, in table order: the keys of a row dict and the columns of a CSV export.
CALL_COLUMNS: tuple[str, ...] = (
    "id",
    "request_id",
    "attempt",
    "created_at",
    "action",
    "strategy",
    "served_strategy",
    "provider",
    "model_id",
    "tokens_in",
    "tokens_out",
    "latency_ms",
    "cost_usd",
    "success",
    "status_code",
    "error_class",
    "error_message",
    "stream",
    "cache_hit",
    "tenant_id",
    "operation",
    "end_user",
    "system_prompt_hash",
    "user_prompt_hash",
    "response_preview",
    "source",
    "metadata",
)

STATUSES = ("success", "error", "cached")
MAX_PAGE_SIZE = 1000
#: Highest page number: (MAX_PAGE - 1) × MAX_PAGE_SIZE is an OFFSET every database takes.
MAX_PAGE = 1_000_000_000
MAX_SPAN = timedelta(days=36525)  # 100 years
#: Python's datetime spans years 1-9999 (both databases more), less a day each side for arithmetic.
MIN_TIME = datetime(1, 1, 2, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 30, tzinfo=UTC)
ExportFormat = Literal["csv", "jsonl"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)

_SPAN = re.compile(r"^(\d+)\s*([smhdw])$", re.ASCII)
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class UsageFilters:
    """Which llm_calls rows a report covers; None means "any". All given filters must hold.

    `since` is inclusive and `until` exclusive (`since <= created_at < until`), both aware
    datetimes. `status` is "success", "error" or "cached" (answered from the response cache).
    """

    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    strategy: str | None = None
    served_strategy: str | None = None
    provider: str | None = None
    model_id: str | None = None
    status: Literal["success", "error", "cached"] | None = None
    tenant_id: str | None = None
    operation: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """Figures per group and in total: the body of `GET /usage/summary`.

    Each group dict holds its `group_by` keys, then the `FIGURES`; `totals` holds the `FIGURES`
    over every matching row. Groups are ordered by cost (highest first), then by their keys.
    """

    group_by: list[str]
    groups: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "totals": self.totals}


def parse_time(field_name: str, raw: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive means UTC) or a span back from now (`30m`, `24h`, `7d`, `2w`).

    A span longer than `MAX_SPAN` is a `UsageQueryError`; a time outside `[MIN_TIME, MAX_TIME]`
    is clamped to the nearest bound (`since=0001-01-01` selects the same rows either way).
    """
    text = raw.strip()
    span = _SPAN.match(text)
    if span:
        digits, unit = span.group(1).lstrip("0") or "0", span.group(2)
        # Counted in integers: timedelta itself overflows past 999,999,999 days.
        seconds = int(digits) * _SPAN_SECONDS[unit] if len(digits) <= 12 else None
        if seconds is None or seconds > MAX_SPAN.total_seconds():
            message = f"{raw!r} reaches back more than 100 years (36525d); give an ISO 8601 time"
            raise UsageQueryError(field_name, message)
        return _clamp((now or datetime.now(UTC)) - timedelta(seconds=seconds))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageQueryError(
            field_name,
            f"{raw!r} is neither an ISO 8601 time (2025-03-01T12:00:00Z) "
            "nor a span back from now (30m, 24h, 7d, 2w)",
        ) from None
    if moment.tzinfo is None:
        return _clamp(moment.replace(tzinfo=UTC))
    try:
        return _clamp(moment.astimezone(UTC))
    except OverflowError:  # 0001-01-01T00:00+05:00 is in year 0 in UTC; 9999-12-31T23:00-05:00 in 10000
        return MIN_TIME if moment.year == datetime.min.year else MAX_TIME


def _clamp(moment: datetime) -> datetime:
    return min(max(moment, MIN_TIME), MAX_TIME)


def parse_filters(**raw: str | None) -> UsageFilters:
    """`UsageFilters` from raw strings keyed by filter name; None and blank values mean "any".

    Raises `UsageQueryError` for an unknown filter name, a time that is neither ISO 8601 nor a
    span, a status other than success|error|cached, or `since` later than `until`.
    """
    return filters_from(raw)


def filters_from(raw: Mapping[str, str | None], now: datetime | None = None) -> UsageFilters:
    """`parse_filters` over a mapping (query parameters), with spans counted back from `now`."""
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in FILTER_NAMES:
            raise UsageQueryError(name, f"unknown filter; valid filters: {', '.join(FILTER_NAMES)}")
        if value is None or not value.strip():
            continue
        if "\x00" in value:
            # No stored value holds one (they are cleaned), and PostgreSQL refuses it in a query.
            raise UsageQueryError(name, "contains a NUL character")
        values[name] = value.strip()
    anchor = now or datetime.now(UTC)
    for name in ("since", "until"):
        if name in values:
            values[name] = parse_time(name, values[name], anchor)
    if "status" in values:
        status = values["status"].lower()
        if status not in STATUSES:
            raise UsageQueryError("status", f"{values['status']!r} is not one of: {', '.join(STATUSES)}")
        values["status"] = status
    since, until = values.get("since"), values.get("until")
    if since is not None and until is not None and since > until:
        raise UsageQueryError(
            "since", f"{since.isoformat()} is later than until ({until.isoformat()}); swap them"
        )
    return UsageFilters(**values)


def parse_group_by(raw: str | Sequence[str] | None) -> list[str]:
    """Group keys from `"action,model_id"` (or a list of such strings); blank means no grouping."""
    parts = [raw] if raw is None or isinstance(raw, str) else list(raw)
    keys = [key.strip() for part in parts if part for key in part.split(",") if key.strip()]
    for key in keys:
        if key not in GROUP_KEYS:
            raise UsageQueryError("group_by", f"unknown key {key!r}; valid keys: {', '.join(GROUP_KEYS)}")
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise UsageQueryError("group_by", f"{', '.join(duplicates)} given more than once")
    return keys


def parse_page(
    page: str | int | None, page_size: str | int | None, default_size: int = 50
) -> tuple[int, int]:
    """`(page, page_size)`: 1 <= page <= `MAX_PAGE` (default 1), 1 <= page_size <= 1000."""
    number = _integer("page", page, 1)
    size = _integer("page_size", page_size, default_size)
    if number < 1:
        raise UsageQueryError("page", f"must be 1 or more, got {_shown(number)}")
    if number > MAX_PAGE:
        raise UsageQueryError("page", f"must be at most {MAX_PAGE:,}, got {_shown(number)}")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise UsageQueryError("page_size", f"must be between 1 and {MAX_PAGE_SIZE}, got {_shown(size)}")
    return number, size


def _shown(number: int) -> str:
    """`number` for an error message; a huge one by its size (str() refuses 4,300+ digits)."""
    return str(number) if abs(number) < 10**30 else "a number of over 30 digits"


def _integer(field_name: str, raw: str | int | None, default: int) -> int:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if isinstance(raw, int):
        return raw
    text = raw.strip()
    if len(text) > 30:  # int() of thousands of digits is slow, and 4,300+ is an error of its own
        raise UsageQueryError(field_name, f"{len(text)} characters is no whole number in range")
    try:
        return int(text)
    except ValueError:
        raise UsageQueryError(field_name, f"{raw!r} is not a whole number") from None


# --- export formats ------------------------------------------------------------------------------


def jsonl_line(row: dict[str, Any]) -> str:
    """One JSON object per line: the row dict as `GET /usage/calls` returns it."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


def csv_header() -> str:
    """The CSV header line: every llm_calls column, in table order."""
    return _csv_line(list(CALL_COLUMNS))


def csv_line(row: dict[str, Any]) -> str:
    """One CSV line for `row`: empty for null, true/false for booleans, JSON for `metadata`."""
    return _csv_line([_csv_value(row.get(column)) for column in CALL_COLUMNS])


def parse_export_format(raw: str) -> ExportFormat:
    """`csv` or `jsonl` (any case); anything else is a `UsageQueryError` for `format`."""
    value = raw.strip().lower()
    if value == "csv":
        return "csv"
    if value == "jsonl":
        return "jsonl"
    raise UsageQueryError("format", f"{raw!r} is not one of: {', '.join(EXPORT_FORMATS)}")


async def write_export(
    rows: AsyncIterable[dict[str, Any]],
    export_format: ExportFormat,
    out: TextIO,
    on_row: Callable[[], object] | None = None,
) -> int:
    """Write `rows` to `out` as CSV (with a header) or JSONL, one at a time; return how many.

    Nothing is held beyond the current row, so an export of any size runs in constant memory when
    `rows` streams (`course_llm.db.usage.iter_calls`). `on_row` is called after each row (a
    progress bar's advance).
    """
    export_format = parse_export_format(export_format)
    line = csv_line if export_format == "csv" else jsonl_line
    if export_format == "csv":
        out.write(csv_header())
    written = 0
    async for row in rows:
        out.write(line(row))
        written += 1
        if on_row is not None:
            on_row()
    return written


#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)  # a number stays a number, negative ones included
    text = _compact_json(value) if isinstance(value, dict | list) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    # Told "\r\n" (it quotes values holding the terminator's characters: a lone CR splits a row).
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()[:-2] + "\n"
