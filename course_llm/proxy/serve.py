"""`course-llm serve`: compile the registry, upgrade the database, run the LiteLLM proxy.

The proxy runs in this process (uvicorn over LiteLLM's FastAPI app), so course_llm can mount its
own routes next to LiteLLM's: the usage API, /metrics and /dashboard. The compiled config goes to a
private temporary directory and LiteLLM reads it from CONFIG_FILE_PATH at start-up, exactly as
`litellm --config` would. The database is upgraded here, once; the proxy's row writer is told so.

With `--mock`, the offline upstream (course_llm/proxy/mock.py) is a second, small uvicorn server
in the same event loop, on a loopback port of its own. It takes no signals: on SIGTERM the proxy
stops accepting connections and finishes its in-flight requests (retries and fallbacks to the
mock included) while the mock keeps answering; the process ends after that. `[mock-delay 2s]`
in a prompt makes the mock wait that long before each attempt answers, to try timeouts and
shutdowns with requests in flight.

With no LITELLM_MASTER_KEY, `--mock` on a loopback address uses the fixed development key
`sk-course-llm-dev` (DEV_KEY), so the README's examples work as written after `make run`.

With `--workers N` (N > 1) this process becomes uvicorn's supervisor (`uvicorn.supervisors.
Multiprocess`): it prepares once (registry, config, database migration), binds the port, and
spawns N workers that each import `worker_app` and build the app from what the environment tells
them (workers.py). On SIGTERM it passes the signal to every worker and waits for all: each drains
as a single `serve` does. A worker that dies is replaced by a new one, whose row writer replays the
dead worker's journal segment (journal.py: a segment nobody holds is an orphan).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import faulthandler
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from course_llm._litellm import configure_environment
from course_llm.errors import CourseLLMError
from course_llm.proxy.mock import QuietServer, mock_upstream_app
from course_llm.routing.compiler import compile_proxy_config, render_proxy_config
from course_llm.routing.registry import load_registry
from course_llm.settings import Settings

if TYPE_CHECKING:
    import uvicorn

log = structlog.get_logger()

#: Seconds an idle client connection stays open (uvicorn's default is 5).
KEEP_ALIVE_S = 65


#: The most worker processes `--workers` starts (each holds LiteLLM and its router: ~300 MB).
MAX_WORKERS = 64


class ServeError(CourseLLMError):
    """The proxy cannot start as asked (no key on a public host, port taken, …)."""


@dataclass(frozen=True)
class ServePlan:
    """What `serve` is about to run; printed as the start-up banner."""

    config_path: Path
    host: str
    port: int
    master_key: str = field(repr=False)
    dev_key: bool
    mock: bool
    database: str
    journal: str = ""
    #: The database URL as configured (with its password) and whether it is migrated already.
    database_url: str = field(default="", repr=False)
    database_migrated: bool = False
    #: The listening socket of the mock upstream (`--mock` only).
    mock_socket: socket.socket | None = None
    #: Worker processes (1: this process serves; see the module docstring).
    workers: int = 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


#: Port -> the socket that holds this process's claim on it. Never closed: the kernel drops it
#: when the process ends, however it ends (kill -9 included).
_PORT_CLAIMS: dict[int, socket.socket] = {}


def _lock_port(port: int) -> None:
    """Claim `port` for this process's life.

    Two `serve` started within moments on one port would both pass `_check_port` (neither listens
    yet) and, with `--workers` (one SO_REUSEPORT socket per worker), both listen: the kernel would
    split the clients between two proxies. The claim is a Linux abstract unix socket named after
    the port: no file (so no temporary directory, owner or permissions to disagree on), the same
    scope as the port itself (the network namespace), and gone with the process. Elsewhere there
    is no claim, only `_check_port`.
    """
    if port in _PORT_CLAIMS or not sys.platform.startswith("linux"):
        return
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not inherited by the workers
    try:
        claim.bind(f"\0course-llm-serve-{port}")
    except OSError:
        claim.close()
        raise ServeError(f"another course-llm serve is starting or running on port {port}") from None
    _PORT_CLAIMS[port] = claim


#: The key of `serve --mock` (and so `make run`) when LITELLM_MASTER_KEY is not set. It is public
#: on purpose: the mock answers offline, and only on a loopback address.
DEV_KEY = "sk-course-llm-dev"


def _master_key(settings: Settings, host: str, mock: bool) -> tuple[str, bool]:
    """The key clients must send, and whether it is the development key."""
    if settings.master_key is not None and settings.master_key.get_secret_value():
        return settings.master_key.get_secret_value(), False
    if not is_loopback(host):
        raise ServeError(f"refusing to serve on {host} without LITELLM_MASTER_KEY: set a key first")
    if not mock:
        raise ServeError(
            "set LITELLM_MASTER_KEY (the key clients send as Bearer token), or use --mock to try it"
        )
    return DEV_KEY, True


def _upgrade_database(url: str) -> bool:
    """Migrate the database; False when it is unreachable now (the proxy serves all the same)."""
    from course_llm.db import is_transient_db_error, redact_url, upgrade_database

    try:
        upgrade_database(url)
    except Exception as exc:
        # A timeout has no message at all: name its class then.
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not is_transient_db_error(exc):
            raise ServeError(f"cannot migrate {redact_url(url)}: {reason}") from None
        # The proxy still serves; rows wait in the journal until the database is back, and the row
        # writer migrates it first.
        log.error("database_unavailable_at_start", database=redact_url(url), error=reason)
        return False
    return True


def _loopback_listener() -> socket.socket:
    """A socket on a free loopback port, bound now so the port is known before the config is."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    return listener


