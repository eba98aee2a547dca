"""course_llm's HTTP routes and request guard, mounted on LiteLLM's proxy app by `course-llm serve`.

The usage API, /metrics and /dashboard read the same database the ProxyLogger writes to, and
answer only to the proxy's master key. (The offline upstream of `--mock` is a server of its own:
course_llm/proxy/serve.py.)

`_RequestGuard` stands in front of LiteLLM's endpoints (docs/architecture.md, "Untrusted clients"). LiteLLM
authenticates a request and parses its body before any hook runs, and its refusals there go
through its failure logging (a row, for a one-model chain) and, for a refused body, through an
error path that imports `prisma` (a bare 500). So the guard answers first: a chat or text
completion request with a wrong key (401), a body that is not a JSON object, a parameter outside
the allow-list or an unknown action (400) never reaches LiteLLM. It parses the body once and hands
LiteLLM the result in the cache its own reader looks in (`scope["parsed_body"]`). Any exception
nothing else answered becomes a JSON error with a fitting status (`refusal_for_exception`).
"""

from __future__ import annotations

import gc
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from functools import lru_cache
from typing import Any

import structlog
from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from starlette.middleware import Middleware

from course_llm.proxy.auth import check_master_key
from course_llm.proxy.guard import (
    BODY_CHECKED,
    Refusal,
    controls_refusal,
    endpoint_of,
    parse_json_object,
    request_refusal,
    unknown_model_reason,
)
from course_llm.proxy.hooks import proxy_logger, router_groups
from course_llm.proxy.proxy_log import quiet_model_list
from course_llm.proxy.unserved import unserved_refusal

log = structlog.get_logger()


def _master_key() -> str | None:
    return os.environ.get("LITELLM_MASTER_KEY") or None


def recording_health(logger: Any) -> tuple[int, dict[str, Any]]:
    """The recording side of health: 503 while rows cannot be journaled before their answer."""
    stats = logger.writer.stats()
    degraded = stats["degraded"]
    body = {
        "status": "degraded" if degraded else "healthy",
        "reason": degraded,
        "database_available": stats["database_available"],
        "rows_pending": stats["pending"],
        "rows_lost": stats["rows_lost"],
    }
    return (503 if degraded else 200), body


class _ReadinessGuard:
    """ASGI middleware: starts the row writer with the server; `/health/readiness` answers 503
    while recording is degraded (a full or read-only journal disk), so a load balancer stops
    sending traffic the replica cannot record. Every other request passes straight through."""

    def __init__(self, app: Any, logger: Any) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # `serve` builds the logger before any event loop runs; start its writer as soon as
            # the server's loop does, so a journal left by a killed process is written at start-up,
            # before (and without) any request.
            self.logger.writer.start()
            send = _until_started(send, _after_start_up(quiet_model_list()))
        elif scope["type"] == "http" and scope["path"] == "/health/readiness":
            status, body = recording_health(self.logger)
            if status != 200:
                await JSONResponse({"status": "degraded", "course_llm": body}, status_code=status)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _after_start_up(restore_stdout: Callable[[], None]) -> Callable[[], None]:
    def started() -> None:
        restore_stdout()
        # What start-up built (LiteLLM's modules, its router, the config) lives as long as the
        # process: keep it out of the garbage collector's scans, which otherwise walk some 370,000
        # such objects in every full collection, holding the event loop up to 0.24 s each.
        gc.freeze()

    return started


def _until_started(send: Send, done: Callable[[], None]) -> Send:
    """`send`, calling `done` when the server reports its start-up (complete or failed)."""

    async def sending(message: Message) -> None:
        if str(message.get("type", "")).startswith("lifespan.startup."):
            done()
        await send(message)

    return sending


