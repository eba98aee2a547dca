"""The `course-llm` command line. Commands parse options, call the library and print.

User mistakes (a bad registry, an unknown filter, an unreachable database) print one line on
stderr and exit 1; no tracebacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from course_llm.compiler import compile_proxy_config, render_proxy_config
from course_llm.errors import CourseLLMError
from course_llm.registry import Registry, load_registry
from course_llm.settings import Settings

app = typer.Typer(help="Route LLM calls by task and strategy, and see what they cost.", no_args_is_help=True)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)

RegistryOption = Annotated[
    Path | None,
    typer.Option(
        "--registry", help="registry YAML (default: $COURSE_LLM_REGISTRY_PATH or config/models.yaml)"
    ),
]


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Turn course_llm errors (and `extra` kinds) into one line on stderr and exit code 1."""
    kinds: tuple[type[Exception], ...] = (CourseLLMError, *extra)
    try:
        yield
    except kinds as exc:
        fail(str(exc))


def _registry(path: Path | None) -> tuple[Registry, Path]:
    registry_path = path or Settings().registry_path
    return load_registry(registry_path), registry_path


@app.command()
def check(registry: RegistryOption = None) -> None:
    """Validate the registry and print its chains: action × strategy → models in order."""
    with user_errors():
        loaded, path = _registry(registry)
    table = Table(title=f"{path}: {len(loaded.models)} models, {len(loaded.actions)} actions")
    table.add_column("action")
    table.add_column("strategy")
    table.add_column("chain (tried in order)")
    for action, strategy, chain in loaded.chains():
        models = [f"{m} [dim]({loaded.models[m].provider})[/]" for m in chain]
        table.add_row(action, strategy, " → ".join(models))
    out.print(table)
    out.print("[green]registry OK[/]")


@app.command("compile")
def compile_command(
    registry: RegistryOption = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the proxy config")] = Path(
        "proxy_config.yaml"
    ),
) -> None:
    """Write the LiteLLM proxy config compiled from the registry."""
    settings = Settings()
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


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the configured database ($COURSE_LLM_DATABASE_URL) to the latest schema."""
    from course_llm.db import redact_url, upgrade_database

    url = Settings().database_url
    with user_errors(OSError, ConnectionError):
        _run_db(lambda: upgrade_database(url))
    out.print(f"database {redact_url(url)} is up to date")


def _run_db(action: Callable[[], Any]) -> Any:
    """Run a database action, reporting driver errors as one line (they carry no secrets we print)."""
    from course_llm.db import is_database_error

    try:
        return action()
    except Exception as exc:
        if is_database_error(exc):
            fail(f"database error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        raise


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
