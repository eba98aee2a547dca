"""`course-llm serve --workers N` (course_llm/proxy/workers.py): N processes on one port.

Real processes: the supervisor and its workers against the fake upstream, 16 concurrent clients
(tests/load.py) with plain, streamed and multi-attempt requests. One worker is killed with SIGKILL
under load (uvicorn replaces it; the replacement replays its journal segment), then the supervisor
gets SIGTERM under load: every request that got its full answer must have all its rows in the
database once the supervisor has exited, with no further process started. Also: each worker
journals to a segment of its own, and the database is migrated once, by the supervisor.
Concurrent migrations of one fresh PostgreSQL database (several replicas starting together) are
serialised by an advisory lock (alembic/env.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from course_llm.cli import app
from course_llm.db import head_revision
from tests.conftest import POSTGRES_ADMIN_URL, _postgres_admin
from tests.fake_upstream import FakeUpstream
from tests.load import Answer, proxy_env, run_load, upstream_attempts, wait_for_rows, write_registry
from tests.proxy_process import BIN, ProxyProcess, free_port, serve_argv

#: Answers before the worker is killed, and again before the supervisor gets SIGTERM.
PHASE_ANSWERS = 40
UPSTREAM_DELAY_MS = 20


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    """The module's upstream with no request remembered (the audit counts each tag's attempts)."""
    fake_upstream.reset()
    fake_upstream.set_behaviour("*", delay_ms=UPSTREAM_DELAY_MS)
    return fake_upstream


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    url: str = request.getfixturevalue("postgres_database_url")
    return url


def workers_of(supervisor: int) -> list[int]:
    """The pids of the supervisor's worker processes (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
            if parent == supervisor and b"multiprocessing.spawn" in command:
                found.append(int(entry.name))
    return sorted(found)


async def until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.mark.e2e
async def test_a_killed_worker_is_replaced_and_sigterm_drains_every_worker_without_losing_a_row(
    upstream: FakeUpstream, db_url: str, tmp_path: Path
) -> None:
    registry = write_registry(tmp_path / "models.yaml", upstream.base_url)
    journal = tmp_path / "journal" / "calls"
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port), "--workers", "2")
    process = ProxyProcess(argv, proxy_env(db_url, journal), port, tmp_path / "serve.log")
    await asyncio.to_thread(process.start)
    assert process.process is not None
    supervisor = process.process.pid
    await until(lambda: len(workers_of(supervisor)) == 2, 60, "two workers")
    first_workers = workers_of(supervisor)

    answered: list[Answer] = []
    phase = asyncio.Event()
    stop = asyncio.Event()

    def on_answer(answer: Answer) -> None:
        answered.append(answer)
        if len(answered) % PHASE_ANSWERS == 0:
            phase.set()

    load = asyncio.create_task(run_load(process.base_url, stop, run="workers", on_answer=on_answer))
    try:
        await asyncio.wait_for(phase.wait(), timeout=60)
        phase.clear()
        # Each worker journals to a segment of its own (a segment is one writer's, under its flock).
        segments = sorted(journal.parent.glob(journal.name + ".*.journal"))
        os.kill(first_workers[0], signal.SIGKILL)
        killed_at = len(answered)
        await until(
            lambda: len(workers_of(supervisor)) == 2 and first_workers[0] not in workers_of(supervisor),
            60,
            "the killed worker's replacement",
        )
        await asyncio.wait_for(phase.wait(), timeout=60)  # the load goes on after the kill
        terminated_at = len(answered)
        process.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.process.wait, 90)
    finally:
        stop.set()
        process.stop(sig=signal.SIGKILL)
        result = await load
    log = process.log()
    assert code == 0, log[-3000:]
    assert terminated_at > killed_at >= PHASE_ANSWERS
    # Only the supervisor migrated: a worker told nothing would upgrade the database itself.
    assert log.count("database_upgrade_started") == 1, log[-3000:]
    assert len(segments) == 2, segments
    # Stopped for good, nothing started after it: every answered call's rows are in the database.
    audit = await wait_for_rows(db_url, result.answered, upstream_attempts(upstream, "workers"), timeout_s=1)
    assert audit.ok and audit.lost == 0, f"{audit.describe()}\n{log[-3000:]}"
    assert audit.multi_attempt > 0
    # Every worker that had started drained (the replacement may still be starting at SIGTERM on
    # a slow machine: it has taken no connection yet), and the last to close left nothing behind.
    assert 1 <= log.count("llm_calls_flushed_at_shutdown") <= 2, log[-3000:]
    assert "llm_calls_left_in_journal" not in log, log[-3000:]
    assert f"serve_worker_died              exitcode=-9 pid={first_workers[0]}" in log, log[-3000:]


