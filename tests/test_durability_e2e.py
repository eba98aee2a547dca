"""End to end: answered means recorded, whatever happens to the process (docs/architecture.md, "Durability").

Real processes only: `course-llm serve` (or plain `litellm --config`) against the fake upstream,
16 concurrent clients (tests/load.py) with plain, streamed and multi-attempt requests, then
`kill -9`, a PostgreSQL outage behind a TCP forwarder, a database URL that cannot work, or a
journal that cannot be written. Every request that got its full answer must end with all its
attempt rows in the database, exactly once, counted against the attempts the fake upstream saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.fake_upstream import FakeUpstream
from tests.load import (
    KEY,
    Answer,
    Load,
    audit,
    fetch_rows,
    journal_rows,
    proxy_env,
    run_load,
    serve_process,
    upstream_attempts,
    wait_for_rows,
    write_registry,
)
from tests.proxy_process import ProxyProcess, compiled_config, free_port, litellm_argv
from tests.tcp_proxy import TcpProxy
from tests.test_metrics import sample

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent
#: Requests answered before the kill: enough for every kind of the mix, with 16 more in flight.
KILL_AFTER = 40
#: The upstream's answer time: keeps requests in flight without making the test slow.
UPSTREAM_DELAY_MS = 20
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.reset()
    upstream.set_behaviour("*", delay_ms=UPSTREAM_DELAY_MS)
    yield upstream
    upstream.reset()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database for one test: a fresh SQLite file, or the session's PostgreSQL database (the
    checks read only the rows of this test's request ids)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    url: str = request.getfixturevalue("postgres_database_url")
    return url


async def start(process: ProxyProcess) -> ProxyProcess:
    """Start in a thread: the test's own loop keeps serving (the TCP forwarder runs on it)."""
    return await asyncio.to_thread(process.start)


async def stop(process: ProxyProcess, sig: int = signal.SIGTERM) -> None:
    await asyncio.to_thread(process.stop, sig)


async def load_until(base_url: str, run: str, answers: int, *, clients: int = 16) -> Load:
    """Load until `answers` requests are answered (at most 60 s); requests in flight then finish."""
    stop_event = asyncio.Event()
    count = 0

    def on_answer(_: Answer) -> None:
        nonlocal count
        count += 1
        if count >= answers:
            stop_event.set()

    task = asyncio.create_task(run_load(base_url, stop_event, clients=clients, run=run, on_answer=on_answer))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop_event.wait(), timeout=60)
    stop_event.set()
    return await task


async def health(base_url: str, path: str) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=10, trust_env=False) as client:
        response = await client.get(path)
    return response.status_code, response.json()


# ---------------------------------------------------------------------------------------------
# kill -9 under load


async def test_kill_9_under_load_then_a_restart_without_traffic_leaves_every_answered_row_once(
    up: FakeUpstream, db_url: str, tmp_path: Path
) -> None:
    registry = write_registry(tmp_path / "models.yaml", up.base_url)
    journal = tmp_path / "journal" / "calls"
    first = await start(serve_process(registry, db_url, journal, tmp_path / "first.log"))
    stop_event = asyncio.Event()
    answered: list[Answer] = []
    enough = asyncio.Event()

    def on_answer(answer: Answer) -> None:
        answered.append(answer)
        if len(answered) >= KILL_AFTER:
            enough.set()

    task = asyncio.create_task(run_load(first.base_url, stop_event, run="kill", on_answer=on_answer))
    try:
        await asyncio.wait_for(enough.wait(), timeout=60)
        first.stop(sig=signal.SIGKILL)  # from the loop's thread: no client moves on meanwhile
    finally:
        stop_event.set()
        first.stop(sig=signal.SIGKILL)
        load = await task
    assert first.process is not None and first.process.returncode == -signal.SIGKILL
    assert len(load.answered) >= KILL_AFTER, first.log()[-3000:]
    assert load.unanswered, "the kill landed after the load, not in the middle of it"
    attempts = upstream_attempts(up, "kill")
    at_kill = audit(await fetch_rows(db_url, (a.request_id for a in load.answered)), load.answered, attempts)

    second = await start(serve_process(registry, db_url, journal, tmp_path / "second.log"))
    try:  # no request: the restart alone must write what the killed process journaled
        result = await wait_for_rows(db_url, load.answered, attempts, timeout_s=60)
    finally:
        await stop(second)
    assert result.ok and result.lost == 0, (
        f"at the kill: {at_kill.line()}\nafter the restart: {result.describe()}\n{second.log()[-2000:]}"
    )
    assert result.multi_attempt > 0  # the mix had requests with several attempts
    assert {a.kind for a in load.answered} >= {"plain", "stream", "fallback", "stream_fallback"}


