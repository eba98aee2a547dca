"""The `course-llm` command line. Commands parse options, call the library and print.

User mistakes (a bad registry, an unknown filter, an unreachable or missing database) print one
line on stderr and exit 1; no tracebacks. Every command works from any directory: without a
`config/models.yaml` there, the registry shipped with the package is used (`check` says which),
and the reporting commands never create a database: they only read one that `course-llm serve`
or `course-llm db upgrade` made. What is printed is printed literally (course_llm/cli_output.py):
stored values and paths are never read as Rich markup.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.text import Text

from course_llm.cli_output import (
    budgets_table,
    calls_table,
    chains_table,
    fail,
    out,
    print_table,
    progress,
    settings_or_fail,
    succeeded,
    summary_table,
    user_errors,
)
from course_llm.cli_reports import (
    GROUP_BY_HELP,
    ActionOption,
    JsonOption,
    ModelOption,
    OperationOption,
    ProviderOption,
    RequestOption,
    ServedOption,
    SinceOption,
    StatusOption,
    StrategyOption,
    TenantOption,
    UntilOption,
    filters_of,
    print_json,
    query,
    run_db,
)
from course_llm.recording.log_masking import install_log_masking
from course_llm.recording.secrets import register_secrets, secret_values_from
from course_llm.routing.compiler import compile_proxy_config, render_proxy_config
from course_llm.routing.registry import Registry, load_registry
from course_llm.settings import Settings, is_packaged_registry

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


def _registry(path: Path | None) -> tuple[Registry, Path]:
    registry_path = path or settings_or_fail().registry_path
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
    settings = settings_or_fail()
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
    port: Annotated[int, typer.Option(help="port to listen on", min=1, max=65535)] = 4000,
    mock: Annotated[
        bool, typer.Option("--mock", help="answer every model offline with canned responses")
    ] = False,
    workers: Annotated[int, typer.Option(help="worker processes on the one port (about one per core)")] = 1,
) -> None:
    """Run the LiteLLM proxy with course_llm routing, logging, usage API and dashboard."""
    from course_llm.proxy import serve as proxy

    settings = settings_or_fail()
    with user_errors(OSError):
        plan = proxy.prepare(
            settings, registry_path=registry, host=host, port=port, mock=mock, workers=workers
        )
    out.print(proxy.banner(plan), soft_wrap=True)
    if plan.workers == 1:
        proxy.run(plan)
        return
    from course_llm.proxy.workers import run_workers

    with user_errors(OSError):
        run_workers(plan)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the configured database ($COURSE_LLM_DATABASE_URL) to the latest schema."""
    from course_llm.db import redact_url, upgrade_database

    url = settings_or_fail().database_url
    with user_errors(OSError, ConnectionError):
        run_db(lambda: upgrade_database(url), url)
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
    result = query(lambda factory: prune(factory, moment))
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

    filters = filters_of(locals())
    with user_errors():
        if cursor is not None and page is not None:
            raise UsageQueryError("cursor", "give --page or --cursor, not both")
        number, page_size = parse_page(page, page_size)
        after = parse_cursor(cursor) if cursor is not None else None
    if cursor is not None:
        result = query(lambda factory: list_calls_after(factory, filters, after, page_size))
    else:
        result = query(lambda factory: list_calls(factory, filters, number, page_size))
    if as_json:
        print_json(result.as_dict())
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

    filters = filters_of(locals())
    with user_errors():
        keys = parse_group_by(group_by)
    result = query(lambda factory: summarize(factory, filters, keys))
    if as_json:
        print_json(result.as_dict())
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

    filters = filters_of(locals())
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

    written = query(run)
    out.print(f"wrote {written} calls to {output} ({fmt})")


@app.command()
def budgets(registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Each budget of the registry: its period's spend (what the rows say), what remains, its
    state (ok, downgraded, exceeded) and when it resets."""
    from course_llm.control.controls import read_budget_statuses, status_dict
    from course_llm.db.spend import DatabaseSpend

    with user_errors():
        loaded, path = _registry(registry)
    statuses: list[Any] = []
    if loaded.budgets:
        statuses = query(lambda factory: read_budget_statuses(loaded.budgets, DatabaseSpend(factory)))
    if as_json:
        print_json({"budgets": [status_dict(status) for status in statuses]})
    elif not statuses:
        out.print(Text(f"no budgets in {path}"))
    else:
        print_table(budgets_table(statuses))


def main() -> None:  # pragma: no cover - console script entry
    app()
