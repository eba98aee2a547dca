"""Two `course-llm serve` on one port: the second is refused, even when both start together
(course_llm/proxy/serve.py `_lock_port`).

With `--workers`, each worker listens on a SO_REUSEPORT socket of its own, so a second `serve`
started before the first listened could listen on the same port too, and the kernel would split
the clients between two proxies. The check that the port is free cannot see a server that has
not bound yet; the per-port claim (an abstract unix socket) can.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from course_llm.proxy.serve import DEV_KEY
from tests.proxy_process import free_port, serve_argv
from tests.test_quiet_logs_e2e import mock_env

pytestmark = pytest.mark.e2e

REFUSED = "another course-llm serve is starting or running on port {port}"
HOLD = (
    "import sys, time; from course_llm.proxy import serve; serve._lock_port(int(sys.argv[1]));"
    " print('held', flush=True); time.sleep(60)"
)


def test_serve_is_refused_while_another_process_holds_the_port(tmp_path: Path) -> None:
    port = free_port()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            serve_argv("--mock", "--port", str(port)),
            env={**os.environ, **mock_env(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 1, second.stdout + second.stderr
    assert REFUSED.format(port=port) in second.stderr
    assert "Traceback" not in second.stderr


def test_two_serves_with_workers_started_together_leave_one_serving_the_port(tmp_path: Path) -> None:
    port = free_port()
    processes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        argv = serve_argv("--mock", "--port", str(port), "--workers", "2")
        env = {**os.environ, **mock_env(tmp_path / name)}
        with (tmp_path / f"{name}.log").open("wb") as log:
            processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and [p.poll() for p in processes].count(None) > 1:
            time.sleep(0.2)
        running = [p for p in processes if p.poll() is None]
        logs = [(tmp_path / f"{name}.log").read_text(errors="replace") for name in ("a", "b")]
        assert len(running) == 1, logs
        ((ended, log),) = [(p, log) for p, log in zip(processes, logs, strict=True) if p.poll() is not None]
        assert ended.returncode == 1, log[-2000:]
        assert REFUSED.format(port=port) in log, log[-2000:]
        # The one left serves, on both of its workers.
        body = {"model": "text_processing", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"Authorization": f"Bearer {DEV_KEY}"}
        deadline = time.monotonic() + 90
        statuses: list[int] = []
        while time.monotonic() < deadline and statuses != [200]:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=auth)
                statuses = [answer.status_code]
            except httpx.TransportError:
                time.sleep(0.5)
        assert statuses == [200]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
