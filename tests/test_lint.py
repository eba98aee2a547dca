"""`course-llm lint`: which direct SDK calls are reported, at which line, and that it never fails.

Each sample marks the lines that must be reported with a trailing `# reported` comment, so the
expected line numbers come from the sample itself and every other line must stay silent.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import course_llm
from course_llm.cli import app
from course_llm.lint import lint_paths, lint_source

ROOT = Path(__file__).parent.parent
runner = CliRunner()


def check(source: str) -> None:
    """The sample's findings are exactly its `# reported` lines."""
    source = textwrap.dedent(source)
    expected = [
        number for number, line in enumerate(source.splitlines(), 1) if line.rstrip().endswith("# reported")
    ]
    findings = lint_source(source, "sample.py")
    assert [finding.line for finding in findings] == expected, "\n".join(map(str, findings))
    assert all(finding.is_call for finding in findings)


def test_every_openai_client_class_and_generating_method_is_reported() -> None:
    check(
        """
        import openai
        from openai import AsyncAzureOpenAI, AsyncOpenAI, AzureOpenAI, OpenAI

        sync = OpenAI()
        azure = AzureOpenAI(api_version="2024-06-01")
        sync.chat.completions.create(model="gpt-4o-mini", messages=[])  # reported
        sync.responses.create(model="gpt-4o-mini", input="hi")  # reported
        azure.completions.create(model="m", prompt="hi")  # reported
        azure.embeddings.create(model="m", input="hi")  # reported
        sync.chat.completions.with_raw_response.create(model="m", messages=[])  # reported
        sync.with_options(timeout=5).chat.completions.create(  # reported
            model="m",
            messages=[],
        )
        OpenAI().chat.completions.create(model="m", messages=[])  # reported


        async def main():
            aclient = AsyncOpenAI()
            aazure = AsyncAzureOpenAI(api_version="2024-06-01")
            await aclient.chat.completions.create(model="m", messages=[])  # reported
            await aazure.responses.create(model="m", input="hi")  # reported
            sync.models.list()
            sync.files.create(file=b"", purpose="batch")
        """
    )


def test_module_level_openai_calls_are_reported() -> None:
    check(
        """
        import openai

        openai.chat.completions.create(model="m", messages=[])  # reported
        openai.ChatCompletion.create(model="m", messages=[])  # reported
        openai.Completion.acreate(model="m", prompt="")  # reported
        openai.Model.list()
        """
    )


def test_anthropic_messages_create_and_stream_are_reported() -> None:
    check(
        """
        import anthropic


        async def main():
            client = anthropic.AsyncAnthropic()
            await client.messages.create(model="claude", max_tokens=10, messages=[])  # reported
            async with client.messages.stream(model="claude", max_tokens=10, messages=[]) as s:  # reported
                await s.get_final_message()
            await client.messages.count_tokens(model="claude", messages=[])
        """
    )


def test_google_genai_generate_content_is_reported_sync_and_async() -> None:
    check(
        """
        from google import genai
        import google.genai as gg

        client = genai.Client()
        other = gg.Client(api_key="k")
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")  # reported
        other.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")  # reported


        async def main():
            await client.aio.models.generate_content(model="gemini", contents="hi")  # reported
            client.models.list()
        """
    )


def test_litellm_completion_is_reported_under_its_module_and_imported_names() -> None:
    check(
        """
        import litellm
        import litellm as ll
        from litellm import acompletion as ask, completion

        litellm.completion(model="gpt-4o-mini", messages=[])  # reported
        completion(model="gpt-4o-mini", messages=[])  # reported


        async def main():
            await ll.acompletion(model="m", messages=[])  # reported
            await ask(model="m", messages=[])  # reported
            litellm.completion_cost(completion_response={})
        """
    )


def test_import_aliases_of_modules_and_classes_are_resolved() -> None:
    check(
        """
        import openai as oa
        from anthropic import Anthropic as Claude
        from openai import AsyncOpenAI as C

        oa.OpenAI().embeddings.create(model="m", input="x")  # reported
        Claude().messages.create(model="m", max_tokens=1, messages=[])  # reported


        async def main():
            c = C()
            await c.chat.completions.create(model="m", messages=[])  # reported
        """
    )


def test_calls_inside_track_llm_call_are_not_reported_and_calls_after_it_are() -> None:
    check(
        """
        import course_llm
        from course_llm import track_llm_call
        from course_llm.recording.tracking import track_llm_call as tracked
        from openai import AsyncOpenAI

        client = AsyncOpenAI()


        async def main():
            async with track_llm_call(provider="openai", model_id="gpt-4o-mini", action="a") as call:
                response = await client.chat.completions.create(model="m", messages=[])
                call.record_usage(response)
            async with course_llm.track_llm_call(provider="openai", model_id="m", action="a"):
                if True:
                    await client.responses.create(model="m", input="x")
            async with tracked(provider="openai", model_id="m", action="a"), client.responses.stream(
                model="m", input="x"
            ) as stream:
                pass
            async with client.responses.stream(model="m", input="x") as early, tracked(  # reported
                provider="openai", model_id="m", action="a"
            ):
                pass
            await client.chat.completions.create(model="m", messages=[])  # reported
        """
    )


def test_a_create_on_something_that_is_not_an_sdk_client_is_not_reported() -> None:
    check(
        """
        from openai import OpenAI

        client = OpenAI()


        class Model:
            objects = None


        Model.objects.create(name="x")
        session = make_session()
        session.chat.completions.create(model="m")
        session.messages.create(text="hi")
        client.messages.create(model="m")


        def handler(client):
            client.chat.completions.create(model="m", messages=[])


        def other():
            client = build()
            client.chat.completions.create(model="m", messages=[])
        """
    )


