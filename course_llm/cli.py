"""The `course-llm` command line. Commands parse options, call the library and print.

User mistakes (a bad registry, an unknown filter, an unreachable or missing database) print one
line on stderr and exit 1; no tracebacks. Every command works from any directory: without a
`config/models.yaml` there, the registry shipped with the package is used (`check` says which),
and the reporting commands never create a database: they only read one that `course-llm serve`
or `course-llm db upgrade` made. What is printed is printed literally (course_llm/cli_output.py):
stored values and paths are never read as Rich markup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from course_llm.cli_output import (
    calls_table,
    chains_table,
    fail,
    out,
    print_table,
    progress,
    succeeded,
    summary_table,
)
from course_llm.errors import CourseLLMError
from course_llm.recording.log_masking import install_log_masking
from course_llm.recording.secrets import register_secrets, secret_values_from
from course_llm.routing.compiler import compile_proxy_config, render_proxy_config
from course_llm.routing.registry import Registry, load_registry
from course_llm.settings import Settings, is_packaged_registry, sqlite_file

app = typer.Typer(help="Route LLM calls by task and strategy, and see what they cost.", no_args_is_help=True)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

RegistryOption = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="registry YAML (default: $COURSE_LLM_REGISTRY_PATH, else config/models.yaml when the "
        "working directory has one, else the registry shipped with course_llm)",
    ),
]


@app.callback()
def _start() -> None:
    # Every command: secrets (master key, database password) are masked in all log lines.
    install_log_masking()
    with suppress(ValidationError):  # a bad setting is reported by the command that reads it
        register_secrets(secret_values_from(Settings()))


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Turn course_llm errors (and `extra` kinds) into one line on stderr and exit code 1."""
    kinds: tuple[type[Exception], ...] = (CourseLLMError, *extra)
    try:
        yield
    except kinds as exc:
        fail(str(exc))


def _settings() -> Settings:
    """The settings from the environment; a bad value is one line naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = "LITELLM_MASTER_KEY" if field == "LITELLM_MASTER_KEY" else f"COURSE_LLM_{field.upper()}"
        fail(f"{variable}: {error['msg']}")


def _registry(path: Path | None) -> tuple[Registry, Path]:
    registry_path = path or _settings().registry_path
    return load_registry(registry_path), registry_path


@app.command()
def check(registry: RegistryOption = None) -> None:
    """Validate the registry and print its chains: action × strategy → models in order."""
    with user_errors():
        loaded, path = _registry(registry)
    out.print(chains_table(loaded, f"{path}: {len(loaded.models)} models, {len(loaded.actions)} actions"))
    shipped = " (the default shipped with course_llm)" if is_packaged_registry(path) else ""
    succeeded(f"registry OK: {path}{shipped}")


@app.command("compile")
def compile_command(
    registry: RegistryOption = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the proxy config")] = Path(
        "proxy_config.yaml"
    ),
) -> None:
    """Write the LiteLLM proxy config compiled from the registry."""
    settings = _settings()
    with user_errors():
        loaded, path = _registry(registry)
    config = compile_proxy_config(
        loaded,
        max_attempts=settings.max_attempts,
        fallback_strategy=settings.fallback_strategy,
        timeout_s=settings.request_timeout_s,
    )
    with user_errors(OSError):
        output.write_text(render_proxy_config(config, str(path)), encoding="utf-8")
    out.print(f"wrote {output} ({len(config['model_list'])} deployments)")


@app.command()
def serve(
    registry: RegistryOption = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 4000,
    mock: Annotated[
        bool, typer.Option("--mock", help="answer every model offline with canned responses")
    ] = False,
) -> None:
    """Run the LiteLLM proxy with course_llm routing, logging, usage API and dashboard."""
    from course_llm.proxy import serve as proxy

    settings = _settings()
    with user_errors(OSError):
        plan = proxy.prepare(settings, registry_path=registry, host=host, port=port, mock=mock)
    out.print(proxy.banner(plan), soft_wrap=True)
    proxy.run(plan)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the configured database ($COURSE_LLM_DATABASE_URL) to the latest schema."""
    from course_llm.db import redact_url, upgrade_database

    url = _settings().database_url
    with user_errors(OSError, ConnectionError):
        _run_db(lambda: upgrade_database(url), url)
    out.print(f"database {redact_url(url)} is up to date")


