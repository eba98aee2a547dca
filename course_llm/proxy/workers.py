"""`course-llm serve --workers N`: N proxy processes on one port, under uvicorn's own supervisor.

One `serve` process is one event loop on one core. With `--workers N` the `serve` process prepares
everything once (serve.py `prepare`: registry, runtime config, database migration), reserves the
port, and hands over to `uvicorn.supervisors.Multiprocess`, which spawns N fresh interpreters.
Each worker imports `worker_app`, which builds the same app as a single `serve` from what the
environment says: the key and the config file (as for `litellm --config`) and `MIGRATED_ENV`, so
no worker migrates again.

Each worker listens on a socket of its own, bound to the one address with SO_REUSEPORT, and the
kernel spreads new connections evenly over them (`ReusePortListener`). uvicorn's way, one socket
shared by all, lets whichever worker wakes first accept every connection waiting (asyncio accepts
up to its backlog per wake-up): measured, 16 keep-alive clients all landed on one of two workers,
and the second worker added nothing.

What each worker owns: its LiteLLM router, its row writer and so its journal segment (journal.py:
one segment per writer, under the writer's `flock`), its budgets' book and circuit breaker (shared
with the others through the database or Redis, as between replicas) and its `/metrics`.

Signals (uvicorn 0.54 `Multiprocess`): SIGTERM or SIGINT to the supervisor is passed on as SIGTERM
to every worker, and the supervisor waits for all of them, with no time limit: each drains as a
single `serve` does (in-flight requests for up to 30 s, then LiteLLM's shutdown, which flushes the
rows). A worker that dies (SIGKILL, out of memory) is replaced; its replacement's row writer finds
the dead worker's segment unlocked and replays it (an orphan) before taking traffic. SIGHUP
replaces the workers one by one, SIGTTIN/SIGTTOU add or remove one; a retired worker closes its
kept-alive connections, so a client that reuses one just then gets a connection error (measured:
18 of 1,633 calls under load): SIGHUP is not hitless. A supervisor that dies without
a word (SIGKILL) would leave its workers serving, holding the port against the next `serve`:
each worker watches its parent and, once it is gone, stops as on SIGTERM (drained, rows flushed).

With `--mock`, the offline upstream runs in a thread of the supervisor, so all workers share it and
it answers until the last worker has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from uvicorn.supervisors import Multiprocess

from course_llm._litellm import configure_environment
from course_llm.proxy.serve import KEEP_ALIVE_S, ServeError, ServePlan, proxy_app
from course_llm.settings import Settings

__all__ = ["MIGRATED_ENV", "run_workers", "worker_app"]

log = structlog.get_logger()

#: Set by the supervisor for its workers: "1" when it migrated the configured database.
MIGRATED_ENV = "COURSE_LLM_SERVE_DATABASE_MIGRATED"
#: The app factory each worker imports (uvicorn's `factory=True`).
WORKER_APP = "course_llm.proxy.workers:worker_app"
#: Seconds a worker may take to start (or, alive, to answer the supervisor's ping).
WORKER_START_S = 60
#: How long the `--mock` upstream may take to start listening.
_MOCK_START_S = 10.0


def worker_app() -> Any:
    """The app of one worker: the proxy's, built as a single `serve` builds it."""
    configure_environment()
    # The supervisor as of the spawn: a `getppid()` now would already be init's if the supervisor
    # died while this worker imported LiteLLM (5 s and more).
    parent = multiprocessing.parent_process()
    _stop_with_supervisor(parent.pid if parent is not None and parent.pid else os.getppid())
    migrated = os.environ.get(MIGRATED_ENV) == "1"
    return proxy_app(Settings().database_url if migrated else None)


def _stop_with_supervisor(supervisor: int, every_s: float = 1.0) -> None:
    """SIGTERM this worker once its supervisor is gone (its parent is then another process)."""

    def watch() -> None:
        while os.getppid() == supervisor:  # checked at once: it may be gone already
            time.sleep(every_s)
        log.warning("serve_supervisor_gone", supervisor_pid=supervisor, worker_pid=os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="course_llm-supervisor-watch", daemon=True).start()


