"""A fake LLM upstream for tests and benchmarks: the server, its control API and its controller.

A small ASGI server on 127.0.0.1 that speaks enough of the OpenAI Chat Completions, Anthropic Messages
and Gemini generateContent HTTP APIs (plain and streamed) for LiteLLM to call it, and that tests can
tell, per model, to fail with given statuses, to be slow, or what to answer. What it answers, and
how (faults, token estimates, ``fail-<code>`` models), is tests/fake_upstream_answers.py.

In-process (pytest, benchmarks)::

    with FakeUpstream() as up:
        up.set_behaviour("m", statuses=[500, 200])
        await litellm.acompletion(model="openai/m", api_base=up.base_url, api_key="x", messages=...)
        assert up.hits("m") == 2

As its own process (end-to-end tests, benchmarks): ``python tests/fake_upstream.py --port 0`` prints
``READY <port>`` once it listens (``--loop asyncio`` for asyncio's own event loop; the default,
uvicorn's "auto", is uvloop when installed, as in-process); drive it with ``FakeUpstream.attach(port)``.

Pointing LiteLLM at it: ``openai/<m>`` with ``api_base=up.base_url`` (``.../v1``); ``anthropic/<m>``
with ``api_base=up.anthropic_base_url`` (the root: LiteLLM appends ``/v1/messages``); ``gemini/<m>``
with ``api_base=up.gemini_base_url`` (``.../v1beta``: LiteLLM appends ``/models/<m>:generateContent``).

Control API: ``POST /_control/behaviour`` ``{"model", "statuses", "delay_ms", "reply", "json_reply",
"stream_fault", "fault_after", "chunk_delay_ms", "error_message"}`` (the statuses are answered in
order, the last one repeats; model ``"*"`` is the fallback for models with no behaviour of their own),
``POST /_control/reset``, ``GET /_control/requests[?model=m]``.

Every accepted connection gets TCP_NODELAY (`_NoDelayHTTP`). asyncio's own loop sets it only on
sockets whose ``proto`` is IPPROTO_TCP, and a socket built with ``socket(AF_INET, SOCK_STREAM)``
has ``proto=0``, as do the connections it accepts; without it, Nagle's algorithm holds back the
body behind the unacknowledged headers until the client's delayed ACK (about 40 ms on Linux), on
every request of a reused connection. uvloop sets it by itself; this does not depend on which.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.auto import AutoHTTPProtocol

if not __package__:  # run as a script (`python tests/fake_upstream.py`): `tests.` as pytest finds it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_upstream_answers import (
    STREAM_FAULTS,
    Behaviour,
    FakeState,
    StreamCut,
    anthropic_messages,
    estimate_tokens,
    fake_state,
    gemini_generate,
    openai_chat,
    request_body,
)

#: What tests and benchmarks import from here (`estimate_tokens` comes with the answers module).
__all__ = ["Behaviour", "FakeState", "FakeUpstream", "create_app", "estimate_tokens", "main"]


class _QuietCuts(logging.Filter):
    """uvicorn logs every body that raises as an application error; a planned cut is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamCut))


