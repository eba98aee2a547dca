"""End to end: an upstream that echoes the configured API key leaves that key nowhere.

The real proxy process (`course-llm serve`, and plain `litellm --config` on the compiled config,
where the proxy callback module alone registers the secrets) calls tests/fake_upstream.py, which
answers 401 with a message that repeats the credential it was sent (as a provider does with a
wrong key), in the text and in a `?key=` URL. The keys are configured the usual way, through the
env vars the registry names: the Gemini models get an Azure-style 32-hex key, the others a key of
no known shape, which only the configured-secret net (course_llm/recording/secrets.py) can catch.
Afterwards neither key, nor the proxy's master key, may be in the rows, the journal files, the
proxy's own log (stdout and stderr), the answers the client got, or a `course-llm export` CSV.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from course_llm.db import LLMCall
from course_llm.recording.secrets import MASK
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import BIN, ProxyProcess, free_port, litellm_argv, serve_argv
from tests.test_proxy_e2e import KEY, REQUEST_ID, client, e2e_registry, proxy_env, rows_of

pytestmark = pytest.mark.e2e

#: An Azure-style key (32 hex digits), for the Gemini models.
HEX_KEY = secrets.token_hex(16)
#: A key of no known shape: only its registration as a configured secret can mask it.
PLAIN_KEY = f"Zq7pL2-course-e2e-credential-{secrets.token_urlsafe(6)}"
ECHO = "Incorrect API key provided: {api_key}. See https://upstream.example/keys?key={api_key}"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module", params=["serve", "litellm"])
def how(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory: pytest.TempPathFactory, how: str) -> Path:
    return tmp_path_factory.mktemp(f"secrets-e2e-{how}")


@pytest.fixture(scope="module")
def db_url(proxy_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{proxy_dir / 'calls.db'}"


@pytest.fixture(scope="module")
def proxy(upstream: FakeUpstream, proxy_dir: Path, db_url: str, how: str) -> Iterator[ProxyProcess]:
    registry = e2e_registry(upstream, proxy_dir / "models.yaml")
    data = yaml.safe_load(registry.read_text())
    for model in data["models"].values():
        model["api_key_env"] = "E2E_HEX_KEY" if model["provider"] == "gemini" else "E2E_PLAIN_KEY"
    registry.write_text(yaml.safe_dump(data))
    port = free_port()
    env = proxy_env(db_url, proxy_dir) | {"E2E_HEX_KEY": HEX_KEY, "E2E_PLAIN_KEY": PLAIN_KEY}
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    if how == "litellm":
        config = proxy_dir / "proxy_config.yaml"
        compiled = subprocess.run(
            [*serve_argv()[:1], "compile", "--registry", str(registry), "--output", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert compiled.returncode == 0, compiled.stderr
        argv = litellm_argv(config, port)
    process = ProxyProcess(argv, env, port, proxy_dir / "proxy.log").start()
    yield process
    process.stop()


def assert_no_secret(where: str, text: str) -> None:
    for name, value in {"hex key": HEX_KEY, "plain key": PLAIN_KEY, "master key": KEY}.items():
        assert value not in text, f"the {name} is in {where}"


async def refused(proxy: ProxyProcess, model: str, *, stream: bool = False) -> tuple[str, str]:
    """(request id, the error body the client got) of a request every model of which fails."""
    messages = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.APIStatusError) as caught:
        if stream:
            async with client(proxy).chat.completions.with_streaming_response.create(
                model=model, messages=messages, stream=True
            ) as response:
                async for _ in response.iter_lines():
                    pass
        else:
            await client(proxy).chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    error = caught.value
    return error.response.headers.get(REQUEST_ID, ""), f"{error}\n{error.response.text}"


async def test_an_upstream_that_echoes_the_configured_key_leaves_it_nowhere(
    proxy: ProxyProcess, upstream: FakeUpstream, proxy_dir: Path, db_url: str
) -> None:
    upstream.reset()
    upstream.set_behaviour("*", statuses=[401], error_message=ECHO)
    answers: list[str] = []
    rows: list[LLMCall] = []
    for model, stream in [
        ("text_processing/budget", False),  # deepseek-chat (plain key), then the default chain
        ("video_analysis/budget", True),  # gemini-2.5-flash, streamed: the hex key
        ("course_structuring/quality", False),  # claude-sonnet then gemini-2.5-pro: both keys
    ]:
        request_id, answer = await refused(proxy, model, stream=stream)
        attempts = len(re.findall(r"#\d+ ", answer.split("\n")[0]))  # "all models failed: #1 …; #2 …"
        assert request_id and attempts, answer
        answers.append(answer)
        rows += await rows_of(db_url, request_id, attempts)
    await asyncio.sleep(0.5)  # let the proxy finish logging the last failure

    # The upstream did echo both keys: it received them.
    echoed = {r["provider"] for r in upstream.requests()}
    assert echoed == {"openai", "anthropic", "gemini"}, echoed
    assert {row.provider for row in rows} == {"deepseek", "gemini", "anthropic"}
    assert rows and not any(row.success for row in rows)
    for row in rows:
        # A streamed attempt that failed before its first chunk keeps LiteLLM's summary instead.
        assert row.stream or MASK in (row.error_message or ""), row.error_message
        assert_no_secret(f"row {row.model_id}", repr(vars(row)))
    for answer in answers:
        assert_no_secret("the client's answer", answer)

    journal = [path for path in proxy_dir.iterdir() if path.name.startswith("spool.jsonl")]
    journal_text = "\n".join(path.read_text(errors="replace") for path in journal)
    assert rows[0].request_id in journal_text  # the rows went through the journal
    assert_no_secret("the journal", journal_text)

    export = proxy_dir / "export.csv"
    env = {**os.environ, "COURSE_LLM_DATABASE_URL": db_url}
    argv = [str(BIN / "course-llm"), "export", "--output", str(export)]
    result = await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    csv_text = export.read_text()
    assert all(row.request_id in csv_text for row in rows)
    assert_no_secret("the CSV export", csv_text)

    assert_no_secret("the proxy's log", proxy.log())