def test_clients_seen_through_annotations_attributes_and_factories_are_reported() -> None:
    check(
        """
        from anthropic import AsyncAnthropic
        from openai import AsyncOpenAI, OpenAI


        def make() -> OpenAI:
            return build_somehow()


        class Service:
            backup: "AsyncAnthropic | None" = None

            def __init__(self, client: AsyncOpenAI) -> None:
                self.client = client

            async def run(self):
                await self.client.chat.completions.create(model="m", messages=[])  # reported
                await self.backup.messages.create(model="m", max_tokens=1, messages=[])  # reported


        make().chat.completions.create(model="m", messages=[])  # reported
        """
    )


def test_python_scoping_holds_class_attributes_and_bindings_below_their_use() -> None:
    check(
        """
        import anthropic
        from openai import OpenAI


        def early():
            late.chat.completions.create(model="m", messages=[])  # reported


        class Holder:
            client = OpenAI()

            def run(self):
                client.chat.completions.create(model="m", messages=[])  # a NameError, not the attribute
                self.client.chat.completions.create(model="m", messages=[])  # reported

            def ask(self):
                self.claude.messages.create(model="m", max_tokens=1, messages=[])  # reported

            def __init__(self):
                self.claude = anthropic.Anthropic()


        late = OpenAI()
        """
    )


def test_a_loopback_base_url_client_and_an_ignore_comment_are_not_reported() -> None:
    check(
        """
        from openai import OpenAI

        proxy = OpenAI(base_url="http://127.0.0.1:4000/v1", api_key="sk-course-llm-dev")
        remote = OpenAI(base_url="https://api.deepseek.com", api_key="k")
        proxy.chat.completions.with_raw_response.create(model="course_structuring/quality", messages=[])
        remote.chat.completions.create(model="deepseek-chat", messages=[])  # reported
        remote.chat.completions.create(model="deepseek-chat", messages=[])  # course-llm: ignore
        text = "remote.chat.completions.create()  # reported in a string only"
        """
    )


def test_a_finding_reads_file_line_message() -> None:
    [finding] = lint_source("import litellm\n\n\nlitellm.completion(model='m')\n", "app/jobs.py")
    assert str(finding) == "app/jobs.py:4: direct litellm call litellm.completion() outside track_llm_call"


def test_a_syntax_error_is_one_finding_at_its_line_and_nothing_raises() -> None:
    [finding] = lint_source("import openai\n\ndef broken(:\n", "broken.py")
    assert finding.line == 3 and not finding.is_call
    assert str(finding).startswith("broken.py:3: cannot parse:")
    [binary] = lint_source(b"\x00\xff", "binary.py")
    assert not binary.is_call and "cannot parse" in binary.message


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


CALL = "import litellm\nlitellm.completion(model='m', messages=[])\n"


def test_directories_are_searched_recursively_skipping_venvs_hidden_dirs_and_course_llm(
    tmp_path: Path,
) -> None:
    write(tmp_path / "app" / "jobs" / "summarize.py", CALL)
    write(tmp_path / "top.py", CALL)
    write(tmp_path / "app" / "notes.txt", CALL)
    for skipped in (".venv", ".git", "node_modules", "__pycache__", "env-with-other-name"):
        write(tmp_path / skipped / "lib.py", CALL)
    write(tmp_path / "env-with-other-name" / "pyvenv.cfg", "home = /usr/bin\n")
    write(tmp_path / "vendor" / "course_llm" / "__init__.py", "")
    write(tmp_path / "vendor" / "course_llm" / "routing" / "facade.py", CALL)

    report = lint_paths([tmp_path])

    found = sorted(Path(finding.path).relative_to(tmp_path).as_posix() for finding in report.findings)
    assert found == ["app/jobs/summarize.py", "top.py"]
    assert report.files_checked == 2
    assert report.summary() == "2 direct LLM calls outside track_llm_call in 2 files (warnings only)"


def test_files_of_the_course_llm_package_itself_are_not_read() -> None:
    package = Path(course_llm.__file__).parent
    assert lint_paths([package, package / "routing" / "facade.py"]).files_checked == 0


def test_the_cli_prints_file_line_message_and_a_summary_and_exits_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path / "pkg" / "calls.py", "from openai import OpenAI\n\nOpenAI().responses.create(input='x')\n"
    )
    write(tmp_path / "pkg" / "broken.py", "def (:\n")
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(app, ["lint"])  # no PATH: the current directory

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("pkg/broken.py:1: cannot parse:")
    assert lines[1] == "pkg/calls.py:3: direct openai call OpenAI().responses.create() outside track_llm_call"
    assert lines[2] == (
        "1 direct LLM call outside track_llm_call in 2 files; "
        "1 file could not be read or parsed (warnings only)"
    )


def test_the_cli_exits_zero_on_a_missing_path_and_reports_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.py"
    result = runner.invoke(app, ["lint", str(missing)])
    assert result.exit_code == 0, result.output
    assert f"{missing}:1: cannot read: no such file or directory" in result.output.splitlines()


def test_the_pre_commit_hook_runs_course_llm_lint_on_python_files_and_shows_its_warnings() -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    [hook] = [hook for hook in hooks if hook["id"] == "course-llm-lint"]
    assert hook["entry"] == "course-llm lint"
    assert hook["language"] == "python"
    assert hook["types"] == ["python"]
    assert hook["verbose"] is True
    assert hook.get("pass_filenames", True) is True