def prepare(
    settings: Settings, *, registry_path: Path | None, host: str, port: int, mock: bool, workers: int = 1
) -> ServePlan:
    """Validate everything, write the runtime config, migrate the database. No server yet."""
    from course_llm.db import redact_url

    if not 1 <= workers <= MAX_WORKERS:
        raise ServeError(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}")
    configure_environment()
    path = registry_path or settings.registry_path
    registry = load_registry(path)
    key, dev_key = _master_key(settings, host, mock)
    _check_port(host, port)
    _lock_port(port)
    migrated = _upgrade_database(settings.database_url)
    config = compile_proxy_config(
        registry,
        max_attempts=settings.max_attempts,
        fallback_strategy=settings.fallback_strategy,
        timeout_s=settings.request_timeout_s,
        shared_redis=settings.redis_url is not None,
    )
    mock_socket = None
    if mock:
        from course_llm.proxy.mock import MOCK_PATH, mock_proxy_config

        mock_socket = _loopback_listener()
        mock_port = mock_socket.getsockname()[1]
        config = mock_proxy_config(config, f"http://127.0.0.1:{mock_port}{MOCK_PATH}")
    runtime = Path(tempfile.mkdtemp(prefix="course-llm-serve-"))
    atexit.register(shutil.rmtree, runtime, ignore_errors=True)
    config_path = runtime / "proxy_config.yaml"
    config_path.write_text(render_proxy_config(config, str(path)), encoding="utf-8")
    return ServePlan(
        config_path,
        host,
        port,
        key,
        dev_key,
        mock,
        redact_url(settings.database_url),
        str(settings.journal_path),
        database_url=settings.database_url,
        database_migrated=migrated,
        mock_socket=mock_socket,
        workers=workers,
    )


def build_app(plan: ServePlan) -> Any:
    """LiteLLM's proxy app with course_llm's routes mounted."""
    os.environ["LITELLM_MASTER_KEY"] = plan.master_key
    os.environ["CONFIG_FILE_PATH"] = str(plan.config_path)
    return proxy_app(plan.database_url if plan.database_migrated else None)


