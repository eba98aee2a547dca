"""Every Python and shell block of README.md runs as written against the proxy `make run` starts.

The proxy is started the way `make run` starts it: `course-llm serve --mock` with
LITELLM_MASTER_KEY unset (so it uses the fixed development key the README's examples use), on the
SQLite default, in a fresh working directory laid out like a checkout (the registry at
config/models.yaml). No COURSE_LLM_* or provider key from the test's own environment reaches it.

Each block is one test case, run in a subprocess in that working directory, with the venv's bin
directory first on PATH (as after `source .venv/bin/activate`):
- a ```python block runs with the venv's python and COURSE_LLM_MOCK=1, so the facade answers
  offline and writes to the same course_llm.db as the proxy;
- a ```sh / ```bash block runs with `bash -eu -o pipefail`, so a failing command or an unset
  variable fails the block (a user's shell would carry on and print a 401).
A block passes when it exits 0, prints something, prints no JSON error body (curl exits 0 on a
401) and no traceback. Blocks marked `<!-- not-run: reason -->` are skipped with that reason
(convention: tests/readme_blocks.py).

One rewrite, and only one: the proxy listens on a free port instead of 4000 (a developer's own
`make run`, or a parallel run, may hold 4000), so `127.0.0.1:4000` and `localhost:4000` in a
block become that port. Nothing else in a block is changed.

The same module checks docs/architecture.md: every path and `course_llm.…` module it cites exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE

import pytest

from tests.proxy_process import BIN, ProxyProcess, free_port, serve_argv
from tests.readme_blocks import (
    Block,
    error_payloads,
    has_section,
    misplaced_markers,
    missing_citations,
    readme_blocks,
    section_references,
    with_port,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
ARCHITECTURE = ROOT / "docs" / "architecture.md"
BLOCKS = readme_blocks(README)
BLOCK_TIMEOUT_S = 180


def newcomer_env(**extra: str) -> dict[str, str]:
    """The test's environment without course_llm's, LiteLLM's or any provider's settings, with
    the venv's bin first on PATH: what a newcomer's shell holds after activating the venv."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COURSE_LLM_", "LITELLM_")) and not name.endswith("_API_KEY")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(BIN.parent)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # the Makefile exports it; no network at import
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory laid out like a fresh checkout: the registry and nothing else."""
    path = tmp_path_factory.mktemp("newcomer")
    (path / "config").mkdir()
    shutil.copy(ROOT / "config" / "models.yaml", path / "config" / "models.yaml")
    return path


@pytest.fixture(scope="module")
def make_run_proxy(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """`course-llm serve --mock` as `make run` starts it, in `workdir`, on a free port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("proxy-log") / "proxy.log"
    process = ProxyProcess(serve_argv("--mock", "--port", str(port)), {}, port, log_path)
    # ProxyProcess starts its child in the current directory with os.environ: give it the
    # newcomer's directory and environment for the moment of the start.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        for name in set(os.environ) - set(newcomer_env()):
            patch.delenv(name)
        for name, value in newcomer_env().items():
            patch.setenv(name, value)
        process.start()
    yield process
    process.stop()


def run_block(block: Block, port: int, workdir: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    text = with_port(block.text, port)
    if block.runner == "python":
        script = scratch / f"readme_block_{block.index:02d}.py"
        script.write_text(text, encoding="utf-8")
        argv = [str(BIN / "python"), str(script)]
        env = newcomer_env(COURSE_LLM_MOCK="1")
    else:
        argv = ["bash", "-eu", "-o", "pipefail", "-c", text]
        env = newcomer_env()
    # A session of its own, so a block that hangs (or starts a server) is stopped with all it started.
    with subprocess.Popen(
        argv, cwd=workdir, env=env, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True
    ) as child:
        try:
            stdout, stderr = child.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            stdout, stderr = child.communicate()
            stderr += f"\n[killed after {BLOCK_TIMEOUT_S} s]"
    return subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)


def _report(block: Block, ran: subprocess.CompletedProcess[str], proxy: ProxyProcess) -> str:
    return (
        f"README.md line {block.line} ({block.runner}), exit {ran.returncode}\n"
        f"--- block\n{block.text}--- stdout\n{ran.stdout[-3000:]}\n--- stderr\n{ran.stderr[-3000:]}\n"
        f"--- proxy log (tail)\n{proxy.log()[-2000:]}"
    )