@db_app.command("prune")
def db_prune(
    before: Annotated[
        str, typer.Option(help="delete attempt rows older than this: a span back from now (90d) or ISO 8601")
    ],
) -> None:
    """Delete old attempt rows (whole UTC days); their hourly and daily aggregates stay, so
    summaries still cover the pruned range."""
    from course_llm.db.prune import prune
    from course_llm.reporting.usage import parse_time

    with user_errors():
        moment = parse_time("before", before)
    result = _query(lambda factory: prune(factory, moment))
    day = result.before.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.print(f"deleted {result.deleted:,} rows created before {day}; their aggregates are kept")


@app.command()
def lint(
    paths: Annotated[list[Path] | None, typer.Argument(help="files or directories (default: .)")] = None,
) -> None:
    """Warn about direct LLM SDK calls outside track_llm_call (`file:line: message`); always exits 0."""
    from course_llm.lint import lint_paths

    report = lint_paths(paths or [Path()])
    for finding in report.findings:
        out.print(str(finding))
    out.print(report.summary())


#: How SQLite and PostgreSQL say that llm_calls is missing (a database nobody migrated).
_WRAPPER = re.compile(r"^\((?:sqlalchemy|asyncpg|sqlite3)[\w.]*\) ")
_NO_TABLE = re.compile(r"no such table: llm_calls|relation \"llm_calls\" does not exist")