def run_workers(plan: ServePlan) -> None:
    """Run `plan.workers` workers on the plan's port until SIGTERM or SIGINT, then drain them all."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    # The workers are spawned (fresh interpreters): they inherit the environment, nothing else.
    os.environ["LITELLM_MASTER_KEY"] = plan.master_key
    os.environ["CONFIG_FILE_PATH"] = str(plan.config_path)
    os.environ[MIGRATED_ENV] = "1" if plan.database_migrated else "0"
    config = uvicorn.Config(
        WORKER_APP,
        factory=True,
        host=plan.host,
        port=plan.port,
        workers=plan.workers,
        log_level="warning",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=KEEP_ALIVE_S,
        # How long a new worker may take to answer the supervisor (SIGHUP waits that long for each
        # replacement) and a live one to answer its ping. uvicorn's 5 s is less than importing
        # LiteLLM takes here (5.5 s): every SIGHUP gave up, keeping the old workers.
        timeout_worker_healthcheck=WORKER_START_S,
    )
    stop_mock = _start_mock(plan.mock_socket) if plan.mock_socket is not None else None
    listener = ReusePortListener(plan.host, plan.port)
    supervisor = _Supervisor(config, sockets=[listener])  # type: ignore[list-item]
    try:
        supervisor.run()
    finally:
        listener.close()
        if stop_mock is not None:
            stop_mock()
        shutil.rmtree(plan.config_path.parent, ignore_errors=True)
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)  # a worker could not start; uvicorn logged why


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, saying (as a warning) when a worker died and is replaced: uvicorn
    says it at INFO, below the level `serve` runs uvicorn at."""

    def keep_subprocess_alive(self) -> None:
        if not self.should_exit.is_set():
            for worker in self.processes:
                if worker.exitcode is not None:
                    log.warning("serve_worker_died", pid=worker.pid, exitcode=worker.exitcode)
        super().keep_subprocess_alive()


class ReusePortListener:
    """What the supervisor hands uvicorn as "the" listening socket. It binds the address with
    SO_REUSEPORT but does not listen (a listening socket nobody accepts on would be given its
    share of connections): it holds the port against anything not bound with SO_REUSEPORT
    (`serve`'s own port check refuses a port taken by a listener; two `serve --workers` started
    within a few seconds on one port are not told apart by the kernel). Each worker
    unpickles it (uvicorn pickles a worker's sockets to spawn it) as a new socket of its own,
    bound to the same address with SO_REUSEPORT, not listening yet either: asyncio's server
    calls `listen()` when uvicorn starts serving, after the app and LiteLLM's start-up. So a
    worker still starting (after SIGHUP, or replacing a dead one) is given no connection, and
    one stopped while starting leaves none unanswered."""

    def __init__(self, host: str, port: int) -> None:
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._holder = _reuse_port_socket(self.family, (host, port))
        self.address = (host, self._holder.getsockname()[1])  # the port the kernel gave for 0

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _reuse_port_socket, (self.family, self.address)

    def close(self) -> None:
        self._holder.close()


def _reuse_port_socket(family: int, address: tuple[str, int]) -> socket.socket:
    """A socket bound to `address` with SO_REUSEPORT (the holder's, and each worker's)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
    return sock


def _start_mock(mock_socket: Any) -> Callable[[], None]:
    """Serve the `--mock` upstream from a thread of this process; return what stops it."""
    import uvicorn

    from course_llm.proxy.mock import QuietServer, mock_upstream_app

    class MockServer(QuietServer, uvicorn.Server):
        pass

    server = MockServer(
        uvicorn.Config(mock_upstream_app(), log_config=None, log_level="warning", lifespan="off")
    )
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(server.serve(sockets=[mock_socket]))
        except BaseException as exc:  # reported to the starting thread below
            failure.append(exc)

    thread = threading.Thread(target=serve, name="course_llm-mock-upstream", daemon=True)
    thread.start()
    deadline = time.monotonic() + _MOCK_START_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        raise ServeError(f"the mock upstream did not start: {failure[0] if failure else 'timeout'}")

    def stop() -> None:
        server.should_exit = True
        with contextlib.suppress(RuntimeError):
            thread.join(timeout=5)

    return stop