# --- the README's blocks ------------------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS, ids=[b.test_id for b in BLOCKS])
def test_readme_block_runs_as_written_against_make_run(
    block: Block, make_run_proxy: ProxyProcess, workdir: Path, tmp_path: Path
) -> None:
    if block.not_run is not None:
        pytest.skip(f"README.md line {block.line} is marked not-run: {block.not_run}")
    ran = run_block(block, make_run_proxy.port, workdir, tmp_path)
    report = _report(block, ran, make_run_proxy)
    assert ran.returncode == 0, report
    assert ran.stdout.strip(), f"the block printed nothing\n{report}"
    assert not error_payloads(ran.stdout), f"the proxy answered with an error\n{report}"
    assert "Traceback (most recent call last)" not in ran.stderr, f"a traceback was printed\n{report}"


def test_readme_has_python_curl_and_cli_examples_to_run() -> None:
    runnable = [b for b in BLOCKS if b.not_run is None]
    assert any(b.runner == "python" for b in runnable), "no runnable ```python block found"
    assert any("curl " in b.text for b in runnable), "no runnable curl command found"
    assert any("course-llm " in b.text for b in runnable), "no runnable course-llm command found"


def test_every_not_run_marker_gives_a_reason_and_skips_a_block() -> None:
    assert misplaced_markers(README) == []


# --- the extraction itself ----------------------------------------------------------------------

SAMPLE = """\
Intro.

```python
print("one")
```

<!-- not-run: starts a server -->

```sh
make run
```

```text
course-llm serve [--port 4000]
```

```bash
curl http://127.0.0.1:4000/v1/models http://localhost:4000/x http://10.0.0.1:4000/y
```
"""


def test_blocks_are_read_in_order_with_their_not_run_reason() -> None:
    blocks = readme_blocks(SAMPLE)
    assert [(b.runner, b.line, b.not_run) for b in blocks] == [
        ("python", 3, None),
        ("shell", 9, "starts a server"),
        ("shell", 17, None),
    ]
    assert blocks[0].text == 'print("one")\n'


def test_only_the_local_proxy_port_is_rewritten() -> None:
    curl = readme_blocks(SAMPLE)[-1].text
    assert with_port(curl, 51234) == (
        "curl http://127.0.0.1:51234/v1/models http://localhost:51234/x http://10.0.0.1:4000/y\n"
    )


def test_a_marker_before_prose_or_without_reason_is_reported() -> None:
    text = "<!-- not-run: why -->\nSome prose.\n\n<!-- not-run: -->\n```sh\nls\n```\n"
    assert misplaced_markers(text) == [
        "line 1: not-run marker not followed by a python/sh block",
        "line 4: not-run marker without a reason",
    ]


def test_an_error_body_is_found_in_plain_and_streamed_output() -> None:
    assert error_payloads('{"error": {"message": "Authentication Error"}}\n')
    assert error_payloads('data: {"id": "1"}\n\ndata: {"error": {"code": 400}}\n')
    assert error_payloads('data: {"id": "1", "choices": []}\n\ndata: [DONE]\n') == []


# --- docs/architecture.md -----------------------------------------------------------------------


def test_architecture_document_exists_and_cites_only_what_exists() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert missing_citations(text, ROOT) == []


#: Where the code and the configuration point readers to sections of docs/architecture.md (this
#: test's own files only show the pattern, with examples).
REFERRING_FILES = [
    *sorted((ROOT / "course_llm").rglob("*.py")),
    *sorted(
        p for p in (ROOT / "tests").rglob("*.py") if p.name not in ("test_readme_e2e.py", "readme_blocks.py")
    ),
    *sorted((ROOT / "alembic").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.py")),
    ROOT / "config" / "models.yaml",
    ROOT / "pyproject.toml",
    ROOT / "Makefile",
    ROOT / "README.md",
]


def test_every_section_the_repository_cites_in_the_architecture_document_exists() -> None:
    document = ARCHITECTURE.read_text(encoding="utf-8")
    dangling = [
        f"{path.relative_to(ROOT)}: {name!r}"
        for path in REFERRING_FILES
        for name in section_references(path.read_text(encoding="utf-8"))
        if not has_section(document, name)
    ]
    assert dangling == []


def test_a_section_reference_matches_a_heading_that_starts_with_it() -> None:
    document = "# Title\n\n## Durability: journal, checkpoint, replay\n\n### Usage reporting\n"
    code = (
        'see docs/architecture.md, "Durability" and docs/architecture.md ("Usage\n    reporting — contract")'
    )
    assert section_references(code) == ["Durability", "Usage reporting — contract"]
    assert has_section(document, "Durability")
    assert has_section(document, "Usage reporting — contract")
    assert not has_section(document, "Layout")


def test_a_citation_of_a_missing_module_or_path_is_reported() -> None:
    text = (
        "See `course_llm.routing.compiler.compile_router_config`, `course_llm.nowhere` "
        "and course_llm/gone.py."
    )
    assert missing_citations(text, ROOT) == ["course_llm/gone.py", "course_llm.nowhere"]
