"""`course-llm lint`: find direct LLM SDK calls that escape tracking. Warnings only; it never fails.

An SDK call made outside the facade and outside `track_llm_call` leaves no row in llm_calls: its
tokens and cost never reach `course-llm usage`. This module reports each as `file:line: message`,
read from the syntax tree (`ast`), not by regular expressions, which cannot resolve an alias or
tell a call from a string. Reported (DESIGN.md, "Routing, second stage — contract"):
- `openai` clients (OpenAI, AsyncOpenAI, AzureOpenAI, AsyncAzureOpenAI): `chat.completions`,
  `responses`, `completions`, `embeddings` `.create(...)`, their parse/stream forms, also through
  `with_raw_response`; module-level `openai.chat.completions.create`, `openai.ChatCompletion.create`;
- `anthropic` clients: `messages.create` / `messages.stream`;
- `google.genai` clients (`genai.Client`): `models.generate_content(_stream)`, also via `.aio`;
- `litellm.completion` / `litellm.acompletion`, also imported by name.
Import aliases are resolved (`import openai as oa`, `from openai import AsyncOpenAI as C`). A call
lexically inside a `with`/`async with` whose item calls `track_llm_call` is tracked. Files of the
course_llm package (the facade, the proxy) are not read.

What it cannot see, reading one file at a time without running or type-checking it:
- a client from an unannotated parameter (a pytest fixture), another module, a factory without a
  return annotation, a container (`clients["openai"]`) or a wrapper (`instructor.from_openai`);
  a client class in an annotation (`client: AsyncOpenAI`, `def make() -> OpenAI`) is seen;
- a method held in a variable (`create = client.chat.completions.create`) or passed along;
- order: a name bound to a client anywhere in a scope is a client in all of that scope;
- tracking entered another way (`ExitStack.enter_context`); a function defined inside a tracked
  block counts as tracked wherever it runs;
- where a client sends requests. One built with a literal loopback `base_url` (the course_llm
  proxy, which records its calls) is not reported; one pointed at the proxy by `OPENAI_BASE_URL`
  or a computed URL is: end that line with `# course-llm: ignore`.
"""

from __future__ import annotations

import ast
import io
import os
import tokenize
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Finding", "LintReport", "lint_paths", "lint_source"]

#: Client classes → their SDK. `openai.Client` and `anthropic.Client` are the SDKs' own aliases.
_CLASSES = {
    "openai": "OpenAI AsyncOpenAI AzureOpenAI AsyncAzureOpenAI Client AsyncClient",
    "anthropic": "Anthropic AsyncAnthropic AnthropicBedrock AsyncAnthropicBedrock AnthropicVertex "
    "AsyncAnthropicVertex Client AsyncClient",
    "google.genai": "Client client.Client",
}
CLIENT_CLASSES = {f"{sdk}.{name}": sdk for sdk, names in _CLASSES.items() for name in names.split()}
#: The generating methods of each SDK's clients: the attribute path after the client.
_METHODS = {
    "openai": "chat.completions.create chat.completions.parse chat.completions.stream responses.create "
    "responses.parse responses.stream beta.chat.completions.parse beta.chat.completions.stream "
    "completions.create embeddings.create",
    "anthropic": "messages.create messages.stream beta.messages.create beta.messages.stream",
    "google.genai": "models.generate_content models.generate_content_stream aio.models.generate_content "
    "aio.models.generate_content_stream",
}
CLIENT_METHODS = {sdk: set(names.split()) for sdk, names in _METHODS.items()}
#: Module-level calls: openai>=1's module client (`openai.chat.completions.create`), openai<1's
#: `openai.ChatCompletion.create`, and LiteLLM's own entry points (litellm 1.106.2).
_LEGACY = ("ChatCompletion", "Completion", "Embedding")
MODULE_CALLS = {
    **{f"openai.{method}": "openai" for method in CLIENT_METHODS["openai"]},
    **{f"openai.{api}.{verb}": "openai" for api in _LEGACY for verb in ("create", "acreate")},
    "litellm.completion": "litellm",
    "litellm.acompletion": "litellm",
}
#: Views that make the same calls, keeping the raw response (`….with_raw_response.create`).
_RESPONSE_VIEWS = {"with_raw_response", "with_streaming_response"}
#: Methods that return another client of the same SDK (`client.with_options(timeout=5)`).
_CLIENT_COPIES = {"with_options", "copy"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
_SKIPPED_DIRS = {".venv", "venv", "node_modules", "__pycache__", "site-packages"}
IGNORE_COMMENT = "course-llm: ignore"


@dataclass(frozen=True)
class Finding:
    """One line of the report: a direct call, or a file that could not be read or parsed."""

    path: str
    line: int
    message: str
    is_call: bool = True

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class LintReport:
    """What `lint_paths` found, in file and line order, and how many files it read."""

    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0

    def summary(self) -> str:
        calls = sum(finding.is_call for finding in self.findings)
        problems = len(self.findings) - calls
        files = _count(self.files_checked, "file")
        text = f"{_count(calls, 'direct LLM call')} outside track_llm_call in {files}"
        unread = f"; {_count(problems, 'file')} could not be read or parsed" if problems else ""
        return f"{text}{unread} (warnings only)"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def lint_paths(paths: Iterable[str | Path]) -> LintReport:
    """Check every Python file under `paths` (files or directories); never raises for a bad file."""
    report = LintReport()
    for path in _python_files(paths, report):
        try:
            source = path.read_bytes()
        except OSError as exc:
            report.findings.append(Finding(str(path), 1, f"cannot read: {exc.strerror or exc}", False))
            continue
        report.files_checked += 1
        report.findings.extend(lint_source(source, str(path)))
    return report


def lint_source(source: str | bytes, filename: str) -> list[Finding]:
    """The untracked SDK calls in one module's source; a syntax error is one finding, not an exception."""
    try:
        tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError) as exc:  # ValueError: a null byte, on Python 3.11
        line = getattr(exc, "lineno", None) or 1
        reason = getattr(exc, "msg", None) or str(exc)
        return [Finding(filename, line, f"cannot parse: {reason}", False)]
    try:
        lines = _find_calls(tree)
    except RecursionError:  # absurdly deep nesting: report the file rather than crash the hook
        return [Finding(filename, 1, "cannot analyse: expressions nested too deeply", False)]
    ignored = _ignored_lines(source)
    return [Finding(filename, line, message) for line, message in lines if line not in ignored]


