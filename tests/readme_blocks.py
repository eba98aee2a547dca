"""The README's code blocks as tests/test_readme_e2e.py runs them, and the paths a document cites.

The README convention, which `readme_blocks` reads:
- a ```python block is a complete program, and a ```sh / ```bash block is shell commands: each
  runs as written once `make run` is up (tests/test_readme_e2e.py runs every one);
- a block that must not run there (it starts the proxy, runs the test suite, needs your own
  provider keys) carries `<!-- not-run: <reason> -->` as the last non-blank line before its
  fence; the test reports it as skipped with that reason, so every exception is visible;
- a synopsis (options in brackets, `…` for "and so on") is not a command: it goes in a ```text
  fence, which is never run.

`cited_paths` and `missing_citations` check that every repository path and `course_llm.…` module
a document names exists (docs/architecture.md must not point at code that is gone);
`section_references` and `has_section` check the other direction, that a reference such as
`docs/architecture.md ("The registry")` in the code names a section the document has.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

#: Fence language → how the block runs.
RUNNERS = {"python": "python", "py": "python", "sh": "shell", "bash": "shell", "shell": "shell"}

_FENCE = re.compile(r"^(?P<fence>`{3,})\s*(?P<lang>[\w+-]*)[^`]*$")
_NOT_RUN = re.compile(r"^<!--\s*not-run:(?P<reason>.*?)-->\s*$")
_LOCAL_4000 = re.compile(r"(?<=\b127\.0\.0\.1:)4000\b|(?<=\blocalhost:)4000\b")


@dataclass(frozen=True)
class Block:
    """One runnable code block of a Markdown file."""

    index: int  # position among the runnable blocks, from 1
    line: int  # line of the opening fence, from 1
    runner: str  # "python" or "shell"
    text: str
    not_run: str | None  # the reason of a `<!-- not-run: … -->` marker, else None

    @property
    def test_id(self) -> str:
        first = next((s.strip() for s in self.text.splitlines() if s.strip()), "")
        slug = re.sub(r"[^\w.-]+", "-", first).strip("-")[:40]
        return f"{self.index:02d}-L{self.line}-{slug}"


def readme_blocks(markdown: str) -> list[Block]:
    """Every ```python / ```sh / ```bash block, in order, with its not-run marker if it has one."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    previous = ""  # the last non-blank line outside a block
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        fence, lang = opening["fence"], opening["lang"].lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), len(lines))
        if lang in RUNNERS:
            marker = _NOT_RUN.match(previous)
            blocks.append(
                Block(
                    index=len(blocks) + 1,
                    line=i + 1,
                    runner=RUNNERS[lang],
                    text="\n".join(lines[i + 1 : end]) + "\n",
                    not_run=marker["reason"].strip() if marker else None,
                )
            )
        previous = ""
        i = end + 1
    return blocks


def misplaced_markers(markdown: str) -> list[str]:
    """`not-run` markers that skip nothing (no runnable fence right after) or give no reason."""
    problems: list[str] = []
    lines = markdown.splitlines()
    for number, line in enumerate(lines, start=1):
        marker = _NOT_RUN.match(line.strip())
        if not marker:
            continue
        if not marker["reason"].strip():
            problems.append(f"line {number}: not-run marker without a reason")
        following = next((s for s in lines[number:] if s.strip()), "")
        fence = _FENCE.match(following)
        if not fence or fence["lang"].lower() not in RUNNERS:
            problems.append(f"line {number}: not-run marker not followed by a python/sh block")
    return problems


def with_port(text: str, port: int) -> str:
    """`text` with the README's proxy port (127.0.0.1:4000, localhost:4000) replaced by `port`."""
    return _LOCAL_4000.sub(str(port), text)


def error_payloads(output: str) -> list[str]:
    """JSON objects with an "error" key in `output` (whole, per line, or per SSE `data:` line).

    curl exits 0 on a 401 or a 400, so a shell block's exit code alone does not show that the
    proxy refused it; the body it printed does.
    """
    candidates = [
        output.strip(),
        *(line.strip().removeprefix("data:").strip() for line in output.splitlines()),
    ]
    found: list[str] = []
    for candidate in candidates:
        if not candidate.startswith("{"):
            continue
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict) and "error" in value and candidate not in found:
            found.append(candidate)
    return found


# --- paths a document cites --------------------------------------------------------------------

_TOP_DIRS = ("course_llm", "tests", "alembic", "config", "bench", "docs")
_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(_TOP_DIRS) + r")/[\w./-]*[\w/])")
_MODULE = re.compile(r"`(course_llm(?:\.\w+)+)`")


def cited_paths(markdown: str) -> tuple[list[str], list[str]]:
    """(repository paths such as `course_llm/proxy/guard.py`, dotted names such as
    `course_llm.proxy.callback.logger`) named anywhere in `markdown`, each once, in order."""
    paths = list(dict.fromkeys(m.rstrip("/.") for m in _PATH.findall(markdown)))
    modules = list(dict.fromkeys(_MODULE.findall(markdown)))
    return paths, modules


def _top_level_names(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _module_exists(root: Path, dotted: str) -> bool:
    """True when `dotted` is a module or package under `root`, or a top-level name of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not source.is_file():
            continue
        rest = parts[cut:]
        return not rest or (len(rest) == 1 and rest[0] in _top_level_names(source))
    return False


def missing_citations(markdown: str, root: Path) -> list[str]:
    """Every path or module `markdown` cites that does not exist under the repository `root`."""
    paths, modules = cited_paths(markdown)
    missing = [p for p in paths if not (root / p).exists()]
    missing += [m for m in modules if not _module_exists(root, m)]
    return missing


# --- sections other files cite --------------------------------------------------------------------

_SECTION_REFERENCE = re.compile(r'docs/architecture\.md(?:,\s*|\s*\(\s*)"(?P<name>[^"]+)"')
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*$", re.MULTILINE)


def section_references(text: str) -> list[str]:
    """Section names cited the two ways the code does: `docs/architecture.md, "Durability"` and
    `docs/architecture.md ("The registry")`."""
    return [" ".join(m["name"].split()) for m in _SECTION_REFERENCE.finditer(text)]  # wrapped lines


def has_section(markdown: str, name: str) -> bool:
    """True when a heading of `markdown` is `name` or starts with it (`"Durability"` finds
    `## Durability: journal, checkpoint, replay`); a trailing " — contract" is not required."""
    wanted = name.removesuffix(" — contract").strip()
    return any(m["title"].startswith(wanted) for m in _HEADING.finditer(markdown))