# ---------------------------------------------------------------------------------------------
# PostgreSQL outage


@pytest.mark.postgres
async def test_a_15_s_postgres_outage_under_load_answers_every_call_and_loses_no_row(
    up: FakeUpstream, postgres_database_url: str, tmp_path: Path
) -> None:
    outage_s = 15
    server = make_url(postgres_database_url)
    forwarder = TcpProxy(server.host or "127.0.0.1", server.port or 5432)
    await forwarder.up()
    through_forwarder = server.set(port=forwarder.port).render_as_string(hide_password=False)
    registry = write_registry(tmp_path / "models.yaml", up.base_url)
    process = serve_process(registry, through_forwarder, tmp_path / "journal" / "calls", tmp_path / "log")
    seen_down: dict[str, object] = {}
    try:
        await start(process)
        stop_event = asyncio.Event()
        answered: list[Answer] = []
        task = asyncio.create_task(
            run_load(process.base_url, stop_event, run="outage", on_answer=answered.append)
        )
        try:
            await asyncio.sleep(2)
            await forwarder.down()
            cut_at, answered_at_cut = time.monotonic(), len(answered)
            while time.monotonic() - cut_at < outage_s:
                if not seen_down:
                    status, body = await health(process.base_url, "/health/recording")
                    if body.get("database_available") is False:
                        seen_down = {"status": status, **body}
                await asyncio.sleep(0.5)
            answered_in_outage = len(answered) - answered_at_cut
            await forwarder.up()
            await asyncio.sleep(2)  # the clients keep calling while the writer catches up
        finally:
            stop_event.set()
            load = await task
        attempts = upstream_attempts(up, "outage")
        result = await wait_for_rows(postgres_database_url, load.answered, attempts, timeout_s=60)
        _, after = await health(process.base_url, "/health/recording")
    finally:
        await stop(process)
        await forwarder.down()
    assert load.unanswered == [], load.unanswered[:5]
    assert answered_in_outage > 0
    assert seen_down, "/health/recording never said database_available: false during the outage"
    assert result.ok and result.lost == 0, f"{result.describe()}\n{process.log()[-2000:]}"
    assert after["database_available"] is True


# ---------------------------------------------------------------------------------------------
# Plain `litellm --config` with a database URL that cannot work


def litellm_process(config: Path, db_url: str, journal: Path, log: Path) -> ProxyProcess:
    port = free_port()
    return ProxyProcess(litellm_argv(config, port), proxy_env(db_url, journal), port, log)


#: A database URL plain `litellm --config` cannot use: an unsupported driver, and no URL at all.
BAD_URLS = {
    "unsupported": "mysql+aiomysql://course:llm@127.0.0.1:1/calls",
    "malformed": "not a database url",
}


async def test_plain_litellm_with_a_bad_database_url_journals_its_rows_for_the_next_process(
    up: FakeUpstream, tmp_path: Path
) -> None:
    config = compiled_config(write_registry(tmp_path / "models.yaml", up.base_url), tmp_path / "proxy.yaml")
    journal = tmp_path / "journal" / "calls"  # both processes share it (one segment each)
    first = {
        name: litellm_process(config, url, journal, tmp_path / f"{name}.log")
        for name, url in BAD_URLS.items()
    }
    await asyncio.gather(*(start(process) for process in first.values()))  # two starts for one's time
    try:
        loads = await asyncio.gather(
            *(load_until(process.base_url, name, 8, clients=2) for name, process in first.items())
        )
        # Answered means journaled: the rows are there the moment the answers are.
        rows = journal_rows(journal)
        in_journal = {
            name: audit(rows, load.answered, upstream_attempts(up, name))
            for name, load in zip(first, loads, strict=True)
        }
    finally:
        await asyncio.gather(*(stop(process) for process in first.values()))
    for (name, process), load in zip(first.items(), loads, strict=True):
        assert load.unanswered == [], (name, load.unanswered)
        assert in_journal[name].ok and in_journal[name].lost == 0, (name, in_journal[name].describe())
        log = process.log()
        errors = [line for line in log.splitlines() if "error" in line and "database" in line.lower()]
        assert errors, f"{name}: no error about the database was logged:\n{log[-3000:]}"

    good_url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    second = await start(litellm_process(config, good_url, journal, tmp_path / "second.log"))
    try:  # no request: the second process writes the first ones' journal at its start
        results = {
            name: await wait_for_rows(good_url, load.answered, upstream_attempts(up, name), 60)
            for name, load in zip(first, loads, strict=True)
        }
        deadline = time.monotonic() + 10
        while journal_rows(journal) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        left = journal_rows(journal)
    finally:
        await stop(second)
    for name, result in results.items():
        assert result.ok and result.lost == 0, f"{name}: {result.describe()}\n{second.log()[-2000:]}"
    assert left == []