def proxy_app(migrated_url: str | None) -> Any:
    """LiteLLM's app (its key and config file from the environment) with course_llm's routes;
    `migrated_url` names the database already at the latest schema (the row writer skips it)."""
    # A crash in native code (a segfault was seen once in CI under a database outage) then
    # prints every thread's Python stack to stderr, the serve log, instead of nothing.
    faulthandler.enable()
    from litellm.proxy.proxy_server import app

    from course_llm.proxy.recorder import database_upgraded
    from course_llm.proxy.routes import mount_routes

    if migrated_url is not None:
        database_upgraded(migrated_url)  # before mount_routes builds the row writer
    mount_routes(app)
    return app


_EXAMPLE_BODY = '{"model": "text_processing", "messages": [{"role": "user", "content": "hi"}]}'


def _client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server listening on `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def banner(plan: ServePlan) -> str:
    """What to tell the person who started the proxy. A key they set themselves is never printed.

    The "try" line runs as printed in a POSIX shell: the key sits in double quotes, so
    `$LITELLM_MASTER_KEY` expands, and the JSON body in single quotes."""
    url = f"http://{_client_host(plan.host)}:{plan.port}"
    key = plan.master_key if plan.dev_key else "$LITELLM_MASTER_KEY"
    lines = [
        f"course_llm proxy on {url}  ({'offline mock answers' if plan.mock else 'real providers'})",
        f"  database   {plan.database}",
        *([f"  workers    {plan.workers} processes on one port"] if plan.workers > 1 else []),
        f"  journal    {plan.journal}.*  (rows wait here until they are in the database)",
        f"  key        {plan.master_key}  (the development key; set LITELLM_MASTER_KEY to choose one)"
        if plan.dev_key
        else "  key        from LITELLM_MASTER_KEY",
        f'  try        curl {url}/v1/chat/completions -H "Authorization: Bearer {key}" '
        f"-H 'Content-Type: application/json' -d '{_EXAMPLE_BODY}'",
        f"  rows       course-llm calls   |   {url}/dashboard",
    ]
    return "\n".join(lines)


def run(plan: ServePlan) -> None:
    """Serve until SIGTERM or SIGINT; then finish in-flight requests and flush every row."""
    import uvicorn

    app = build_app(plan)
    # Keep-alive beyond the clients' own idle expiry (httpx and so openai: 5 s, load balancers:
    # 60 s): at uvicorn's default 5 s the server could close a connection just as a client reused
    # it, and that request failed with a ReadError (seen once in the outage test under load).
    config = uvicorn.Config(
        app,
        host=plan.host,
        port=plan.port,
        log_level="warning",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    runtime = plan.config_path.parent

    class ProxyServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM/SIGINT when the server has stopped, which ends the process
            # before atexit runs: remove the runtime config directory first.
            with super().capture_signals():
                try:
                    yield
                finally:
                    shutil.rmtree(runtime, ignore_errors=True)

    proxy = ProxyServer(config)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve(proxy, plan.mock_socket))
    if not proxy.started:  # uvicorn logged why (as `uvicorn.run` does, exit with its code 3)
        raise SystemExit(3)


async def _serve(proxy: uvicorn.Server, mock_socket: socket.socket | None) -> None:
    """Run the proxy; with `--mock`, the mock upstream first, stopped only after the proxy.

    On a signal, uvicorn shuts the proxy down gracefully (in-flight requests, then LiteLLM's
    shutdown, which flushes the rows) and then re-raises the signal, which ends the process: the
    mock upstream answers until then."""
    if mock_socket is None:
        await proxy.serve()
        return
    import uvicorn

    class MockServer(QuietServer, uvicorn.Server):
        pass

    upstream = MockServer(
        uvicorn.Config(mock_upstream_app(), log_config=None, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(upstream.serve(sockets=[mock_socket]))
    while not upstream.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # its exception, if it has one
        raise ServeError("the mock upstream stopped at start-up")
    try:
        await proxy.serve()
    finally:
        upstream.should_exit = True
        await task
