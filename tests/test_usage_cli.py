"""`course-llm calls`, `usage` and `export` through Typer's CliRunner, on SQLite and PostgreSQL.

The commands read `COURSE_LLM_DATABASE_URL`, pointed at the seeded test database. They run their
own event loop (asyncio.run), so these tests are synchronous and seed with their own short loops.
Expected figures come from the table in tests/usage_seed.py, worked out by hand.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from course_llm.cli import app
from course_llm.db import create_session_factory, dispose_session_factory
from course_llm.reporting.usage import CALL_COLUMNS
from tests.usage_seed import NEWEST_FIRST, empty_usage, seed, seed_records

runner = CliRunner()
OLDEST_FIRST = NEWEST_FIRST[::-1]


async def _reset(url: str, with_seed: bool) -> None:
    factory = create_session_factory(url)
    try:
        async with factory() as session, session.begin():
            await empty_usage(session)
        if with_seed:
            await seed(factory)
    finally:
        await dispose_session_factory(factory)


@pytest.fixture
def seeded_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test database holding exactly the seeded rows, named in COURSE_LLM_DATABASE_URL."""
    asyncio.run(_reset(database_url, with_seed=True))
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", database_url)
    yield database_url
    asyncio.run(_reset(database_url, with_seed=False))


def run(*args: str) -> Result:
    # A wide terminal, so rich tables are not wrapped and cells can be matched whole.
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.usefixtures("seeded_url")
def test_calls_json_is_the_http_page_shape_newest_first() -> None:
    result = run("calls", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert list(body) == ["data", "total", "page", "page_size", "total_pages", "next_cursor"]
    assert [(r["request_id"], r["attempt"]) for r in body["data"]] == NEWEST_FIRST
    assert list(body["data"][0]) == list(CALL_COLUMNS)


@pytest.mark.usefixtures("seeded_url")
def test_calls_takes_every_filter_as_an_option() -> None:
    result = run("calls", "--json", "--action", "course_structuring", "--strategy", "quality",
                 "--served-strategy", "quality", "--provider", "anthropic", "--model", "claude-sonnet",
                 "--status", "error", "--tenant", "globex", "--operation", "outline", "--request-id", "req-3",
                 "--since", "2025-03-02T00:00:00Z", "--until", "2025-03-02T09:00:01")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [(r["request_id"], r["attempt"]) for r in json.loads(result.stdout)["data"]] == [("req-3", 1)]


@pytest.mark.usefixtures("seeded_url")
def test_calls_pages_cover_every_row_exactly_once() -> None:
    seen = []
    for page in (1, 2, 3):
        result = run("calls", "--json", "--page", str(page), "--page-size", "4")
        assert result.exit_code == 0, result.output
        seen += [(r["request_id"], r["attempt"]) for r in json.loads(result.stdout)["data"]]
    assert seen == NEWEST_FIRST


@pytest.mark.usefixtures("seeded_url")
def test_calls_by_cursor_walk_every_row_once_from_the_json_next_cursor() -> None:
    seen, cursor = [], ""
    while cursor is not None:
        result = run("calls", "--json", "--cursor", cursor, "--page-size", "4")
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert body["total"] is None
        seen += [(r["request_id"], r["attempt"]) for r in body["data"]]
        cursor = body["next_cursor"]
    assert seen == NEWEST_FIRST


@pytest.mark.usefixtures("seeded_url")
def test_calls_prints_the_cursor_of_the_next_page() -> None:
    result = run("calls", "--page-size", "4")
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("next: --cursor ")]
    rest = run("calls", "--json", "--cursor", line.removeprefix("next: --cursor "))
    assert [(r["request_id"], r["attempt"]) for r in json.loads(rest.stdout)["data"]] == NEWEST_FIRST[4:]


@pytest.mark.usefixtures("seeded_url")
def test_calls_prints_a_readable_table_with_the_page_count() -> None:
    result = run("calls", "--page-size", "3")
    assert result.exit_code == 0, result.output
    assert "2025-03-02 13:00:00" in result.stdout
    assert "text_processing / budget" in result.stdout
    assert "course_structuring / quality → default" in result.stdout
    assert "deepseek / deepseek-chat" in result.stdout
    assert "503 ServiceUnavailableError" in result.stdout
    assert "page 1 of 3 · 9 calls" in result.stdout