def _python_files(paths: Iterable[str | Path], report: LintReport) -> Iterator[Path]:
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            candidates: Iterable[Path] = _walk(path)
        elif path.exists():
            candidates = [path]  # named explicitly (pre-commit passes files): read whatever it is
        else:
            report.findings.append(Finding(str(path), 1, "cannot read: no such file or directory", False))
            continue
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen and not any(map(_is_course_llm_package, key.parents)):
                seen.add(key)
                yield candidate


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        dirnames[:] = sorted(
            name
            for name in dirnames
            if not name.startswith(".")
            and name not in _SKIPPED_DIRS
            and not (here / name / "pyvenv.cfg").exists()  # a virtualenv of any name
        )
        yield from (here / name for name in sorted(filenames) if name.endswith(".py"))


def _is_course_llm_package(directory: Path) -> bool:
    """The course_llm package, wherever it sits: its facade and proxy may call SDKs directly."""
    return directory.name == "course_llm" and (directory / "__init__.py").is_file()


def _ignored_lines(source: str | bytes) -> set[int]:
    """Lines ending with `# course-llm: ignore`, read from the comment tokens (not from strings)."""
    raw = source.encode() if isinstance(source, str) else source
    ignored: set[int] = set()
    # ast parsed it; a tokenizer quirk would only cost the suppressions after that point
    with suppress(tokenize.TokenError, SyntaxError):
        for token in tokenize.tokenize(io.BytesIO(raw).readline):
            if token.type == tokenize.COMMENT and IGNORE_COMMENT in token.string:
                ignored.add(token.start[0])
    return ignored


def _find_calls(tree: ast.Module) -> list[tuple[int, str]]:
    """Run the finder twice: the first pass learns every binding (a client assigned below its use,
    an attribute set in another method), the second reports with all of them known."""
    finder = _Finder(_import_aliases(tree))
    finder.scopes.append((tree, False))
    finder.visit(tree)
    finder.found.clear()
    finder.visit(tree)
    return sorted(set(finder.found))


def _import_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name → qualified name for every absolute import in the module, at any depth."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import google.genai` binds `google`
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


_Scope = tuple[ast.AST, bool]  # (the node that opens it, whether it is a class body)


