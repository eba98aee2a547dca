"""The course-llm command line: exit codes and output, through Typer's CliRunner."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from course_llm.cli import app

runner = CliRunner()
ROOT = Path(__file__).parent.parent


def test_check_prints_every_chain_and_exits_zero() -> None:
    result = runner.invoke(app, ["check", "--registry", str(ROOT / "config" / "models.yaml")])
    assert result.exit_code == 0, result.output
    assert "registry OK" in result.output
    assert "5 models, 4 actions" in result.output
    assert "claude-sonnet" in result.output and "course_structuring" in result.output


def test_a_long_path_in_a_message_is_printed_on_one_line_at_any_terminal_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / "config"
    deep.mkdir(parents=True)
    registry = deep / "models.yaml"
    registry.write_text((ROOT / "config" / "models.yaml").read_text())
    monkeypatch.setenv("COLUMNS", "60")  # narrower than the line: rich would wrap it
    result = runner.invoke(app, ["check", "--registry", str(registry)])
    assert result.exit_code == 0, result.output
    assert f"registry OK: {registry}" in result.output.splitlines()


def test_check_on_a_bad_registry_prints_one_line_naming_file_and_key(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    data["routing"]["video_analysis"]["quality"][1] = "gpt-5"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["check", "--registry", str(bad)])
    assert result.exit_code == 1
    assert "routing.video_analysis.quality[1]: unknown model 'gpt-5'" in result.output
    assert str(bad) in result.output.replace("\n", "")
    assert "Traceback" not in result.output


def test_check_on_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", "--registry", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1
    assert "file not found" in result.output


def test_compile_writes_the_proxy_config(tmp_path: Path) -> None:
    output = tmp_path / "proxy.yaml"
    result = runner.invoke(
        app, ["compile", "--registry", str(ROOT / "config" / "models.yaml"), "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(output.read_text())
    assert len(config["model_list"]) == 19
    assert config["litellm_settings"]["callbacks"] == ["course_llm.proxy.callback.logger"]


def test_db_upgrade_migrates_the_configured_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "calls.db"
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", f"sqlite:///{db}")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
    assert "llm_calls" in tables


def test_db_upgrade_on_an_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", "postgresql://postgres:secret@127.0.0.1:1/nowhere")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "error:" in result.output and "Traceback" not in result.output
    assert "secret" not in result.output
