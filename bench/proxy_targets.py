"""The four things bench/bench_proxy.py compares, started against one fake upstream, and their CPU.

Targets, all answering ``POST /v1/chat/completions`` with the same master key:

- ``direct``: the fake upstream itself (tests/fake_upstream.py, its own process): the floor.
- ``litellm``: plain ``litellm --config`` on the compiled config with ``callbacks`` emptied, the
  only difference from the next one. The anchor every ratio is taken against.
- ``litellm+callback``: plain ``litellm --config`` on the compiled config as is, so course_llm's
  logger records every attempt (journal and database included).
- ``serve``: ``course-llm serve`` on the same registry, same database.

CPU is read from /proc/<pid>/stat: utime + stime of the process and of every live descendant,
plus cutime + cstime (descendants already waited for), in seconds. A proxy that forks a helper is
charged for it; nothing else on the machine is.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from course_llm.routing.compiler import compile_proxy_config, render_proxy_config
from course_llm.routing.registry import parse_registry
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import ProxyProcess, free_port, litellm_argv, serve_argv

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench"
POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
#: The anchor: every ratio is against plain LiteLLM with no callback.
ANCHOR = "litellm"
TICKS = os.sysconf("SC_CLK_TCK")


def registry_data(upstream: str) -> dict[str, Any]:
    """Two models on the fake: `bench-ok` answers, `bench-fail-500` always fails (fallback path)."""
    model = {
        "provider": "openai",
        "api_base": upstream,
        "api_key_env": "BENCH_KEY",
        "max_context": 8000,
        "cost_per_1k": {"input": 0.001, "output": 0.002},
    }
    return {
        "models": {"ok": {**model, "model": "bench-ok"}, "flaky": {**model, "model": "bench-fail-500"}},
        "actions": {"plain": {}, "fallback": {}},
        "routing": {"plain": {"default": ["ok"]}, "fallback": {"default": ["flaky", "ok"]}},
    }


ProcTable = tuple[dict[int, list[int]], dict[int, float]]


def proc_table() -> ProcTable:
    """Every process's children and CPU seconds (own + waited-for children), from one /proc walk."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # Fields after the command name (which may hold spaces) start at state, field 3.
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
        children.setdefault(ppid, []).append(int(entry))
        times[int(entry)] = (utime + stime + cutime + cstime) / TICKS
    return children, times


def cpu_seconds(pid: int, table: ProcTable | None = None) -> float:
    """CPU time of `pid` and its descendants (see the module docstring); 0 once it is gone."""
    children, times = table or proc_table()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += children.get(current, [])
    return total


def cpu_of(targets: list[Target]) -> dict[str, float]:
    """Each target's CPU seconds, read at one moment."""
    table = proc_table()
    return {t.name: cpu_seconds(t.pid, table) for t in targets}


@dataclass
class Target:
    name: str
    base_url: str
    pid: int
    proxy: ProxyProcess | None = None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


class Upstream:
    """The fake upstream as its own process (so its CPU is not the benchmark client's)."""

    def __init__(self, delay_ms: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "tests/fake_upstream.py", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if not line or line[0] != "READY":
            self.process.kill()
            raise RuntimeError(f"the fake upstream did not start: {line}")
        self.port = int(line[1])
        control = FakeUpstream.attach(self.port)
        control.set_behaviour("*", delay_ms=delay_ms)
        control.stop()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def database_url(choice: str, tmp: Path, url: str | None = None) -> str:
    if url:
        return url
    return POSTGRES_URL if choice == "postgres" else f"sqlite+aiosqlite:///{tmp}/bench.db"


async def count_rows(url: str) -> int | None:
    """Rows in llm_calls, or None when the table is not there (yet)."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        if not Path(path).exists():
            return None
        with contextlib.closing(sqlite3.connect(path)) as db:
            try:
                return int(db.execute("select count(*) from llm_calls").fetchone()[0])
            except sqlite3.OperationalError:
                return None
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await connection.fetchval("select count(*) from llm_calls"))
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await connection.close()


def start_targets(tmp: Path, upstream: Upstream, db_url: str) -> list[Target]:
    """Start the three proxies (serve first: it migrates the database the callback then finds ready)."""
    data = registry_data(f"{upstream.root_url}/v1")
    registry = tmp / "bench.yaml"
    registry.write_text(yaml.safe_dump(data))
    config = compile_proxy_config(parse_registry(data))
    with_callback = tmp / "with_callback.yaml"
    with_callback.write_text(render_proxy_config(config, str(registry)))
    config["litellm_settings"]["callbacks"] = []  # the only difference: no course_llm logger
    without_callback = tmp / "without_callback.yaml"
    without_callback.write_text(render_proxy_config(config, str(registry)))
    base_env = {"LITELLM_MASTER_KEY": KEY, "BENCH_KEY": "x", "COURSE_LLM_DATABASE_URL": db_url}
    base_env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    plans: list[tuple[str, Callable[[int], list[str]]]] = [
        ("serve", lambda port: serve_argv("--registry", str(registry), "--port", str(port))),
        ("litellm+callback", lambda port: litellm_argv(with_callback, port)),
        (ANCHOR, lambda port: litellm_argv(without_callback, port)),
    ]
    targets = [Target("direct", upstream.root_url, upstream.process.pid)]
    try:
        for name, argv in plans:
            port = free_port()
            env = base_env | {"COURSE_LLM_SPOOL_PATH": str(tmp / f"{name}.journal")}
            log = tmp / f"{name.replace('+', '_')}.log"
            proxy = ProxyProcess(argv(port), env, port, log).start()
            assert proxy.process is not None
            targets.append(Target(name, proxy.base_url, proxy.process.pid, proxy))
    except BaseException:
        stop_targets(targets)
        raise
    order = ["direct", ANCHOR, "litellm+callback", "serve"]
    return sorted(targets, key=lambda t: order.index(t.name))


def stop_targets(targets: list[Target]) -> None:
    for target in targets:
        if target.proxy is not None:
            target.proxy.stop()


def idle_cpu_ms_per_s(targets: list[Target], seconds: float) -> dict[str, float]:
    """CPU each target burns doing nothing (background tasks, the writer's timer), in ms per second."""
    before = cpu_of(targets)
    time.sleep(seconds)
    after = cpu_of(targets)
    return {name: (after[name] - before[name]) * 1000 / seconds for name in before}