class _Finder(ast.NodeVisitor):
    """Walks one module: records which names may hold SDK clients, per scope, and the SDK calls
    made outside a `track_llm_call` block, as (line, message)."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.bindings: dict[ast.AST, dict[str, str | None]] = {}  # scope node → name → SDK or None
        self.attributes: dict[str, str] = {}  # `self.client` → SDK, module-wide
        self.factories: dict[str, str] = {}  # `make_client`, `self.make_client` → SDK they return
        self.scopes: list[_Scope] = []
        self.tracked = 0
        self.found: list[tuple[int, str]] = []

    def qualified(self, node: ast.expr) -> str | None:
        """`oa.chat.completions.create` → `openai.chat.completions.create` when `oa` is `openai`."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualified(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def annotation_sdk(self, node: ast.expr | None) -> str | None:
        """The SDK of an annotation naming a client class: `AsyncOpenAI`, `"OpenAI"`, `OpenAI | None`."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.annotation_sdk(node.left) or self.annotation_sdk(node.right)
        if isinstance(node, ast.Subscript):  # Optional[OpenAI]
            return self.annotation_sdk(node.slice)
        return CLIENT_CLASSES.get(self.qualified(node) or "") if isinstance(node, ast.expr) else None

    def client_sdk(self, node: ast.expr) -> str | None:
        """The SDK whose client `node` evaluates to, when this module shows it; else None."""
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.Attribute):
            return self.attributes.get(ast.unparse(node))
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr in _CLIENT_COPIES:
                return self.client_sdk(node.func.value)
            if sdk := self.factories.get(ast.unparse(node.func)):
                return sdk
            sdk = CLIENT_CLASSES.get(self.qualified(node.func) or "")
            return None if sdk is None or _loopback_base_url(node) else sdk
        return None

    def lookup(self, name: str) -> str | None:
        """Python's rule: the current scope, then enclosing functions and the module, skipping
        class bodies other than the current one."""
        for index in range(len(self.scopes) - 1, -1, -1):
            scope, is_class = self.scopes[index]
            if is_class and index != len(self.scopes) - 1:
                continue
            names = self.bindings.get(scope, {})
            if name in names:
                return names[name]
        return None

    def bind(self, target: ast.expr, sdk: str | None) -> None:
        """Record an assignment; once a name may hold a client in a scope, it stays one there."""
        if isinstance(target, ast.Name):
            scope, is_class = self.scopes[-1]
            names = self.bindings.setdefault(scope, {})
            names[target.id] = names.get(target.id) or sdk
            if is_class and sdk:  # a class attribute is read as `self.client`
                self.attributes[f"self.{target.id}"] = sdk
        elif isinstance(target, ast.Attribute) and sdk:
            self.attributes[ast.unparse(target)] = sdk
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self.bind(element, None)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, None)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        for outer in (*getattr(node, "decorator_list", []), *node.args.defaults, *node.args.kw_defaults):
            if outer is not None:
                self.visit(outer)
        if not isinstance(node, ast.Lambda) and (sdk := self.annotation_sdk(node.returns)):
            in_class = self.scopes[-1][1]
            self.factories[f"self.{node.name}" if in_class else node.name] = sdk
        self.scopes.append((node, False))
        for argument in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
            self.bind(ast.Name(argument.arg), self.annotation_sdk(argument.annotation))
        for statement in node.body if isinstance(node.body, list) else [node.body]:
            self.visit(statement)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for outer in (*node.decorator_list, *node.bases, *node.keywords):
            self.visit(outer)
        self.scopes.append((node, True))
        for statement in node.body:
            self.visit(statement)
        self.scopes.pop()

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        sdk = self.client_sdk(node.value)
        for target in node.targets:
            self.bind(target, sdk)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        value_sdk = self.client_sdk(node.value) if node.value is not None else None
        self.bind(node.target, value_sdk or self.annotation_sdk(node.annotation))

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.bind(node.target, self.client_sdk(node.value))

    def _visit_with(self, node: ast.With | ast.AsyncWith) -> None:
        """`with track_llm_call(...)` tracks its later items and its body; `with OpenAI() as c` binds."""
        entered = 0
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.bind(item.optional_vars, self.client_sdk(item.context_expr))
            if self.is_tracking(item.context_expr):
                entered += 1
                self.tracked += 1
        for statement in node.body:
            self.visit(statement)
        self.tracked -= entered

    visit_With = visit_AsyncWith = _visit_with

    def is_tracking(self, node: ast.expr) -> bool:
        """A call of `track_llm_call`, under any alias (`from course_llm import track_llm_call as t`)."""
        if not isinstance(node, ast.Call):
            return False
        name = self.qualified(node.func) or ast.unparse(node.func)
        return name.rsplit(".", 1)[-1] == "track_llm_call"

    def visit_Call(self, node: ast.Call) -> None:
        sdk = self.sdk_call(node.func)
        if sdk is not None and not self.tracked:
            shown = ast.unparse(node.func)
            shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
            self.found.append((node.lineno, f"direct {sdk} call {shown}() outside track_llm_call"))
        self.generic_visit(node)

    def sdk_call(self, func: ast.expr) -> str | None:
        """The SDK that `func(...)` calls into, or None for anything else (an unrelated `.create`)."""
        sdk = MODULE_CALLS.get(self.qualified(func) or "")
        if sdk is not None:
            return sdk
        path: list[str] = []
        receiver = func
        while isinstance(receiver, ast.Attribute):  # try every split: receiver . method path
            path.insert(0, receiver.attr)
            receiver = receiver.value
            client = self.client_sdk(receiver)
            method = ".".join(part for part in path if part not in _RESPONSE_VIEWS)
            if client is not None and method in CLIENT_METHODS[client]:
                return client
        return None


def _loopback_base_url(call: ast.Call) -> bool:
    """A client built with a literal loopback `base_url` talks to a local server, such as the
    course_llm proxy, which records its calls itself."""
    urls = [
        kw.value.value for kw in call.keywords if kw.arg == "base_url" and isinstance(kw.value, ast.Constant)
    ]
    try:
        return any(isinstance(url, str) and urlsplit(url).hostname in _LOOPBACK for url in urls)
    except ValueError:  # not a URL at all
        return False