@pytest.mark.usefixtures("seeded_url")
def test_usage_json_is_the_http_summary_shape_with_exact_sums() -> None:
    result = run("usage", "--group-by", "action,model_id", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    got = [(g["action"], g["model_id"], g["calls"], g["tokens_in"], g["cost_usd"]) for g in body["groups"]]
    assert got == [
        ("video_analysis", "gemini-2.5-flash", 2, 3000, 1.5),
        ("course_structuring", "gemini-2.5-flash", 1, 3000, 0.25),
        ("text_processing", "deepseek-chat", 2, 500, 0.125),
        ("presentation_analysis", "gemini-2.5-flash", 1, 100, 0.0625),
        ("course_structuring", "claude-sonnet", 2, 0, 0.0),
        ("video_analysis", "gemini-2.5-pro", 1, 0, 0.0),
    ]
    assert (body["totals"]["calls"], body["totals"]["cost_usd"]) == (9, 1.9375)


@pytest.mark.usefixtures("seeded_url")
def test_usage_filters_before_grouping() -> None:
    result = run("usage", "--group-by", "tenant_id", "--status", "success", "--json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["groups"]
    assert [(g["tenant_id"], g["calls"], g["cost_usd"]) for g in groups] == [
        ("acme", 3, 1.5625),
        ("globex", 1, 0.25),
        (None, 1, 0.125),
    ]


@pytest.mark.usefixtures("seeded_url")
def test_usage_prints_one_row_per_group_and_a_totals_row() -> None:
    result = run("usage", "--group-by", "day")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    day_one = next(line for line in lines if "2025-03-01" in line)
    assert [cell.strip() for cell in day_one.split("│")[2:7]] == ["4", "1", "25.0", "3,100", "650"]
    total = next(line for line in lines if "total" in line)
    assert "1.937500" in total and "44.4" in total and "40.0" in total  # cost, error %, fallback %


def test_export_csv_holds_every_filtered_row_oldest_first(seeded_url: str, tmp_path: Path) -> None:
    output = tmp_path / "errors.csv"
    result = run("export", "--format", "csv", "--output", str(output), "--status", "error")
    assert result.exit_code == 0, result.output
    assert f"wrote 4 calls to {output}" in result.stdout.replace("\n", "")
    with output.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["request_id"], int(r["attempt"])) for r in rows] == [
        ("req-1", 1),
        ("req-3", 1),
        ("req-3", 2),
        ("req-5", 1),
    ]
    assert list(rows[0]) == list(CALL_COLUMNS)
    assert {r["success"] for r in rows} == {"false"}
    assert json.loads(rows[0]["metadata"]) == {"tags": {"seed": "req-1"}}


def test_export_jsonl_holds_every_row_as_the_api_returns_it(seeded_url: str, tmp_path: Path) -> None:
    output = tmp_path / "all.jsonl"
    result = run("export", "--format", "jsonl", "-o", str(output))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [(r["request_id"], r["attempt"]) for r in rows] == OLDEST_FIRST
    api_rows = json.loads(run("calls", "--json").stdout)["data"]
    assert rows == api_rows[::-1]


def test_export_of_nothing_writes_only_the_csv_header(seeded_url: str, tmp_path: Path) -> None:
    output = tmp_path / "none.csv"
    result = run("export", "--output", str(output), "--action", "no_such_action")
    assert result.exit_code == 0, result.output
    assert output.read_text(encoding="utf-8") == ",".join(CALL_COLUMNS) + "\n"


@pytest.mark.usefixtures("seeded_url")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["calls", "--status", "ok"], "error: status: 'ok' is not one of: success, error"),
        (["calls", "--since", "soon"], "error: since: 'soon' is neither an ISO 8601 time"),
        (["calls", "--page-size", "0"], "error: page_size: must be between 1 and 1000, got 0"),
        (["calls", "--cursor", "bogus!"], "error: cursor: is not a cursor this API handed out"),
        (["calls", "--cursor", "", "--page", "2"], "error: cursor: give --page or --cursor, not both"),
        (["usage", "--group-by", "action,price"], "error: group_by: unknown key 'price'"),
        (["usage", "--since", "2025-03-02", "--until", "2025-03-01"], "error: since: 2025-03-02T00:00:00"),
        (["export", "--format", "xml", "-o", "x.xml"], "error: format: 'xml' is not one of: csv, jsonl"),
    ],
)  # fmt: skip
def test_a_bad_option_value_is_one_line_and_exit_1(args: list[str], message: str) -> None:
    assert _one_line_error(run(*args)).startswith(message)


