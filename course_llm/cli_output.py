"""What the `course-llm` commands print: the consoles, the one-line error, and the tables.

Every value printed here may come from a proxy client (a tenant id, an operation, an error
message) or from the operator's shell (a path), so none of it is read as Rich markup: both
consoles have markup, emoji codes and highlighting off, values go in as `rich.text.Text`, and our
own styling is attached as a style, never spelled as `[bold]…[/]` around a value. A tenant id of
`[/bold]` prints as those characters (it used to raise MarkupError), and
`[link=http://evil]click[/link]` cannot turn into a disguised link.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from course_llm.errors import CourseLLMError
from course_llm.recording.secrets import mask_configured
from course_llm.routing.registry import Registry
from course_llm.settings import Settings

__all__ = [
    "calls_table",
    "chains_table",
    "err",
    "fail",
    "out",
    "plain_console",
    "print_table",
    "progress",
    "succeeded",
    "summary_table",
]


def plain_console(**options: Any) -> Console:
    """A console that prints strings as they are: no markup, no `:emoji:` codes, no highlighting."""
    return Console(markup=False, emoji=False, highlight=False, **options)


# Lines are never wrapped at the terminal width: a path or a cursor cut in two cannot be pasted.
out = plain_console(soft_wrap=True)
err = plain_console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print `error: <message>` on stderr, literally and with configured secrets masked; exit 1."""
    err.print(Text.assemble(("error:", "bold red"), " ", mask_configured(message)), soft_wrap=True)
    raise typer.Exit(1)


def succeeded(message: str) -> None:
    """Print `message` in green."""
    out.print(Text(message, style="green"))


def print_table(table: Table) -> None:
    """Print `table`; into a file or a pipe at its natural width, since no terminal limits it there."""
    from rich.measure import Measurement

    if out.is_terminal:
        out.print(table)
        return
    width = Measurement.get(out, out.options.update_width(1000), table).maximum
    plain_console(width=max(width, out.width)).print(table)


def chains_table(registry: Registry, title: str) -> Table:
    """`course-llm check`: action × strategy → models in the order they are tried."""
    table = Table(title=Text(title))
    table.add_column("action")
    table.add_column("strategy")
    table.add_column("chain (tried in order)")
    for action, strategy, chain in registry.chains():
        models = Text(" → ").join(
            Text.assemble(model, (f" ({registry.models[model].provider})", "dim")) for model in chain
        )
        table.add_row(Text(action), Text(strategy), models)
    return table


def _text(value: Any) -> Text:
    return Text("-" if value is None else str(value))


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def calls_table(rows: list[dict[str, Any]]) -> Table:
    """`course-llm calls`: one line per attempt."""
    table = Table()
    table.add_column("time (UTC)")
    table.add_column("request", no_wrap=True, overflow="ignore")  # an id cut or folded is no id
    for name in ["#", "action / strategy → served", "provider / model"]:
        table.add_column(name)
    for name in ["tokens in/out", "latency", "cost $"]:
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("status")
    for row in rows:
        strategy = str(row["strategy"])
        if row["served_strategy"] != row["strategy"]:
            strategy = f"{strategy} → {row['served_strategy']}"
        status = Text("ok", style="green")
        if not row["success"]:
            status = Text(f"{row['status_code'] or '-'} {row['error_class'] or 'error'}", style="red")
        table.add_row(
            _text(str(row["created_at"])[:19].replace("T", " ")),
            # In full, as the dashboard and the JSON show it: any unique prefix of 8 or more
            # characters of what is printed here is accepted by `--request-id`.
            _text(row["request_id"]),
            _text(row["attempt"]),
            Text(f"{row['action']} / {strategy}"),
            Text(f"{row['provider']} / {row['model_id']}"),
            Text(f"{_number(row['tokens_in'])}/{_number(row['tokens_out'])}"),
            Text("-" if row["latency_ms"] is None else f"{row['latency_ms']:.0f} ms"),
            Text("-" if row["cost_usd"] is None else f"{row['cost_usd']:.6f}"),
            status,
        )
    return table


def summary_table(keys: list[str], groups: list[dict[str, Any]], totals: dict[str, Any]) -> Table:
    """`course-llm usage`: the figures per group, then the totals."""
    table = Table()
    for key in keys:
        table.add_column(key)
    for name in ["calls", "failures", "error %", "tokens in", "tokens out", "cost $", "p50 ms", "p95 ms"]:
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("fallback %", justify="right", overflow="fold")

    def figures(group: dict[str, Any]) -> list[Text]:
        return [
            Text(text)
            for text in (
                _number(group["calls"]),
                _number(group["failures"]),
                f"{100 * group['error_rate']:.1f}",
                _number(group["tokens_in"]),
                _number(group["tokens_out"]),
                f"{group['cost_usd']:.6f}",
                "-" if group["p50_latency_ms"] is None else f"{group['p50_latency_ms']:.0f}",
                "-" if group["p95_latency_ms"] is None else f"{group['p95_latency_ms']:.0f}",
                f"{100 * group['fallback_rate']:.1f}",
            )
        ]

    for index, group in enumerate(groups):
        labels = [_text(group[key]) for key in keys]
        table.add_row(*labels, *figures(group), end_section=index == len(groups) - 1)
    total_labels = [Text("total"), *(Text("") for _ in keys[1:])] if keys else []
    table.add_row(*total_labels, *figures(totals), style="bold")
    return table


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient progress bar on stderr; yields the function that advances it by one."""
    from rich.markup import escape
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        # Progress renders a task's description as markup: escape the path in it.
        task = bar.add_task(escape(description), total=total)
        yield lambda: bar.advance(task)


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Turn course_llm errors (and `extra` kinds) into one line on stderr and exit code 1."""
    kinds: tuple[type[Exception], ...] = (CourseLLMError, *extra)
    try:
        yield
    except kinds as exc:
        fail(str(exc))


def settings_or_fail() -> Settings:
    """The settings from the environment; a bad value is one line naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = "LITELLM_MASTER_KEY" if field == "LITELLM_MASTER_KEY" else f"COURSE_LLM_{field.upper()}"
        fail(f"{variable}: {error['msg']}")


def budgets_table(statuses: list[Any]) -> Table:
    """`course-llm budgets`: one line per budget of the registry."""
    table = Table()
    table.add_column("budget")
    table.add_column("period")
    for name in ["spent $", "limit $", "remaining $"]:
        table.add_column(name, justify="right")
    table.add_column("state")
    table.add_column("resets (UTC)")
    for status in statuses:
        table.add_row(
            Text(status.name),
            status.period,
            f"{status.spent_usd:.6f}",
            f"{status.limit_usd:.6f}",
            f"{status.remaining_usd:.6f}",
            status.state,
            status.resets_at.strftime("%Y-%m-%d %H:%M"),
        )
    return table
