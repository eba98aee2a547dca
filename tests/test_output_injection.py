"""Stored values are printed, never interpreted: no Rich markup in the CLI, no formulas in a CSV.

A proxy client chooses tenant ids, operations and metadata, and an upstream chooses error text;
any row may also come from a plain SQL INSERT. The rows below carry Rich markup, a Rich emoji code
and spreadsheet formulas; `course-llm calls|usage|export` (through Typer's CliRunner, on SQLite
and PostgreSQL) must print them as the characters they are and write CSV cells a spreadsheet
shows rather than runs (OWASP, "CSV Injection").
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from course_llm.cli import app
from course_llm.db import create_session_factory, dispose_session_factory, insert_records
from course_llm.recording.records import CallRecord
from course_llm.reporting.usage import csv_line
from tests.usage_seed import empty_usage

runner = CliRunner()
T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)

CLOSING_TAG = "[/bold]"
LINK = "[link=http://evil.example]click[/link]"
EMOJI = ":warning: :thumbs_up:"
FORMULAS = {
    "tenant_id": '=HYPERLINK("http://evil.example","x")',
    "operation": "@SUM(1+1)",
    "end_user": "+cmd|' /C calc'!A0",
    "error_message": "-2+3",
    "error_class": "\tTabbed",
    "model_id": "\rReturn",
}


def _record(request_id: str, **values: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "attempt": 1,
        "created_at": T0,
        "action": "text_processing",
        "strategy": "default",
        "served_strategy": "default",
        "provider": "openai",
        "model_id": "gpt-4o-mini",
        "success": True,
        "source": "proxy",
        "id": uuid.uuid4(),
    }
    return CallRecord(**(fields | values))


ROWS = [
    _record("req-tag", tenant_id=CLOSING_TAG, operation=LINK, cost_usd=0.5, tokens_in=10, tokens_out=5),
    _record(
        "req-markup",
        created_at=T0 + timedelta(minutes=1),
        tenant_id=EMOJI,
        operation="[bold red]loud[/]",
        model_id="[red]model[/red]",
        success=False,
        status_code=500,
        error_class="[blink]Boom[/blink]",
    ),
    _record(
        "req-formula",
        created_at=T0 + timedelta(minutes=2),
        success=False,
        status_code=500,
        cost_usd=-0.25,  # a number: it keeps its minus sign, no quote
        latency_ms=-1.5,
        metadata={"note": "=1+1"},
        **FORMULAS,
    ),
]


async def _reset(url: str, records: list[CallRecord]) -> None:
    factory = create_session_factory(url)
    try:
        async with factory() as session, session.begin():
            await empty_usage(session)
        if records:
            await insert_records(factory, records)
    finally:
        await dispose_session_factory(factory)


@pytest.fixture
def hostile_rows(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    asyncio.run(_reset(database_url, ROWS))
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", database_url)
    yield database_url
    asyncio.run(_reset(database_url, []))


def run(*args: str) -> Result:
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


# --- the CLI prints literally --------------------------------------------------------------------


@pytest.mark.usefixtures("hostile_rows")
def test_a_closing_tag_as_tenant_id_is_printed_not_parsed() -> None:
    result = run("usage", "--group-by", "tenant_id")
    assert result.exit_code == 0, result.output
    assert CLOSING_TAG in result.stdout
    assert EMOJI in result.stdout  # not turned into ⚠ 👍


@pytest.mark.usefixtures("hostile_rows")
def test_a_link_in_markup_prints_as_its_characters() -> None:
    result = run("usage", "--group-by", "operation")
    assert result.exit_code == 0, result.output
    assert LINK in result.stdout
    assert "[bold red]loud[/]" in result.stdout
    assert "\x1b]8;" not in result.stdout  # no terminal hyperlink


@pytest.mark.usefixtures("hostile_rows")
def test_calls_prints_markup_in_models_and_error_classes_literally() -> None:
    result = run("calls")
    assert result.exit_code == 0, result.output
    assert "openai / [red]model[/red]" in result.stdout
    assert "500 [blink]Boom[/blink]" in result.stdout


@pytest.mark.usefixtures("hostile_rows")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["calls", "--status", CLOSING_TAG], f"error: status: '{CLOSING_TAG}' is not one of: success, error"),
        (["usage", "--since", LINK], f"error: since: '{LINK}' is neither an ISO 8601 time"),
        (["usage", "--group-by", "[bold]x"], "error: group_by: unknown key '[bold]x'"),
    ],
)
def test_an_error_message_quoting_user_input_is_printed_literally(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(message), result.output


@pytest.mark.usefixtures("hostile_rows")
def test_an_output_path_with_markup_is_printed_literally(tmp_path: Path) -> None:
    output = tmp_path / "[bold]out[link=http:evil].csv"  # no "/": that would be a directory
    result = run("export", "--output", str(output))
    assert result.exit_code == 0, result.output
    assert f"wrote 3 calls to {output}" in result.stdout.replace("\n", "")


def test_a_registry_path_with_markup_is_printed_literally(tmp_path: Path) -> None:
    registry = tmp_path / "[red]models[link=http:evil].yaml"
    registry.write_text((Path(__file__).parent.parent / "config" / "models.yaml").read_text())
    result = runner.invoke(app, ["check", "--registry", str(registry)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "[red]models[link=http:evil]" in result.stdout  # the title wraps after it


# --- CSV cells are neutralised -------------------------------------------------------------------


@pytest.mark.usefixtures("hostile_rows")
def test_csv_export_neutralises_formula_cells_and_keeps_numbers(tmp_path: Path) -> None:
    output = tmp_path / "calls.csv"
    result = run("export", "--output", str(output))
    assert result.exit_code == 0, result.output
    with output.open(newline="", encoding="utf-8") as handle:
        rows = {row["request_id"]: row for row in csv.DictReader(handle)}
    formula = rows["req-formula"]
    for column, value in FORMULAS.items():
        assert formula[column] == "'" + value, column
    assert (formula["cost_usd"], formula["latency_ms"]) == ("-0.25", "-1.5")
    assert formula["metadata"] == '{"note":"=1+1"}'  # JSON starts with "{": nothing to neutralise
    assert rows["req-tag"]["tenant_id"] == CLOSING_TAG  # "[" is harmless in a spreadsheet


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_every_formula_start_gets_a_quote(start: str) -> None:
    line = csv_line({"tenant_id": f"{start}1+1", "tokens_in": -3, "cost_usd": -0.5, "success": False})
    [cells] = list(csv.reader(io.StringIO(line, newline="")))
    assert f"'{start}1+1" in cells
    assert "-3" in cells and "-0.5" in cells and "false" in cells


def test_a_carriage_return_inside_a_value_cannot_split_the_row() -> None:
    line = csv_line({"tenant_id": "a\rb", "operation": "c\nd"})
    assert line.endswith("\n") and not line.endswith("\r\n")
    [cells] = list(csv.reader(io.StringIO(line, newline="")))
    assert cells[19:21] == ["a\rb", "c\nd"]


def test_a_text_cell_that_starts_harmlessly_is_unchanged() -> None:
    line = csv_line({"tenant_id": "acme = 1", "operation": "a-b", "error_message": " =1"})
    assert next(csv.reader([line]))[19:21] == ["acme = 1", "a-b"]