def _run_db(action: Callable[[], Any], url: str) -> Any:
    """Run a database action, reporting driver errors as one line (they carry no secrets we print)."""
    from course_llm.db import is_database_error, redact_url

    try:
        return action()
    except ImportError as exc:  # a URL whose driver is not installed (mysql://, …)
        fail(f"cannot open {redact_url(url)}: {exc} (course_llm writes to SQLite and PostgreSQL)")
    except Exception as exc:
        if is_database_error(exc):
            if _NO_TABLE.search(str(exc)):
                where = sqlite_file(url) or redact_url(url)
                fail(f"database {where} has no llm_calls table: run `course-llm db upgrade` first")
            # SQLAlchemy prefixes the driver's message with its own class name: keep the message.
            message = _WRAPPER.sub("", str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
            fail(f"database error: {message}")
        raise


def _require_database(url: str) -> None:
    """Fail with one line when `url` is an SQLite file that does not exist: opening it would
    create an empty one, and the reporting commands only read."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        fail(f"no database at {path.absolute()}: run `course-llm serve` or `course-llm db upgrade` first")


# --- usage reports: calls, usage, export ---------------------------------------------------------
# The same filters as the HTTP API (docs/architecture.md, "Usage reporting"); values are parsed by
# course_llm.reporting.usage, so both reject the same input with the same message.

SinceOption = Annotated[str | None, typer.Option(help="from this time on: ISO 8601 (naive = UTC) or 24h, 7d")]
UntilOption = Annotated[str | None, typer.Option(help="before this time: ISO 8601 or a span back from now")]
ActionOption = Annotated[str | None, typer.Option(help="only this action")]
StrategyOption = Annotated[str | None, typer.Option(help="only this requested strategy")]
ServedOption = Annotated[str | None, typer.Option("--served-strategy", help="only this served strategy")]
ProviderOption = Annotated[str | None, typer.Option(help="only this provider")]
ModelOption = Annotated[str | None, typer.Option("--model-id", "--model", help="only this registry model id")]
StatusOption = Annotated[str | None, typer.Option(help="success, error or cached (answered from the cache)")]
TenantOption = Annotated[str | None, typer.Option("--tenant-id", "--tenant", help="only this tenant id")]
OperationOption = Annotated[str | None, typer.Option(help="only this operation")]
RequestOption = Annotated[
    str | None,
    typer.Option(
        "--request-id", help="only this request's attempts (its full id, or a unique prefix of 8+ characters)"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON (the HTTP API's shape)")]
GROUP_BY_HELP = (
    "comma-separated keys: action, strategy, served_strategy, provider, model_id, tenant_id, operation, "
    "end_user, error_class, hour, day; blank for totals only"
)


#: Option names that differ from the filter names they set (`--model` sets model_id, …).
_OPTION_TO_FILTER = {"model": "model_id", "tenant": "tenant_id"}


def _filters(options: dict[str, Any]) -> Any:
    """The UsageFilters named by a command's filter options (its `locals()`)."""
    from course_llm.reporting.usage import FILTER_NAMES, filters_from

    raw = {_OPTION_TO_FILTER.get(name, name): value for name, value in options.items()}
    with user_errors():
        return filters_from({name: raw.get(name) for name in FILTER_NAMES})


def _query(run: Callable[[Any], Any]) -> Any:
    """`await run(session_factory)` on the configured database, then close it. Database errors, and
    course_llm errors the query raises (an ambiguous request id prefix, …), print one line."""
    import asyncio

    from course_llm.db import create_session_factory, dispose_session_factory, redact_url

    url = _settings().database_url
    _require_database(url)

    async def main() -> Any:
        factory = create_session_factory(url)
        try:
            return await run(factory)
        finally:
            await dispose_session_factory(factory)

    try:
        with user_errors():
            return _run_db(lambda: asyncio.run(main()), url)
    except OSError as exc:  # asyncpg reports a refused connection as a bare OSError
        fail(f"cannot reach the database {redact_url(url)}: {exc}")


def _print_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


@app.command()
def calls(
    since: SinceOption = None,
    until: UntilOption = None,
    action: ActionOption = None,
    strategy: StrategyOption = None,
    served_strategy: ServedOption = None,
    provider: ProviderOption = None,
    model: ModelOption = None,
    status: StatusOption = None,
    tenant: TenantOption = None,
    operation: OperationOption = None,
    request_id: RequestOption = None,
    page: Annotated[int | None, typer.Option(help="page number, from 1 (counts every match)")] = None,
    page_size: Annotated[int, typer.Option(help="rows per page (1-1000)")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="continue after this next_cursor ('' = newest rows; no count)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Recorded LLM attempts, newest first, one page at a time (by page number or by cursor)."""
    from course_llm.db.usage import list_calls, list_calls_after
    from course_llm.errors import UsageQueryError
    from course_llm.reporting.paging import parse_cursor
    from course_llm.reporting.usage import parse_page

    filters = _filters(locals())
    with user_errors():
        if cursor is not None and page is not None:
            raise UsageQueryError("cursor", "give --page or --cursor, not both")
        number, page_size = parse_page(page, page_size)
        after = parse_cursor(cursor) if cursor is not None else None
    if cursor is not None:
        result = _query(lambda factory: list_calls_after(factory, filters, after, page_size))
    else:
        result = _query(lambda factory: list_calls(factory, filters, number, page_size))
    if as_json:
        _print_json(result.as_dict())
        return
    print_table(calls_table(result.data))
    if result.total == 0:
        out.print("no calls match")
    elif result.total is not None:
        out.print(f"page {result.page} of {result.total_pages} · {result.total} calls")
    if result.next_cursor is not None:
        out.print(f"next: --cursor {result.next_cursor}")


@app.command()
def usage(
    group_by: Annotated[str, typer.Option(help=GROUP_BY_HELP)] = "action",
    since: SinceOption = None,
    until: UntilOption = None,
    action: ActionOption = None,
    strategy: StrategyOption = None,
    served_strategy: ServedOption = None,
    provider: ProviderOption = None,
    model: ModelOption = None,
    status: StatusOption = None,
    tenant: TenantOption = None,
    operation: OperationOption = None,
    request_id: RequestOption = None,
    as_json: JsonOption = False,
) -> None:
    """Calls, failures, tokens, cost, p50/p95 latency and fallback rate, per group and in total."""
    from course_llm.db.usage import summarize
    from course_llm.reporting.usage import parse_group_by

    filters = _filters(locals())
    with user_errors():
        keys = parse_group_by(group_by)
    result = _query(lambda factory: summarize(factory, filters, keys))
    if as_json:
        _print_json(result.as_dict())
        return
    print_table(summary_table(result.group_by, result.groups, result.totals))


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="file to write")],
    export_format: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "csv",
    since: SinceOption = None,
    until: UntilOption = None,
    action: ActionOption = None,
    strategy: StrategyOption = None,
    served_strategy: ServedOption = None,
    provider: ProviderOption = None,
    model: ModelOption = None,
    status: StatusOption = None,
    tenant: TenantOption = None,
    operation: OperationOption = None,
    request_id: RequestOption = None,
) -> None:
    """Write every matching call to FILE (oldest first), streaming: any size in constant memory."""
    from course_llm.db.usage import count_matching, iter_calls
    from course_llm.reporting.usage import parse_export_format, write_export

    filters = _filters(locals())
    with user_errors():
        fmt = parse_export_format(export_format)

    async def run(factory: Any) -> int:
        total = await count_matching(factory, filters)  # the database answered: errors now are the file's
        try:
            with (
                progress(f"exporting to {output}", total) as advance,
                output.open("w", encoding="utf-8", newline="") as handle,
            ):
                return await write_export(iter_calls(factory, filters), fmt, handle, advance)
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")

    written = _query(run)
    out.print(f"wrote {written} calls to {output} ({fmt})")


def main() -> None:  # pragma: no cover - console script entry
    app()
