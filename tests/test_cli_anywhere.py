"""The CLI from a directory that is not the repository: shipped registry, one-line errors, no stray files.

Each test runs in an empty temporary working directory with no COURSE_LLM_REGISTRY_PATH and no
COURSE_LLM_DATABASE_URL, as a newcomer who installed the package and typed `course-llm …` in
their home directory would.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from course_llm.cli import app
from course_llm.routing.registry import load_registry
from course_llm.settings import Settings, packaged_registry_path, sqlite_file

ROOT = Path(__file__).parent.parent
runner = CliRunner()


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory outside the repository, with no course_llm paths configured."""
    cwd = tmp_path / "home"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("COURSE_LLM_REGISTRY_PATH", raising=False)
    monkeypatch.delenv("COURSE_LLM_DATABASE_URL", raising=False)
    return cwd


def run(*args: str) -> Result:
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_check_uses_the_shipped_registry_and_says_so(elsewhere: Path) -> None:
    result = run("check")

    assert result.exit_code == 0, result.output
    assert f"registry OK: {packaged_registry_path()} (the default shipped with course_llm)" in result.output
    assert "5 models, 4 actions" in result.output


def test_a_project_registry_in_the_working_directory_wins_over_the_shipped_one(elsewhere: Path) -> None:
    (elsewhere / "config").mkdir()
    data = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    del data["routing"]["video_analysis"]["budget"]
    (elsewhere / "config" / "models.yaml").write_text(yaml.safe_dump(data))

    result = run("check")

    assert result.exit_code == 0, result.output
    assert "registry OK: config/models.yaml\n" in result.output
    assert Settings().registry_path == Path("config/models.yaml")


def test_compile_works_from_any_directory(elsewhere: Path) -> None:
    result = run("compile", "-o", "proxy.yaml")

    assert result.exit_code == 0, result.output
    assert len(yaml.safe_load((elsewhere / "proxy.yaml").read_text())["model_list"]) == 19


@pytest.mark.parametrize(
    "args",
    [["calls"], ["usage", "--group-by", "model_id"], ["export", "-o", "calls.csv"]],
    ids=lambda a: a[0],
)
def test_a_report_without_a_database_is_one_line_naming_it_and_creates_nothing(
    elsewhere: Path, args: list[str]
) -> None:
    line = one_line_error(run(*args))

    assert line == (
        f"error: no database at {elsewhere / 'course_llm.db'}: "
        "run `course-llm serve` or `course-llm db upgrade` first"
    )
    assert list(elsewhere.iterdir()) == []


def test_a_database_file_without_the_table_is_one_line_and_left_as_it_was(elsewhere: Path) -> None:
    database = elsewhere / "course_llm.db"
    sqlite3.connect(database).execute("create table other (x integer)").connection.commit()

    line = one_line_error(run("calls"))

    assert line == "error: database course_llm.db has no llm_calls table: run `course-llm db upgrade` first"
    tables = {r[0] for r in sqlite3.connect(database).execute("select name from sqlite_master")}
    assert tables == {"other"}


def test_db_upgrade_then_calls_works_from_any_directory(elsewhere: Path) -> None:
    assert run("db", "upgrade").exit_code == 0

    result = run("calls")

    assert result.exit_code == 0, result.output
    assert "no calls match" in result.output
    assert (elsewhere / "course_llm.db").is_file()


def test_python_dash_m_course_llm_runs_the_cli_from_any_directory(elsewhere: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_LLM_")}
    result = subprocess.run(
        [sys.executable, "-m", "course_llm", "check"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "(the default shipped with course_llm)" in result.stdout


# --- the shipped registry -------------------------------------------------------------------------


def test_the_shipped_registry_is_the_checkouts_config_models_yaml_and_loads() -> None:
    assert packaged_registry_path() == ROOT / "config" / "models.yaml"
    assert len(load_registry(packaged_registry_path()).models) == 5


def test_an_installed_package_uses_the_registry_inside_it(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "course_llm"
    (package / "_registry").mkdir(parents=True)
    (package / "_registry" / "models.yaml").write_text("models: {}\n")

    assert packaged_registry_path(package) == package / "_registry" / "models.yaml"


def test_pyproject_ships_config_models_yaml_inside_the_wheel() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]

    assert force_include["config/models.yaml"] == "course_llm/_registry/models.yaml"


def test_a_bad_setting_in_the_environment_is_one_line_naming_the_variable(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_LLM_MAX_ATTEMPTS", "many")

    line = one_line_error(run("compile", "-o", "proxy.yaml"))

    assert line.startswith("error: COURSE_LLM_MAX_ATTEMPTS: Input should be a valid integer")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:///course_llm.db", Path("course_llm.db")),
        ("sqlite:////var/data/calls.db?timeout=5", Path("/var/data/calls.db")),
        ("sqlite+aiosqlite:///:memory:", None),
        ("sqlite://", None),
        ("postgresql+asyncpg://app@db/course_llm", None),
    ],
)
def test_sqlite_file_is_the_file_an_sqlite_url_keeps_its_data_in(url: str, expected: Path | None) -> None:
    assert sqlite_file(url) == expected