@pytest.mark.e2e
async def test_sighup_replaces_every_worker_under_load_and_loses_no_row(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGHUP: uvicorn starts a new worker, waits until it serves, then retires an old one, one by
    one. It waits `timeout_worker_healthcheck` for each: at uvicorn's 5 s (less than LiteLLM's
    import) every restart gave up and kept the old workers."""
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    registry = write_registry(tmp_path / "models.yaml", upstream.base_url)
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port), "--workers", "2")
    process = ProxyProcess(
        argv, proxy_env(db_url, tmp_path / "journal" / "calls"), port, tmp_path / "serve.log"
    )
    await asyncio.to_thread(process.start)
    assert process.process is not None
    supervisor = process.process.pid
    await until(lambda: len(workers_of(supervisor)) == 2, 60, "two workers")
    old = set(workers_of(supervisor))
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(process.base_url, stop, run="sighup"))
    try:
        await asyncio.sleep(1)
        process.process.send_signal(signal.SIGHUP)
        await until(
            lambda: len(workers_of(supervisor)) == 2 and not old & set(workers_of(supervisor)),
            180,
            "both workers replaced",
        )
        await asyncio.sleep(1)  # the new workers take traffic
    finally:
        stop.set()
        result = await load
        process.stop()
    log = process.log()
    assert "not ready in time" not in log, log[-3000:]
    audit = await wait_for_rows(db_url, result.answered, upstream_attempts(upstream, "sighup"), timeout_s=1)
    assert audit.ok and audit.lost == 0, f"{audit.describe()}\n{log[-3000:]}"
    assert len(result.answered) > 0


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on `port` (IPv4, this network namespace)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.e2e
async def test_workers_of_a_killed_supervisor_drain_and_free_the_port(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    registry = write_registry(tmp_path / "models.yaml", upstream.base_url)
    journal = tmp_path / "journal" / "calls"
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port), "--workers", "2")
    process = ProxyProcess(argv, proxy_env(db_url, journal), port, tmp_path / "serve.log")
    await asyncio.to_thread(process.start)
    assert process.process is not None
    supervisor = process.process.pid
    await until(lambda: len(workers_of(supervisor)) == 2, 60, "two workers")
    workers = workers_of(supervisor)
    stop = asyncio.Event()
    answered: list[Answer] = []

    def on_answer(answer: Answer) -> None:
        answered.append(answer)
        if len(answered) >= PHASE_ANSWERS:
            stop.set()

    result = await run_load(process.base_url, stop, run="orphaned", on_answer=on_answer)
    process.stop(sig=signal.SIGKILL)
    try:
        await until(lambda: not any(running(pid) for pid in workers), 30, "the workers to stop")
    finally:
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    # They drained: every answered call's rows are in the database, and the port is free again.
    audit = await wait_for_rows(db_url, result.answered, upstream_attempts(upstream, "orphaned"), timeout_s=1)
    assert audit.ok and audit.lost == 0, f"{audit.describe()}\n{process.log()[-3000:]}"
    assert "serve_supervisor_gone" in process.log()
    again = ProxyProcess(
        serve_argv("--registry", str(registry), "--port", str(port)),
        proxy_env(db_url, journal),
        port,
        tmp_path / "again.log",
    )
    await asyncio.to_thread(again.start)
    again.stop()


@pytest.mark.e2e
async def test_workers_whose_supervisor_died_while_they_started_stop_too(tmp_path: Path) -> None:
    """Killed while its workers still import LiteLLM: their parent is init's by the time they
    could ask; they must know their supervisor from the spawn, not from a late `getppid()`."""
    from tests.test_quiet_logs_e2e import mock_env

    argv = serve_argv("--mock", "--port", str(free_port()), "--workers", "2")
    with (tmp_path / "serve.log").open("ab") as log:
        supervisor = subprocess.Popen(
            argv, env={**os.environ, **mock_env(tmp_path)}, stdout=log, stderr=subprocess.STDOUT
        )
    workers: list[int] = []
    try:
        await until(lambda: len(workers_of(supervisor.pid)) == 2, 60, "two workers spawned")
        workers = workers_of(supervisor.pid)
        supervisor.kill()  # before they have built their app (LiteLLM's import takes seconds)
        supervisor.wait()
        await until(lambda: not any(running(pid) for pid in workers), 90, "the orphaned workers to stop")
    finally:
        supervisor.kill()
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert "serve_supervisor_gone" in (tmp_path / "serve.log").read_text()


def test_workers_out_of_range_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COURSE_LLM_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}")
    result = CliRunner().invoke(app, ["serve", "--mock", "--workers", "0", "--port", str(free_port())])
    assert result.exit_code != 0
    assert "--workers must be between 1 and 64, not 0" in result.output
    assert not (tmp_path / "calls.db").exists()  # refused before anything was created


@pytest.mark.postgres
def test_replicas_migrating_one_fresh_postgres_database_at_once_all_succeed() -> None:
    """Four `course-llm db upgrade` processes at once (as replicas starting together): without the
    lock some fail with a duplicate key (seen: pg_type_typname_nsp_index); with it all succeed.
    Processes, not threads: Alembic's `context` is one per process."""
    server = make_url(POSTGRES_ADMIN_URL)
    name = f"course_llm_race_{secrets.token_hex(6)}"
    asyncio.run(_postgres_admin(POSTGRES_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    env = {**os.environ, "COURSE_LLM_DATABASE_URL": url}
    try:
        upgrades = [
            subprocess.Popen(
                [str(BIN / "course-llm"), "db", "upgrade"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(4)
        ]
        outputs = [upgrade.communicate(timeout=120)[0].decode(errors="replace") for upgrade in upgrades]
        assert [upgrade.returncode for upgrade in upgrades] == [0] * 4, outputs
        assert asyncio.run(_version(url)) == [head_revision()]
    finally:
        asyncio.run(_postgres_admin(POSTGRES_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _version(url: str) -> list[str]:
    import asyncpg

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(plain)
    try:
        return [row[0] for row in await connection.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await connection.close()


@pytest.mark.e2e
async def test_sigterm_lets_every_worker_finish_its_requests_against_the_mock(tmp_path: Path) -> None:
    """`--mock --workers 2`: the mock upstream runs in the supervisor, which must keep it answering
    until the last worker has drained. Each request waits 2 s at the mock; SIGTERM comes at 0.5 s."""
    import sqlite3

    import httpx

    from course_llm.proxy.serve import DEV_KEY
    from tests.test_quiet_logs_e2e import mock_env

    port = free_port()
    argv = serve_argv("--mock", "--port", str(port), "--workers", "2")
    process = ProxyProcess(argv, mock_env(tmp_path), port, tmp_path / "serve.log")
    await asyncio.to_thread(process.start)
    assert process.process is not None
    await until(lambda: len(workers_of(process.process.pid)) == 2, 60, "two workers")
    body = {"model": "text_processing", "messages": [{"role": "user", "content": "[mock-delay 2s] hi"}]}
    async with httpx.AsyncClient(
        base_url=process.base_url, headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=30
    ) as client:
        calls = [asyncio.create_task(client.post("/v1/chat/completions", json=body)) for _ in range(8)]
        await asyncio.sleep(0.5)
        process.process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*calls, return_exceptions=True)
    code = await asyncio.to_thread(process.process.wait, 60)
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    assert statuses == [200] * 8, process.log()[-3000:]
    assert code == 0
    with sqlite3.connect(tmp_path / "calls.db") as db:
        assert db.execute("SELECT count(*), sum(success) FROM llm_calls").fetchone() == (8, 8)


@pytest.mark.e2e
async def test_keep_alive_clients_are_spread_over_the_workers_and_the_port_is_theirs(tmp_path: Path) -> None:
    """Each worker listens on its own SO_REUSEPORT socket, and the kernel spreads new connections
    over them (with one shared socket, 16 keep-alive clients were seen all on one worker). A
    second `serve` on the port is refused, as with one process."""
    import re

    import httpx

    from course_llm.proxy.serve import DEV_KEY
    from tests.test_quiet_logs_e2e import mock_env

    port = free_port()
    argv = serve_argv("--mock", "--port", str(port), "--workers", "2")
    process = ProxyProcess(argv, mock_env(tmp_path), port, tmp_path / "serve.log")
    await asyncio.to_thread(process.start)
    assert process.process is not None
    await until(lambda: len(workers_of(process.process.pid)) == 2, 60, "two workers")
    # A worker listens once its app is built: under load the second can take seconds more than
    # the first, which alone would then get every kept-alive connection (seen once in CI).
    await until(lambda: listening_sockets(port) == 2, 90, "both workers listening")
    body = {"model": "text_processing", "messages": [{"role": "user", "content": "hi"}]}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=process.base_url, headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=60, limits=limits
    ) as client:

        async def client_calls() -> list[int]:
            return [(await client.post("/v1/chat/completions", json=body)).status_code for _ in range(5)]

        statuses = [s for calls in await asyncio.gather(*(client_calls() for _ in range(64))) for s in calls]
    listening = listening_sockets(port)
    (tmp_path / "second").mkdir()
    second = await asyncio.to_thread(
        subprocess.run,
        serve_argv("--mock", "--port", str(port)),
        env={**os.environ, **mock_env(tmp_path / "second")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    process.stop()
    assert statuses == [200] * 320
    written = [
        int(n) for n in re.findall(r"llm_calls_flushed_at_shutdown .*?rows_written=(\d+)", process.log())
    ]
    assert sum(written) == 320 and len(written) == 2, process.log()[-2000:]
    # Hashed over two sockets, 64 connections put at least 9 on each but with odds of 1 in 10^9.
    assert min(written) >= 40, written
    assert listening == 2  # one socket per worker (a shared socket is one)
    assert second.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in second.stdout + second.stderr
