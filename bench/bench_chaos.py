"""Chaos benchmark: are the rows of every answered call in the database, whatever happens?

    .venv/bin/python bench/bench_chaos.py [--outage-s 60] [--load-s 10] [--kill-db postgres|sqlite]

Two runs of `course-llm serve` against the fake upstream (tests/fake_upstream.py, its own process),
each under 16 concurrent clients sending the mix of tests/load.py (half plain calls, the rest
streamed, or to a chain whose first model always answers 500, so three attempts):

(a) kill -9 under load, then a new `serve` on the same journal and database, with no traffic;
(b) PostgreSQL unreachable for `--outage-s` seconds (a TCP forwarder in front of it is cut), at
    the highest rate the machine sustains: 16 closed-loop clients saturate the proxy's core, and
    the rate is measured before the outage.

Each run prints `answered / rows expected / rows found / lost`. Rows expected are the attempts the
fake upstream received for the answered requests (every prompt carries a unique tag). Target: 0 lost,
no duplicates. PostgreSQL comes from COURSE_LLM_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432); a database is created for the run and dropped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from tests.fake_upstream import FakeUpstream
from tests.load import (
    MIX,
    Answer,
    Audit,
    audit_rows,
    run_load,
    serve_process,
    upstream_attempts,
    wait_for_rows,
    write_registry,
)
from tests.proxy_process import ProxyProcess
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("COURSE_LLM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
CLIENTS = 16


# -- PostgreSQL: one database for the run ---------------------------------------------------------


async def _admin(sql: str) -> None:
    url = make_url(ADMIN_URL)
    last: Exception | None = None
    for database in [url.database] if url.database else ["postgres", "test"]:
        try:
            connection = await asyncpg.connect(
                host=url.host or "127.0.0.1",
                port=url.port or 5432,
                user=url.username or "postgres",
                password=url.password,
                database=database,
                timeout=5,
            )
        except asyncpg.InvalidCatalogNameError as exc:
            last = exc
            continue
        try:
            await connection.execute(sql)
        finally:
            await connection.close()
        return
    assert last is not None
    raise last


async def create_database() -> tuple[str, str]:
    """(name, URL) of a new, empty PostgreSQL database; `serve` migrates it at start."""
    name = f"course_llm_chaos_{secrets.token_hex(4)}"
    await _admin(f'CREATE DATABASE "{name}"')  # our own hex name: safe to quote
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    return name, url


async def drop_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the fake upstream, its own process -----------------------------------------------------------


def start_upstream(delay_ms: int) -> tuple[subprocess.Popen[str], FakeUpstream]:
    process = subprocess.Popen(
        [sys.executable, "tests/fake_upstream.py", "--port", "0"],
        stdout=subprocess.PIPE,
        # Quiet: the fake logs a traceback for every request the killed proxy never finished sending.
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline().split()[1])
    upstream = FakeUpstream.attach(port)
    upstream.set_behaviour("*", delay_ms=delay_ms)
    return process, upstream


# -- helpers --------------------------------------------------------------------------------------


async def start(process: ProxyProcess) -> ProxyProcess:
    return await asyncio.to_thread(process.start)


async def database_available(base_url: str) -> bool | None:
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=5, trust_env=False) as client:
            available = (await client.get("/health/recording")).json().get("database_available")
    except (httpx.HTTPError, ValueError):
        return None
    return bool(available) if available is not None else None


def report(result: Audit) -> None:
    print(f"   {result.line()}")
    duplicates = len(result.duplicate_ids) + len(result.duplicate_attempts)
    print(f"   duplicates {duplicates}   requests with wrong rows {len(result.problems)}")
    for request_id, what in list(result.problems.items())[:5]:
        print(f"     {request_id}: {what}")


def rate(answered: int, seconds: float) -> str:
    return f"{answered / seconds:6.1f} req/s" if seconds > 0 else "n/a"


# -- (a) kill -9 under load -----------------------------------------------------------------------


async def kill_run(upstream: FakeUpstream, tmp: Path, db_url: str, load_s: float) -> Audit:
    registry = write_registry(tmp / "kill.yaml", upstream.base_url)
    journal = tmp / "kill-journal" / "calls"
    first = await start(serve_process(registry, db_url, journal, tmp / "kill-first.log"))
    stop = asyncio.Event()
    task = asyncio.create_task(run_load(first.base_url, stop, clients=CLIENTS, run="kill"))
    try:
        await asyncio.sleep(load_s)
        first.stop(sig=signal.SIGKILL)  # from the loop's thread: every client is mid-request
    finally:
        stop.set()
        first.stop(sig=signal.SIGKILL)
        load = await task
    print(
        f"   load {load.seconds:.1f} s: {len(load.answered)} answered ({rate(len(load.answered), load_s)}),"
        f" {len(load.unanswered)} cut by the kill"
    )
    attempts = upstream_attempts(upstream, "kill")
    at_kill = await audit_rows(db_url, load.answered, attempts)
    print(f"   in the database at the kill: {at_kill.found} of {at_kill.expected} rows")
    second = serve_process(registry, db_url, journal, tmp / "kill-second.log")
    started = time.monotonic()
    await start(second)
    try:
        result = await wait_for_rows(db_url, load.answered, attempts, timeout_s=120)
        print(f"   after the restart (no traffic): all in {time.monotonic() - started:.1f} s from its launch")
    finally:
        await asyncio.to_thread(second.stop)
    report(result)
    return result


# -- (b) a PostgreSQL outage under load -----------------------------------------------------------


async def outage_run(upstream: FakeUpstream, tmp: Path, db_url: str, outage_s: float) -> Audit:
    server = make_url(db_url)
    forwarder = TcpProxy(server.host or "127.0.0.1", server.port or 5432)
    await forwarder.up()
    through = server.set(port=forwarder.port).render_as_string(hide_password=False)
    registry = write_registry(tmp / "outage.yaml", upstream.base_url)
    journal = tmp / "outage-journal" / "calls"
    process = await start(serve_process(registry, through, journal, tmp / "outage.log"))
    stop = asyncio.Event()
    answered: list[Answer] = []
    task = asyncio.create_task(
        run_load(process.base_url, stop, clients=CLIENTS, run="outage", on_answer=answered.append)
    )
    try:
        warm_s = 5.0
        await asyncio.sleep(warm_s)
        print(f"   before the outage: {rate(len(answered), warm_s)} (16 clients, database up)")
        await forwarder.down()
        cut_at, before = time.monotonic(), len(answered)
        seen_down = False
        while time.monotonic() - cut_at < outage_s:
            seen_down = seen_down or await database_available(process.base_url) is False
            await asyncio.sleep(1)
        during = len(answered) - before
        print(
            f"   during the {outage_s:.0f} s outage: {during} answered ({rate(during, outage_s)}),"
            f" /health/recording database_available false: {'seen' if seen_down else 'NOT seen'}"
        )
        await forwarder.up()
        back_at = time.monotonic()
        await asyncio.sleep(5)
    finally:
        stop.set()
        load = await task
    try:
        print(
            f"   load {load.seconds:.1f} s: {len(load.answered)} answered, "
            f"{len(load.unanswered)} unanswered {load.unanswered[:2] if load.unanswered else ''}"
        )
        attempts = upstream_attempts(upstream, "outage")
        result = await wait_for_rows(db_url, load.answered, attempts, timeout_s=180)
        print(
            f"   every row in the database {time.monotonic() - back_at:.1f} s after the database came back"
            " (the clients kept calling for the first 5 s)"
        )
    finally:
        await asyncio.to_thread(process.stop)
        await forwarder.down()
    report(result)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outage-s", type=float, default=60, help="PostgreSQL outage length (run b)")
    parser.add_argument("--load-s", type=float, default=10, help="load before the kill (run a)")
    parser.add_argument(
        "--kill-db", choices=["postgres", "sqlite"], default="postgres", help="run a's database"
    )
    parser.add_argument("--delay-ms", type=int, default=20, help="upstream answer delay")
    args = parser.parse_args()
    upstream_process, upstream = start_upstream(args.delay_ms)
    databases: list[str] = []
    failed = False
    print(
        f"course_llm chaos benchmark ({os.cpu_count()} cores, {CLIENTS} clients, upstream delay "
        f"{args.delay_ms} ms, mix per 8 requests: {', '.join(MIX)})"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            if args.kill_db == "postgres":
                name, kill_url = await create_database()
                databases.append(name)
            else:
                kill_url = f"sqlite+aiosqlite:///{tmp / 'kill.db'}"
            print(f"\n(a) kill -9 after {args.load_s:.0f} s of load ({args.kill_db}), then restart")
            upstream.reset()
            upstream.set_behaviour("*", delay_ms=args.delay_ms)
            failed |= not (await kill_run(upstream, tmp, kill_url, args.load_s)).ok
            name, outage_url = await create_database()
            databases.append(name)
            print(f"\n(b) PostgreSQL unreachable for {args.outage_s:.0f} s under load")
            upstream.reset()
            upstream.set_behaviour("*", delay_ms=args.delay_ms)
            failed |= not (await outage_run(upstream, tmp, outage_url, args.outage_s)).ok
    finally:
        for name in databases:
            await drop_database(name)
        upstream_process.terminate()
        upstream_process.wait(timeout=10)
    print(f"\ntarget: 0 lost, no duplicates -> {'MISSED' if failed else 'met'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    asyncio.run(main())