class _NoDelayHTTP(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol (h11 or httptools, as uvicorn picks) with TCP_NODELAY on its connection.

    See the module docstring: asyncio leaves Nagle on for the listening socket's ``proto=0``
    connections, which costs ~40 ms per reused connection (measured with uvicorn 0.54, Python 3.11).
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


async def control_behaviour(request: Request) -> Response:
    body = await request_body(request)
    if not isinstance(body.get("model"), str):
        return JSONResponse({"error": "a JSON object with a string 'model' is required"}, status_code=400)
    json_reply = body.get("json_reply")
    if json_reply is not None and not isinstance(json_reply, str):
        json_reply = json.dumps(json_reply)
    fault = body.get("stream_fault")
    if fault is not None and fault not in STREAM_FAULTS:
        return JSONResponse({"error": f"stream_fault must be one of {STREAM_FAULTS}"}, status_code=400)
    statuses = [int(s) for s in body.get("statuses") or [200]]
    behaviour = Behaviour(statuses, float(body.get("delay_ms") or 0), body.get("reply"), json_reply)
    behaviour.stream_fault = fault
    behaviour.fault_after = int(body.get("fault_after", 2))
    behaviour.chunk_delay_ms = float(body.get("chunk_delay_ms") or 0)
    behaviour.error_message = body.get("error_message")
    fake_state(request).behaviours[body["model"]] = behaviour
    return JSONResponse({"ok": True})


async def control_reset(request: Request) -> Response:
    request.app.state.fake = FakeState()
    return JSONResponse({"ok": True})


async def control_requests(request: Request) -> Response:
    model = request.query_params.get("model")
    return JSONResponse([r for r in fake_state(request).requests if model is None or r["model"] == model])


async def unknown_route(request: Request) -> Response:
    """Recorded too, so that a test pointing LiteLLM at the wrong base sees which path it asked for."""
    body = await request_body(request) if request.method == "POST" else {}
    fake_state(request).record(request, None, str(body.get("model", "")), body, 404)
    message = f"fake upstream has no route {request.method} {request.url.path}"
    return JSONResponse(
        {"error": {"message": message, "type": "not_found", "code": "not_found"}}, status_code=404
    )


def create_app() -> Starlette:
    routes = [
        Route("/v1/chat/completions", openai_chat, methods=["POST"]),
        Route("/chat/completions", openai_chat, methods=["POST"]),
        Route("/v1/messages", anthropic_messages, methods=["POST"]),
        Route("/messages", anthropic_messages, methods=["POST"]),
        Route("/v1beta/models/{target}", gemini_generate, methods=["POST"]),
        Route("/v1alpha/models/{target}", gemini_generate, methods=["POST"]),
        Route("/_control/behaviour", control_behaviour, methods=["POST"]),
        Route("/_control/reset", control_reset, methods=["POST"]),
        Route("/_control/requests", control_requests, methods=["GET"]),
        Route("/_control/health", lambda _: JSONResponse({"ok": True}), methods=["GET"]),
        Route("/{path:path}", unknown_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.fake = FakeState()
    return app


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _server(loop: str = "auto") -> uvicorn.Server:
    """The fake's uvicorn server; ``loop`` is uvicorn's choice ("auto": uvloop when installed)."""
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCuts) for f in error_log.filters):
        error_log.addFilter(_QuietCuts())
    config = uvicorn.Config(
        create_app(), http=_NoDelayHTTP, loop=loop, log_level="warning", access_log=False, lifespan="off"
    )
    config.timeout_graceful_shutdown = 2
    # Idle connections stay open 120 s, as a provider's do, not uvicorn's 5 s: a proxy that pooled a
    # connection while it served nothing (a benchmark running another target) otherwise reuses one
    # the fake is closing, gets "Connection error" and retries, an attempt no real upstream causes.
    config.timeout_keep_alive = 120
    return uvicorn.Server(config)


class FakeUpstream:
    """The fake upstream in a background thread on a free 127.0.0.1 port (or attached to a running one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, loop: str = "auto") -> None:
        """``loop``: uvicorn's event loop choice for start() ("auto", "asyncio", "uvloop")."""
        self.host, self.port, self.loop = host, port, loop
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    @classmethod
    def attach(cls, port: int, host: str = "127.0.0.1") -> FakeUpstream:
        """A controller for a fake already running as its own process; stop() leaves that process alone."""
        upstream = cls(host, port)
        upstream._client = httpx.Client(base_url=upstream.root_url, timeout=10, trust_env=False)
        return upstream

    def start(self) -> FakeUpstream:
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = server = _server(self.loop)
        self._thread = threading.Thread(target=server.run, args=([sock],), name="fake-upstream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.005)
        self._client = httpx.Client(base_url=self.root_url, timeout=10, trust_env=False)
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """For OpenAI clients and LiteLLM ``openai/<model>``."""
        return f"{self.root_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For LiteLLM ``anthropic/<model>`` (it appends /v1/messages) and the Anthropic SDK."""
        return self.root_url

    @property
    def gemini_base_url(self) -> str:
        """For LiteLLM ``gemini/<model>`` (it appends /models/<model>:generateContent)."""
        return f"{self.root_url}/v1beta"

    def _control(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("the fake upstream is not running: use start(), a with block, or attach()")
        return self._client

    def set_behaviour(
        self,
        model: str,
        statuses: Sequence[int] = (200,),
        delay_ms: float = 0,
        reply: str | None = None,
        json_reply: Any = None,
        *,
        stream_fault: str | None = None,
        fault_after: int = 2,
        chunk_delay_ms: float = 0,
        error_message: str | None = None,
    ) -> None:
        """The next requests for ``model`` (``"*"``: any model without its own) answer ``statuses`` in
        order, the last one repeating, each after ``delay_ms``; ``reply`` is the text of a success,
        ``json_reply`` (a str or JSON-able value) the text when the request asks for JSON output.
        A streamed success misbehaves as ``stream_fault`` says ("cut" or "no_finish", after
        ``fault_after`` events) and waits ``chunk_delay_ms`` before each event. An error answer
        says ``error_message`` (``{api_key}``: the credential the request carried)."""
        payload = {"model": model, "statuses": list(statuses), "delay_ms": delay_ms, "reply": reply}
        payload |= {"json_reply": json_reply, "stream_fault": stream_fault, "fault_after": fault_after}
        payload |= {"chunk_delay_ms": chunk_delay_ms, "error_message": error_message}
        self._control().post("/_control/behaviour", json=payload).raise_for_status()

    def reset(self) -> None:
        """Forget every behaviour and every recorded request."""
        self._control().post("/_control/reset").raise_for_status()

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        """The requests received, oldest first: provider, model, path, status, stream, auth, body, time."""
        params = {"model": model} if model is not None else {}
        response = self._control().get("/_control/requests", params=params)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def hits(self, model: str) -> int:
        return len(self.requests(model))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake LLM upstream; prints 'READY <port>'.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--loop", default="auto", help="uvicorn's event loop: auto, asyncio or uvloop")
    args = parser.parse_args(argv)
    sock = _listen(args.host, args.port)
    server = _server(args.loop)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.005)
        if server.started:
            print(f"READY {sock.getsockname()[1]}", flush=True)
        await task

    # The loop in-process servers get too (uvicorn's Server.run): "auto" is uvloop when installed.
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
