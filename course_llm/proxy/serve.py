"""`course-llm serve`: compile the registry, upgrade the database, run the LiteLLM proxy.

The proxy runs in this process (uvicorn over LiteLLM's FastAPI app), so course_llm can mount its
own routes next to LiteLLM's: the usage API, /metrics and /dashboard, and with `--mock` the offline
upstream. The compiled config goes to a private temporary directory and LiteLLM reads it from
CONFIG_FILE_PATH at start-up, exactly as `litellm --config` would.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from course_llm._litellm import configure_environment
from course_llm.errors import CourseLLMError
from course_llm.routing.compiler import compile_proxy_config, render_proxy_config
from course_llm.routing.registry import load_registry
from course_llm.settings import Settings

log = structlog.get_logger()


class ServeError(CourseLLMError):
    """The proxy cannot start as asked (no key on a public host, port taken, …)."""


@dataclass(frozen=True)
class ServePlan:
    """What `serve` is about to run; printed as the start-up banner."""

    config_path: Path
    host: str
    port: int
    master_key: str
    generated_key: bool
    mock: bool
    database: str
    journal: str = ""


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


def _master_key(settings: Settings, host: str, mock: bool) -> tuple[str, bool]:
    if settings.master_key is not None and settings.master_key.get_secret_value():
        return settings.master_key.get_secret_value(), False
    if not is_loopback(host):
        raise ServeError(f"refusing to serve on {host} without LITELLM_MASTER_KEY: set a key first")
    if not mock:
        raise ServeError(
            "set LITELLM_MASTER_KEY (the key clients send as Bearer token), or use --mock to try it"
        )
    return f"sk-course-llm-{secrets.token_urlsafe(18)}", True


def _upgrade_database(url: str) -> None:
    from course_llm.db import is_transient_db_error, redact_url, upgrade_database

    try:
        upgrade_database(url)
    except Exception as exc:
        if not is_transient_db_error(exc):
            raise ServeError(f"cannot migrate {redact_url(url)}: {str(exc).splitlines()[0]}") from None
        # The proxy still serves; rows wait in the spool until the database is back and migrated.
        log.error("database_unavailable_at_start", database=redact_url(url), error=str(exc).splitlines()[0])


def prepare(settings: Settings, *, registry_path: Path | None, host: str, port: int, mock: bool) -> ServePlan:
    """Validate everything, write the runtime config, migrate the database. No server yet."""
    from course_llm.db import redact_url

    configure_environment()
    path = registry_path or settings.registry_path
    registry = load_registry(path)
    key, generated = _master_key(settings, host, mock)
    _check_port(host, port)
    _upgrade_database(settings.database_url)
    config = compile_proxy_config(
        registry,
        max_attempts=settings.max_attempts,
        fallback_strategy=settings.fallback_strategy,
        timeout_s=settings.request_timeout_s,
    )
    if mock:
        from course_llm.proxy.mock import MOCK_PATH, mock_proxy_config

        config = mock_proxy_config(config, f"http://127.0.0.1:{port}{MOCK_PATH}")
    runtime = Path(tempfile.mkdtemp(prefix="course-llm-serve-"))
    atexit.register(shutil.rmtree, runtime, ignore_errors=True)
    config_path = runtime / "proxy_config.yaml"
    config_path.write_text(render_proxy_config(config, str(path)), encoding="utf-8")
    return ServePlan(
        config_path,
        host,
        port,
        key,
        generated,
        mock,
        redact_url(settings.database_url),
        str(settings.journal_path),
    )


def build_app(plan: ServePlan) -> Any:
    """LiteLLM's proxy app with course_llm's routes mounted."""
    os.environ["LITELLM_MASTER_KEY"] = plan.master_key
    os.environ["CONFIG_FILE_PATH"] = str(plan.config_path)
    from litellm.proxy.proxy_server import app

    from course_llm.proxy.routes import mount_routes

    mount_routes(app, mock=plan.mock)
    return app


_EXAMPLE_BODY = '{"model": "text_processing", "messages": [{"role": "user", "content": "hi"}]}'


def banner(plan: ServePlan) -> str:
    """What to tell the person who started the proxy. A key they set themselves is never printed."""
    url = f"http://{plan.host}:{plan.port}"
    key = plan.master_key if plan.generated_key else "$LITELLM_MASTER_KEY"
    lines = [
        f"course_llm proxy on {url}  ({'offline mock answers' if plan.mock else 'real providers'})",
        f"  database   {plan.database}",
        f"  journal    {plan.journal}.*  (rows wait here until they are in the database)",
        f"  key        {plan.master_key}  (generated for this run; set LITELLM_MASTER_KEY to choose)"
        if plan.generated_key
        else "  key        from LITELLM_MASTER_KEY",
        f"  try        curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{_EXAMPLE_BODY}'",
        f"  rows       course-llm calls   |   {url}/dashboard",
    ]
    return "\n".join(lines)


def run(plan: ServePlan) -> None:
    import uvicorn

    app = build_app(plan)
    uvicorn.run(app, host=plan.host, port=plan.port, log_level="warning", timeout_graceful_shutdown=30)