def test_a_database_without_the_table_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()  # a database file, but never migrated
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    line = _one_line_error(run("usage", "--group-by", "action"))
    assert line.startswith("error: database ") and "has no llm_calls table" in line


@pytest.mark.postgres
def test_a_missing_postgresql_database_is_one_line_without_sqlalchemys_class_name(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = postgres_database_url.rsplit("/", 1)[0] + "/course_llm_no_such_database"
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", missing)
    line = _one_line_error(run("calls"))
    assert line == 'error: database error: database "course_llm_no_such_database" does not exist'


@pytest.mark.usefixtures("seeded_url")
def test_a_filter_that_matches_nothing_says_so_instead_of_page_1_of_0() -> None:
    result = run("calls", "--action", "no_such_action")
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith("no calls match") and "page 1 of 0" not in result.stdout


@pytest.mark.parametrize("command", [["calls"], ["db", "upgrade"]])
def test_a_url_for_a_database_course_llm_does_not_support_is_one_line_without_its_password(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", "mysql://user:hunter2@db.example/calls")
    result = run(*command)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: cannot open mysql://user:***@db.example/calls: No module named"
    )
    assert "hunter2" not in result.output


def test_an_unreachable_database_server_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 (discard) has no PostgreSQL behind it: the connection is refused at once.
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/nowhere")
    line = _one_line_error(run("calls"))
    assert line.startswith("error: ")


@pytest.mark.usefixtures("seeded_url")
def test_an_export_to_a_missing_directory_is_one_line_and_exit_1(tmp_path: Path) -> None:
    line = _one_line_error(run("export", "-o", str(tmp_path / "missing" / "calls.csv")))
    assert line.startswith("error: cannot write ") and "No such file or directory" in line


UUID_A = "0193e1f4-7b2c-7aaa-8000-000000000001"
UUID_B = "0193e1f4-7b2c-7bbb-8000-000000000002"


@pytest.fixture
def uuid_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test database holding two requests with uuid-shaped ids that share 14 characters."""
    from tests.rows import row

    async def fill() -> None:
        await _reset(database_url, with_seed=False)
        factory = create_session_factory(database_url)
        try:
            from course_llm.db import insert_records

            await insert_records(factory, [row(0, request_id=UUID_A), row(1, request_id=UUID_B)])
        finally:
            await dispose_session_factory(factory)

    asyncio.run(fill())
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", database_url)
    yield database_url
    asyncio.run(_reset(database_url, with_seed=False))


def test_calls_table_prints_request_ids_in_full(uuid_url: str) -> None:
    result = run("calls")
    assert result.exit_code == 0, result.output
    assert UUID_A in result.output and UUID_B in result.output


def test_request_id_accepts_a_unique_prefix_of_what_calls_prints(uuid_url: str) -> None:
    result = run("calls", "--request-id", UUID_B[:16], "--json")
    assert result.exit_code == 0, result.output
    assert [r["request_id"] for r in json.loads(result.stdout)["data"]] == [UUID_B]


def test_an_ambiguous_request_id_prefix_is_one_line_naming_the_count(uuid_url: str) -> None:
    line = _one_line_error(run("calls", "--request-id", UUID_A[:14]))
    assert line == f"error: request_id: {UUID_A[:14]!r} is the start of 2 request ids; give more characters"


def test_db_prune_deletes_old_rows_and_usage_still_counts_them(seeded_url: str) -> None:
    before = json.loads(run("usage", "--json").stdout)["totals"]
    newest = max(record.created_at for record in seed_records())

    result = run("db", "prune", "--before", (newest + timedelta(days=2)).isoformat())

    assert result.exit_code == 0, result.output
    cutoff = (newest + timedelta(days=2)).strftime("%Y-%m-%dT00:00:00Z")
    assert result.stdout.strip() == f"deleted 9 rows created before {cutoff}; their aggregates are kept"
    assert json.loads(run("calls", "--json").stdout)["data"] == []
    assert json.loads(run("usage", "--json").stdout)["totals"] == before


@pytest.mark.usefixtures("seeded_url")
def test_db_prune_with_a_bad_time_is_one_line() -> None:
    assert _one_line_error(run("db", "prune", "--before", "soon")).startswith(
        "error: before: 'soon' is neither"
    )