# ---------------------------------------------------------------------------------------------
# A journal left by a killed process


#: A process that journals rows through the real writer (no database: they wait in the journal),
#: then is killed before anything else can happen.
KILLED_WRITER = """
import os, signal, sys
from course_llm.recording.writer import RecordWriter
from tests.rows import row

prefix, run, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
writer = RecordWriter(None, spool_path=prefix)
for i in range(requests):
    request_id = f"{run}-{i}"
    writer.submit(row(i, request_id=request_id, attempt=1, success=False, status_code=500))
    writer.submit(row(i, request_id=request_id, attempt=2))
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_writer(journal: Path, run: str, requests: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(journal), run, str(requests)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


async def test_serve_writes_a_journal_left_by_a_killed_process_at_start_without_any_request(
    up: FakeUpstream, tmp_path: Path
) -> None:
    journal = tmp_path / "journal" / "calls"
    killed_writer(journal, "killed-a", 30)
    killed_writer(journal, "killed-b", 30)  # two orphaned segments
    assert len(journal_rows(journal)) == 120
    db = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    registry = write_registry(tmp_path / "models.yaml", up.base_url)
    process = await start(serve_process(registry, db, journal, tmp_path / "serve.log"))
    ids = [f"killed-{x}-{i}" for x in "ab" for i in range(30)]
    try:
        deadline = time.monotonic() + 60
        rows = await fetch_rows(db, ids)
        while (len(rows) < 120 or journal_rows(journal)) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            rows = await fetch_rows(db, ids)
    finally:
        await stop(process)
    assert sorted((r.request_id, r.attempt, r.success) for r in rows) == sorted(
        (request_id, attempt, attempt == 2) for request_id in ids for attempt in (1, 2)
    ), process.log()[-2000:]
    assert journal_rows(journal) == []
    assert [r for r in up.requests() if "chat/completions" in r["path"]] == []  # no traffic needed


# ---------------------------------------------------------------------------------------------
# A journal that cannot be written


async def test_an_unwritable_journal_still_answers_and_records_but_reports_itself_unhealthy(
    up: FakeUpstream, tmp_path: Path
) -> None:
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("the journal's parent is this file: creating it fails with ENOTDIR\n")
    journal = not_a_directory / "journal" / "calls"
    db = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    registry = write_registry(tmp_path / "models.yaml", up.base_url)
    process = await start(serve_process(registry, db, journal, tmp_path / "serve.log"))
    try:
        before_any_call = await health(process.base_url, "/health/readiness")
        load = await load_until(process.base_url, "no-journal", 8, clients=4)
        result = await wait_for_rows(db, load.answered, upstream_attempts(up, "no-journal"), 30)
        readiness = await health(process.base_url, "/health/readiness")
        recording = await health(process.base_url, "/health/recording")
        async with httpx.AsyncClient(base_url=process.base_url, headers=AUTH, trust_env=False) as client:
            metrics = (await client.get("/metrics", timeout=10)).text
    finally:
        await stop(process)
    assert load.unanswered == [], load.unanswered
    assert result.ok and result.lost == 0, result.describe()
    assert before_any_call[0] == 503, before_any_call  # found at start, not at the first row
    assert readiness[0] == 503 and "journal" in str(readiness[1]), readiness
    status, body = recording
    assert status == 503 and body["status"] == "degraded", recording
    assert "NotADirectoryError" in str(body["reason"]) or "Not a directory" in str(body["reason"])
    assert sample(metrics, "course_llm_recording_healthy") == 0, metrics
    failures = sample(metrics, "course_llm_journal_failures_total")
    assert failures is not None and failures >= len(load.answered), failures
