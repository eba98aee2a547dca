"""Benchmark how long replaying a killed process's journal holds up the event loop.

    .venv/bin/python bench/bench_stalls.py [--rows 200000] [--quick]

A probe task ticks every 10 ms on the same loop and records the longest gap beyond its tick: the
longest stall every other task (an LLM call the proxy is serving) would have suffered. Two replays
of the same journal are measured in the same run, on SQLite and on PostgreSQL (a database created
and dropped for the run, as bench_logging.py does):
- baseline: the old approach, inline here: read the whole file, decode every line, then insert
  in batches of 2,000;
- replay: a RecordWriter started on the journal prefix, replaying the orphan (replay.py).
Targets (issue 11): no stall over 50 ms; replay rows/s at least the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # type: ignore[import-untyped]

from bench.bench_logging import rows
from course_llm.db import (
    SessionFactory,
    count_calls,
    create_session_factory,
    dispose_session_factory,
    insert_records,
    upgrade_database,
)
from course_llm.recording.rejects import decode, encode
from course_llm.recording.writer import RecordWriter

PG_ADMIN = os.environ.get("COURSE_LLM_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
TICK_S = 0.01


class StallProbe:
    """A task that ticks every 10 ms and keeps the longest lateness of a tick; and, to tell the
    replay's own work from the interpreter's, the longest full (generation 2) garbage collection."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.over_50ms = 0
        self.longest_gc = 0.0
        self._gc_start = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late = time.perf_counter() - before - TICK_S
            self.longest = max(self.longest, late)
            self.over_50ms += late > 0.05

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.longest_gc = max(self.longest_gc, time.perf_counter() - self._gc_start)

    async def __aenter__(self) -> StallProbe:
        gc.callbacks.append(self._gc)
        self._task = asyncio.get_running_loop().create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        gc.callbacks.remove(self._gc)
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def write_orphan(prefix: Path, n: int) -> None:
    """The journal segment a SIGKILLed writer leaves: n rows, no checkpoint, no lock held."""
    with prefix.with_name(prefix.name + ".killed.journal").open("wb") as out:
        for start in range(0, n, 10_000):
            out.write(b"".join(encode(record) for record in rows(min(10_000, n - start))))


async def old_replay(factory: SessionFactory, prefix: Path) -> int:
    """The old approach: the whole file read and decoded at once, then inserted in batches."""
    path = prefix.with_name(prefix.name + ".killed.journal")
    records = [r for r in (decode(line) for line in path.read_bytes().split(b"\n") if line) if r]
    for start in range(0, len(records), 2000):
        await insert_records(factory, records[start : start + 2000])
    path.unlink()
    return len(records)


async def new_replay(factory: SessionFactory, prefix: Path) -> int:
    writer = RecordWriter(factory, spool_path=prefix)
    await writer.aclose()
    return writer.rows_replayed


async def measure(
    url: str, n: int, replay: Callable[[SessionFactory, Path], Awaitable[int]]
) -> tuple[StallProbe, float]:
    """The stall probe and rows/s of one replay of an n-row orphaned journal into a fresh table."""
    await asyncio.to_thread(upgrade_database, url)
    factory = create_session_factory(url)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prefix = Path(tmp) / "journal"
            await asyncio.to_thread(write_orphan, prefix, n)
            async with StallProbe() as probe:
                start = time.perf_counter()
                replayed = await replay(factory, prefix)
                elapsed = time.perf_counter() - start
        written = await count_calls(factory)
        assert replayed == n and written == n, (replayed, written)
    finally:
        await dispose_session_factory(factory)
    return probe, n / elapsed


async def compare(name: str, url_for: Callable[[str], Awaitable[str]], n: int) -> None:
    for label, replay in (("baseline (read all)", old_replay), ("replay.py", new_replay)):
        url = await url_for(label)
        probe, rate = await measure(url, n, replay)
        print(
            f"   {name:<11} {label:<20} longest stall {probe.longest * 1000:7.1f} ms"
            f"   stalls > 50 ms {probe.over_50ms:4}   {rate:8,.0f} rows/s"
            f"   (longest full GC {probe.longest_gc * 1000:5.1f} ms)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the orphaned journal")
    parser.add_argument("--quick", action="store_true", help="20,000 rows (a smoke run)")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after the imports, as a server may at start: full collections then skip them",
    )
    args = parser.parse_args()
    if args.gc_freeze:
        gc.freeze()
    n = 20_000 if args.quick else args.rows
    frozen = ", gc.freeze()" if args.gc_freeze else ""
    python = sys.version.split()[0]
    print(f"course_llm replay stalls  ({os.cpu_count()} cores, Python {python}, {n:,} rows{frozen})")
    print("   target: no stall over 50 ms; replay rows/s >= baseline")
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(100))

        async def sqlite_url(_: str) -> str:
            return f"sqlite+aiosqlite:///{tmp}/replay{next(counter)}.db"

        await compare("SQLite", sqlite_url, n)
    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    except OSError as exc:
        print(f"   PostgreSQL  skipped: not reachable ({exc})")
        return
    names: list[str] = []

    async def postgres_url(_: str) -> str:
        name = f"course_llm_stalls_{os.getpid()}_{len(names)}"
        names.append(name)
        await admin.execute(f'CREATE DATABASE "{name}"')
        return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"

    try:
        await compare("PostgreSQL", postgres_url, n)
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