#: The headers LiteLLM may take a key from (user_api_key_auth.get_api_key), in its order.
_KEY_HEADERS = (
    "x-litellm-api-key",
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "ocp-apim-subscription-key",
)
_KEY_HEADER_BYTES = frozenset(name.encode() for name in _KEY_HEADERS)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request presents, from the header LiteLLM would take it from: the first of
    `_KEY_HEADERS` present (`Authorization` only when not empty); from `Authorization` the token
    after `Bearer `, `bearer ` or `Basic ` and nothing otherwise, from `x-litellm-api-key` the same
    or the whole value."""
    for name in _KEY_HEADERS:
        value = headers.get(name)
        if value is None or (name == "authorization" and not value):
            continue
        if name in ("x-litellm-api-key", "authorization"):
            for prefix in ("Bearer ", "Basic ", "bearer "):
                if value.startswith(prefix):
                    return value.replace(prefix, "")
            return value if name == "x-litellm-api-key" else ""
        return value
    return ""


def _key_headers(scope: Message) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        if name in _KEY_HEADER_BYTES:
            found.setdefault(name.decode(), value.decode("latin-1"))
    return found


def _is_json(scope: Message) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json"
    return False


@lru_cache(maxsize=1024)
def _is_llm_route(path: str) -> bool:
    from litellm.proxy.auth.route_checks import RouteChecks

    return bool(RouteChecks.is_llm_api_route(path))


async def _answer(refusal: Refusal, send: Send) -> None:
    response = JSONResponse(refusal.body(), status_code=refusal.status)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads the request
    return {"type": "http.disconnect"}


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client left before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(raw: bytes, receive: Receive) -> Receive:
    """`receive` for the app behind: the body read already, then the client's own messages."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def _route_path(scope: Message) -> str:
    """The request's path within the app (any `root_path` it is mounted under taken off)."""
    path = str(scope["path"])
    root = scope.get("root_path") or ""
    return path[len(root) :] if root and path.startswith(root) else path


def _refused(refusal: Refusal, path: str) -> Refusal:
    # ascii(): a client's path or parameter name may hold newlines or control characters.
    log.info(
        "proxy_request_refused", path=ascii(path)[:200], status=refusal.status, param=ascii(refusal.param)
    )
    return refusal


class _RequestGuard:
    """ASGI middleware: refuses what the proxy must not serve before LiteLLM sees it, and answers
    any exception nothing else did as JSON (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        # `serve` sets the key before the app is built; auth.py stays the judge of any other key.
        self._key = os.environ.get("LITELLM_MASTER_KEY", "").encode()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            refusal = unserved_refusal(_route_path(scope), None) if scope["type"] == "websocket" else None
            if refusal is not None:
                _refused(refusal, _route_path(scope))
                if (await receive())["type"] == "websocket.connect":  # else the client left already
                    await send({"type": "websocket.close", "code": 1008})  # before accept: a 403
                return
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        path = _route_path(scope)
        checked = None
        try:
            unserved = unserved_refusal(path, str(scope["method"]))
            if unserved is not None:
                await _answer(_refused(unserved, path), tracked)
                return
            if scope["method"] in _BODY_METHODS:
                admitted = await self._admit(scope, path, receive, tracked)
                if admitted is None:
                    return
                receive, whole = admitted
                if whole:
                    checked = BODY_CHECKED.set(True)
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise  # the answer is under way: nothing left to say but to break it off
            refusal = refusal_for_exception(exc)
            _log_unhandled(refusal, exc, str(scope.get("path", "")))
            await _answer(refusal, send)
        finally:
            if checked is not None:
                BODY_CHECKED.reset(checked)

    async def _admit(
        self, scope: Message, path: str, receive: Receive, send: Send
    ) -> tuple[Receive, bool] | None:
        """None once the request has been answered (refused); else `receive` for LiteLLM, and
        whether the whole body was checked against the allow-list. `path` is `_route_path`'s."""
        endpoint = endpoint_of(path) if scope["method"] == "POST" else None
        if endpoint is not None:
            try:
                key = presented_key(_key_headers(scope))
                if not (self._key and secrets.compare_digest(key.encode(), self._key)):
                    check_master_key(key)  # raises, saying why
            except HTTPException as exc:
                await _answer(_refused(refusal_for_exception(exc), path), send)
                return None
        elif not _is_json(scope):
            return receive, False
        raw = await _read_body(receive)
        if raw is None:
            return None  # the client is gone
        if not raw and endpoint is None:
            return _replay(raw, receive), False  # an empty body: nothing to check
        body = parse_json_object(raw)
        refusal = body if isinstance(body, Refusal) else None
        if isinstance(body, dict):
            if endpoint is not None:
                kind, path_model = endpoint
                refusal = request_refusal(body, kind, path_model)
                if refusal is None:
                    reason = unknown_model_reason(str(path_model or body["model"]), *router_groups())
                    refusal = Refusal(400, reason, "model") if reason else None
            elif _is_llm_route(path):
                refusal = controls_refusal(body)
            # LiteLLM's own reader looks here first (http_parsing_utils.read_request_body).
            scope["parsed_body"] = (tuple(body), body)
        if refusal is not None:
            await _answer(_refused(refusal, path), send)
            return None
        return _replay(raw, receive), endpoint is not None


