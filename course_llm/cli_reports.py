"""What the reporting commands share: their filter options, reading the configured database, JSON.

`course-llm calls`, `usage`, `export` and `budgets` (course_llm/cli.py) only read a database that
`course-llm serve` or `course-llm db upgrade` made: `query` refuses to create one, and turns
driver errors into one line, like every user mistake of the command line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import typer

from course_llm.cli_output import fail, settings_or_fail, user_errors
from course_llm.settings import sqlite_file

_WRAPPER = re.compile(r"^\((?:sqlalchemy|asyncpg|sqlite3)[\w.]*\) ")
_NO_TABLE = re.compile(r"no such table: llm_calls|relation \"llm_calls\" does not exist")


def run_db(action: Callable[[], Any], url: str) -> Any:
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


def require_database(url: str) -> None:
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


def filters_of(options: dict[str, Any]) -> Any:
    """The UsageFilters named by a command's filter options (its `locals()`)."""
    from course_llm.reporting.usage import FILTER_NAMES, filters_from

    raw = {_OPTION_TO_FILTER.get(name, name): value for name, value in options.items()}
    with user_errors():
        return filters_from({name: raw.get(name) for name in FILTER_NAMES})


def query(run: Callable[[Any], Any]) -> Any:
    """`await run(session_factory)` on the configured database, then close it. Database errors, and
    course_llm errors the query raises (an ambiguous request id prefix, …), print one line."""
    import asyncio

    from course_llm.db import create_session_factory, dispose_session_factory, redact_url

    url = settings_or_fail().database_url
    require_database(url)

    async def main() -> Any:
        factory = create_session_factory(url)
        try:
            return await run(factory)
        finally:
            await dispose_session_factory(factory)

    try:
        with user_errors():
            return run_db(lambda: asyncio.run(main()), url)
    except OSError as exc:  # asyncpg reports a refused connection as a bare OSError
        fail(f"cannot reach the database {redact_url(url)}: {exc}")


def print_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
