"""Benchmark the logging path: hook cost, writer throughput, and what logging adds to a call.

    make bench            (or: .venv/bin/python bench/bench_logging.py [--quick])

Prints three figures, each against a baseline measured in the same run:
1. hook cost per event (µs, p50/p99): the success and failure hooks building a row, cleaning it
   and appending it to the journal (the writer's submit); baseline: an empty hook call. The
   cleaning and the journal write are also timed alone.
2. writer throughput (rows/s) into SQLite and PostgreSQL, from submit() to flushed; on PostgreSQL
   also the db layer alone (ready rows, batches of 5,000), the old path (row INSERTs) against
   the writer's (`BatchWriter`: binary COPY through a staging table) in the same run; and the CPU
   one small batch (4 rows: a quiet proxy's quarter second of traffic) costs the process, a session per
   batch (`insert_records`) against the writer's held connection (`BatchWriter`).
3. facade latency with logging on versus off against a local fake upstream (p50 ratio).
Targets on the 2-core reference machine: hook p50 < 50 µs; >= 100,000 rows/s into PostgreSQL
(issue 11); latency ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # type: ignore[import-untyped]

from course_llm.db import (
    BatchWriter,
    count_calls,
    create_session_factory,
    dispose_session_factory,
    upgrade_database,
)
from course_llm.db.copy import UNNEST_MAX_ROWS
from course_llm.db.writes import insert_records, insert_rows
from course_llm.recording.callback import CallLogger
from course_llm.recording.clean import clean_record
from course_llm.recording.journal import Journal
from course_llm.recording.records import CallRecord
from course_llm.recording.rejects import encode
from course_llm.recording.writer import RecordWriter
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import parse_registry
from tests.fake_upstream import FakeUpstream

PG_ADMIN = os.environ.get("COURSE_LLM_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
MODEL_INFO = {
    "id": "text_processing/default/bench-model",
    "course_llm_provider": "openai",
    "course_llm_cost_per_1k_input": 0.001,
    "course_llm_cost_per_1k_output": 0.002,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def attempt_request_data(i: int) -> dict[str, Any]:
    return {
        "model": "openai/bench-model",
        "metadata": {
            "original_model_group": "text_processing/quality",
            "model_group": "text_processing/default",
        },
        "model_info": MODEL_INFO,
        "litellm_trace_id": f"trace-f-{i}",
        "litellm_logging_obj": SimpleNamespace(model_call_details={"api_call_start_time": datetime.now()}),
    }


class Upstream503(Exception):
    status_code = 503


async def bench_hooks(n: int) -> None:
    print(f"\n1. hook cost per event ({n} events each; sink = RecordWriter.submit, database not touched)")
    with tempfile.TemporaryDirectory() as tmp:
        factory = create_session_factory(f"sqlite+aiosqlite:///{tmp}/hooks.db")  # never migrated or written
        writer = RecordWriter(
            factory,
            spool_path=Path(tmp) / "spool.jsonl",
            max_queue=n * 4,
            batch_size=n * 4,
            flush_interval_s=3600,
        )
        logger = CallLogger(writer.submit, source="proxy")

        async def empty(**_: Any) -> None:
            return None

        response = SimpleNamespace(
            usage=SimpleNamespace(prompt_tokens=1200, completion_tokens=300),
            _hidden_params={"custom_llm_provider": "openai"},
        )

        # LiteLLM builds each attempt's request data; build it before the clock starts.
        requests = [attempt_request_data(i) for i in range(2 * (n + 500))]

        async def success(i: int) -> None:
            # The success hook LiteLLM awaits on the request path (the background success event
            # only records what no path hook saw).
            await logger.async_post_call_success_deployment_hook(
                request_data=requests[i], response=response, call_type="acompletion"
            )

        async def failure(i: int) -> None:
            await logger.async_post_call_failure_deployment_hook(
                request_data=requests[n + 500 + i],
                exception=Upstream503("upstream 503"),
                call_type="acompletion",
            )

        async def baseline(i: int) -> None:
            await empty(kwargs=None)

        sample = rows(1)[0]
        journal = Journal(Path(tmp) / "append-only", fsync=False)

        async def clean_and_encode(i: int) -> None:
            encode(clean_record(sample))

        line = encode(sample)

        async def journal_append(i: int) -> None:
            journal.append(line)

        for name, fn in [
            ("empty hook (baseline)", baseline),
            ("success hook", success),
            ("failure hook", failure),
            ("  of which: clean+encode", clean_and_encode),
            ("  of which: journal write", journal_append),
        ]:
            samples = await _time_each(fn, n)
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            print(f"   {name:<26} p50 {p50:7.1f} µs   p99 {p99:7.1f} µs")
        writer._buffer.clear()  # the rows were only for timing; do not write them anywhere
        journal.close(all_written=True)
        await dispose_session_factory(factory)


async def _time_each(fn: Callable[[int], Awaitable[None]], n: int) -> list[float]:
    for i in range(min(n, 500)):  # warm-up
        await fn(i)
    samples = []
    for i in range(n):
        start = time.perf_counter_ns()
        await fn(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def rows(n: int) -> list[CallRecord]:
    return [
        CallRecord(
            request_id=f"req-{i // 3}",
            attempt=i % 3 + 1,
            action="text_processing",
            strategy="quality",
            served_strategy="default",
            provider="openai",
            model_id="gpt-4o-mini",
            success=i % 3 == 2,
            source="proxy",
            tokens_in=1200,
            tokens_out=300,
            latency_ms=850.0,
            cost_usd=0.00036,
            tenant_id="acme",
            metadata={"tags": {"course": "bio101"}},
        )
        for i in range(n)
    ]


async def db_layer_rate(url: str, n: int, held: bool, batch: int = 5000) -> float:
    """Rows/s of writing ready rows, one batch at a time: the writer's held connection
    (`BatchWriter`: binary COPY through the staging table) or the old row INSERTs."""
    await asyncio.to_thread(upgrade_database, url)
    factory = create_session_factory(url)
    writer = BatchWriter(factory)
    records = rows(n)

    async def write(chunk: list[CallRecord]) -> int:
        return await (writer.write(chunk) if held else insert_rows(factory, chunk))

    await write(rows(UNNEST_MAX_ROWS + 1))  # warm-up: connection, prepared statements, staging table
    start = time.perf_counter()
    for i in range(0, n, batch):
        await write(records[i : i + batch])
    elapsed = time.perf_counter() - start
    await writer.release()
    await dispose_session_factory(factory)
    return n / elapsed


async def small_batch_cpu(url: str, held: bool, batches: int = 1000, size: int = 4) -> float:
    """Process CPU (ms) per batch of `size` ready rows: a session per batch, or the held connection."""
    await asyncio.to_thread(upgrade_database, url)
    factory = create_session_factory(url)
    writer = BatchWriter(factory)
    records = rows(batches * size + 50 * size)

    async def write(chunk: list[CallRecord]) -> int:
        return await (writer.write(chunk) if held else insert_records(factory, chunk))

    for i in range(50):  # warm-up: connection, prepared statements, staging table
        await write(records[i * size : (i + 1) * size])
    start = time.process_time()
    for i in range(50, 50 + batches):
        await write(records[i * size : (i + 1) * size])
    cpu = time.process_time() - start
    await writer.release()
    await dispose_session_factory(factory)
    return cpu * 1000 / batches


async def throughput(url: str, n: int) -> float:
    await asyncio.to_thread(upgrade_database, url)
    factory = create_session_factory(url)
    with tempfile.TemporaryDirectory() as tmp:
        writer = RecordWriter(factory, spool_path=Path(tmp) / "spool.jsonl", max_queue=n, batch_size=2000)
        batch = rows(n)
        start = time.perf_counter()
        for record in batch:
            writer.submit(record)
        await writer.aclose()
        elapsed = time.perf_counter() - start
    written = await count_calls(factory)
    await dispose_session_factory(factory)
    assert written == n and writer.rows_spooled == 0, (written, writer.stats())
    return n / elapsed


async def replay_rate(url: str, n: int) -> float:
    """Rows/s at which a new writer writes the journal a killed process left (n rows)."""
    await asyncio.to_thread(upgrade_database, url)
    factory = create_session_factory(url)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "journal"
        dead = RecordWriter(factory, spool_path=prefix, max_queue=n, flush_interval_s=3600, batch_size=n + 1)
        for record in rows(n):
            dead.submit(record)
        if dead._task is not None:
            dead._task.cancel()
        dead._buffer.clear()
        dead._journal.close(all_written=False)  # as a SIGKILL leaves it: all rows after the checkpoint
        start = time.perf_counter()
        writer = RecordWriter(factory, spool_path=prefix, batch_size=2000)
        await writer.aclose()
        elapsed = time.perf_counter() - start
    replayed = writer.rows_replayed
    await dispose_session_factory(factory)
    assert replayed == n, writer.stats()
    return n / elapsed


async def bench_writer(n: int) -> None:
    print(f"\n2. writer throughput ({n} rows, submit → flushed; replay: a killed process's journal)")
    with tempfile.TemporaryDirectory() as tmp:
        rate = await throughput(f"sqlite+aiosqlite:///{tmp}/bench.db", n)
        replay = await replay_rate(f"sqlite+aiosqlite:///{tmp}/replay.db", n)
        print(f"   SQLite       {rate:10,.0f} rows/s   replay {replay:10,.0f} rows/s")
    name = f"course_llm_bench_{os.getpid()}"
    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    except OSError as exc:
        print(f"   PostgreSQL   skipped: not reachable ({exc})")
        return
    try:
        # A fresh database per measurement, so each path writes into an equally empty table.
        figures: dict[str, float] = {}
        for label, measure in [
            ("old", lambda url: db_layer_rate(url, n, held=False)),
            ("new", lambda url: db_layer_rate(url, n, held=True)),
            ("writer", lambda url: throughput(url, n)),
            ("replay", lambda url: replay_rate(url, n)),
            ("session4", lambda url: small_batch_cpu(url, held=False)),
            ("held4", lambda url: small_batch_cpu(url, held=True)),
        ]:
            await admin.execute(f'CREATE DATABASE "{name}_{label}"')
            figures[label] = await measure(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}_{label}")
        old, new = figures["old"], figures["new"]
        print(f"   PostgreSQL db layer, old: row INSERT   {old:10,.0f} rows/s   (batches of 5,000)")
        print(
            f"   PostgreSQL db layer, new: binary COPY  {new:10,.0f} rows/s   ({new / old:.1f}x the old path)"
        )
        writer, replay = figures["writer"], figures["replay"]
        print(f"   PostgreSQL   {writer:10,.0f} rows/s   replay {replay:10,.0f} rows/s   (target >= 100,000)")
        session4, held4 = figures["session4"], figures["held4"]
        print(
            f"   PostgreSQL, a 4-row batch: session per batch {session4:.3f} ms CPU, held connection "
            f"{held4:.3f} ms ({held4 / session4:.2f}x)"
        )
    finally:
        for label in ("old", "new", "writer", "replay", "session4", "held4"):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}_{label}" WITH (FORCE)')
        await admin.close()


async def bench_latency(n: int, delay_ms: int) -> None:
    print(f"\n3. facade latency, logging on vs off ({n} sequential calls each, upstream delay {delay_ms} ms)")
    with FakeUpstream() as up, tempfile.TemporaryDirectory() as tmp:
        up.set_behaviour("*", delay_ms=delay_ms)
        os.environ["BENCH_KEY"] = "x"
        registry = parse_registry(
            {
                "models": {
                    "bench-model": {
                        "provider": "openai",
                        "api_base": up.base_url,
                        "api_key_env": "BENCH_KEY",
                        "max_context": 8000,
                        "cost_per_1k": {"input": 0.001, "output": 0.002},
                    }
                },
                "actions": {"text_processing": {}},
                "routing": {"text_processing": {"default": ["bench-model"]}},
            }
        )
        url = f"sqlite+aiosqlite:///{tmp}/latency.db"
        await asyncio.to_thread(upgrade_database, url)
        factory = create_session_factory(url)
        off = ModelRouter(registry)
        on = ModelRouter(registry, writer=RecordWriter(factory, spool_path=Path(tmp) / "spool.jsonl"))
        samples: dict[str, list[float]] = {"off": [], "on": []}
        for router in (off, on):  # warm-up: imports, connection pools
            for _ in range(20):
                await router.complete("text_processing", "warm up")
        for i in range(n):  # interleaved, so drift on the machine hits both alike
            for name, router in (("off", off), ("on", on)) if i % 2 else (("on", on), ("off", off)):
                start = time.perf_counter()
                await router.complete("text_processing", "Summarise the lecture in one line.")
                samples[name].append((time.perf_counter() - start) * 1000)
        await off.aclose()
        await on.aclose()
        logged = await count_calls(factory)
        await dispose_session_factory(factory)
    p50_off, p50_on = statistics.median(samples["off"]), statistics.median(samples["on"])
    print(f"   logging off  p50 {p50_off:7.2f} ms   p95 {percentile(samples['off'], 0.95):7.2f} ms")
    p95_on = percentile(samples["on"], 0.95)
    print(f"   logging on   p50 {p50_on:7.2f} ms   p95 {p95_on:7.2f} ms   ({logged} rows)")
    print(f"   ratio on/off p50 {p50_on / p50_off:.3f}   (target <= 1.05)")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples (a smoke run)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    print(f"course_llm logging benchmark  ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    await bench_hooks(20_000 // scale)
    await bench_writer(50_000 // scale)
    await bench_latency(300 // scale, delay_ms=20)


if __name__ == "__main__":
    asyncio.run(main())