#: The start of the message of LiteLLM's body-safety refusals (`api_base`, `model_list`, …).
_LITELLM_REFUSED = "Rejected Request:"


def refusal_for_exception(exc: BaseException) -> Refusal:
    """What the client is told about an exception nothing else answered: never a bare 500.

    LiteLLM's error paths import `prisma` to ask whether the database failed; without prisma
    installed that import fails while the real error is being handled, so the real error is the
    failed import's context. LiteLLM's own refusals (`Rejected Request: …`) are the client's
    fault (400); anything else is the proxy's (500), and its text stays in the log."""
    seen = 0
    while isinstance(exc, ImportError) and exc.__context__ is not None and seen < 10:
        exc, seen = exc.__context__, seen + 1
    if isinstance(exc, HTTPException):  # the proxy's own refusals (auth, hooks): their text is ours
        status = exc.status_code if 400 <= exc.status_code <= 599 else 500
        detail = exc.detail.get("error", exc.detail) if isinstance(exc.detail, dict) else exc.detail
        kind = "auth_error" if status == 401 else "invalid_request_error"
        return Refusal(status, str(detail)[:500], type=kind)
    if isinstance(exc, ValueError) and str(exc).startswith(_LITELLM_REFUSED):
        return Refusal(400, str(exc).split(" Clientside passthrough", 1)[0][:500])
    name = type(exc).__name__
    return Refusal(500, f"internal error in the proxy ({name}); see its log", type="internal_server_error")


def _log_unhandled(refusal: Refusal, exc: BaseException, path: str) -> None:
    where = ascii(path)[:200]
    if refusal.status < 500:
        log.warning(
            "proxy_request_refused_late", path=where, status=refusal.status, error=ascii(refusal.message)
        )
    else:
        log.error("proxy_unhandled_error", path=where, error_class=type(exc).__name__, exc_info=exc)


async def unhandled_error(request: Any, exc: Exception) -> JSONResponse:
    """The app's last word on an exception (replaces LiteLLM's handler, which fails on `prisma`)."""
    refusal = refusal_for_exception(exc)
    _log_unhandled(refusal, exc, str(request.url.path))
    return JSONResponse(refusal.body(), status_code=refusal.status)


def mount_routes(app: Any) -> None:
    logger = proxy_logger()
    # Innermost, next to the routes: refusals still get LiteLLM's CORS and security headers, and
    # every exception from an endpoint passes through the guard before the server's last resort.
    app.user_middleware.append(Middleware(_RequestGuard))
    app.add_exception_handler(Exception, unhandled_error)

    health = APIRouter()

    @health.get("/health/recording", include_in_schema=False)
    async def health_recording() -> JSONResponse:
        status, body = recording_health(logger)
        return JSONResponse(body, status_code=status)

    app.include_router(health)
    app.add_middleware(_ReadinessGuard, logger=logger)
    try:
        from course_llm.proxy.usage_api import create_usage_router

        app.include_router(create_usage_router(lambda: logger.session_factory, _master_key))
        from course_llm.proxy.controls_api import create_controls_router

        app.include_router(create_controls_router(lambda: logger.controls, _master_key))
    except ImportError as exc:  # pragma: no cover - while the usage API is being built
        log.warning("usage_api_unavailable", error=str(exc))
    try:
        from course_llm.reporting.metrics import MetricsRecorder, create_metrics_router

        replica = {"replica": logger.settings.replica, "pid": str(os.getpid())}
        recorder = MetricsRecorder(process_labels=replica)
        logger.add_observer(recorder.observe)
        recorder.watch_writer(logger.writer.stats)
        recorder.watch_controls(lambda: logger.controls)
        app.include_router(create_metrics_router(recorder, _master_key))
    except ImportError as exc:  # pragma: no cover
        log.warning("metrics_unavailable", error=str(exc))
    try:
        from course_llm.proxy.dashboard import create_dashboard_router

        app.include_router(create_dashboard_router())
    except ImportError as exc:  # pragma: no cover
        log.warning("dashboard_unavailable", error=str(exc))
