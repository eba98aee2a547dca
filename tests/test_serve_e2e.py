"""`course-llm serve --mock` as `make run` starts it: the banner's "try" line runs as pasted, and
SIGTERM lets requests in flight finish against the mock upstream, every attempt recorded."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from course_llm.db import create_session_factory, dispose_session_factory, fetch_request
from course_llm.proxy.serve import DEV_KEY
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_quiet_logs_e2e import mock_env

pytestmark = pytest.mark.e2e

CLEAN_EXIT = (0, -signal.SIGTERM)
CHOSEN_KEY = "sk-chosen-e2e-key"


def start(tmp: Path, **env: str) -> ProxyProcess:
    port = free_port()
    return ProxyProcess(
        serve_argv("--mock", "--port", str(port)), {**mock_env(tmp), **env}, port, tmp / "log"
    ).start()


def try_line(proxy: ProxyProcess) -> str:
    [line] = [line for line in proxy.log().splitlines() if line.strip().startswith("try ")]
    return line.strip().removeprefix("try").strip()


def run_in_shell(command: str, **env: str) -> dict[str, object]:
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_the_banner_try_line_answers_when_pasted_into_a_shell(tmp_path: Path) -> None:
    proxy = start(tmp_path)
    try:
        assert f"key        {DEV_KEY}" in proxy.log()
        line = try_line(proxy)
        assert DEV_KEY in line
        answer = run_in_shell(line)
        assert answer.get("choices"), answer
    finally:
        proxy.stop()


def test_the_banner_try_line_expands_a_key_chosen_in_the_environment(tmp_path: Path) -> None:
    proxy = start(tmp_path, LITELLM_MASTER_KEY=CHOSEN_KEY)
    try:
        assert CHOSEN_KEY not in proxy.log()  # a chosen key is never printed
        line = try_line(proxy)
        answer = run_in_shell(line, LITELLM_MASTER_KEY=CHOSEN_KEY)
        assert answer.get("choices"), answer
    finally:
        proxy.stop()


async def failed_attempts(client: httpx.AsyncClient, proxy: ProxyProcess) -> float:
    metrics = await client.get(f"{proxy.base_url}/metrics", headers={"Authorization": f"Bearer {DEV_KEY}"})
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line.startswith("course_llm_call_failures_total{")
    )


async def test_sigterm_lets_requests_in_flight_retry_and_fall_back_against_the_mock(tmp_path: Path) -> None:
    scratch = tmp_path / "tmpdir"  # where `serve` writes its runtime config
    scratch.mkdir()
    proxy = start(tmp_path, TMPDIR=str(scratch))
    assert [p.name.startswith("course-llm-serve-") for p in scratch.iterdir()] == [True]
    count = 10
    # Each request: deepseek-chat fails twice (503, retried), then gemini-2.5-flash answers; every
    # attempt waits 1 s at the mock. SIGTERM comes once every first attempt has failed, so each
    # request still has a retry and a fallback to make against the mock.
    prompt = "question {} [mock-delay 1s] [mock-fail deepseek-chat=503]"
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            requests = [
                asyncio.ensure_future(
                    client.post(
                        f"{proxy.base_url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {DEV_KEY}"},
                        json={
                            "model": "text_processing",
                            "messages": [{"role": "user", "content": prompt.format(i)}],
                        },
                    )
                )
                for i in range(count)
            ]
            deadline = time.monotonic() + 60
            while await failed_attempts(client, proxy) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await failed_attempts(client, proxy) == count, proxy.log()[-3000:]
            assert proxy.process is not None
            proxy.process.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*requests, return_exceptions=True)
        assert proxy.process.wait(timeout=60) in CLEAN_EXIT, proxy.log()[-3000:]
    finally:
        proxy.stop()
    answered = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 200]
    assert len(answered) == count, [getattr(r, "text", r) for r in responses]
    factory = create_session_factory(proxy.env["COURSE_LLM_DATABASE_URL"])
    try:
        for response in answered:
            rows = await fetch_request(factory, response.headers["x-course-llm-request-id"])
            assert [(r.attempt, r.model_id, r.status_code, r.success) for r in rows] == [
                (1, "deepseek-chat", 503, False),
                (2, "deepseek-chat", 503, False),
                (3, "gemini-2.5-flash", None, True),
            ]
    finally:
        await dispose_session_factory(factory)
    assert proxy.log().count("database_upgrade_started") == 1
    assert "Traceback" not in proxy.log()
    assert list(scratch.iterdir()) == []  # the runtime config is removed before the signal ends it
