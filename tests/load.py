"""Load and a row audit for the durability tests (tests/test_durability_e2e.py) and bench/bench_chaos.py.

`run_load` drives a running proxy with N concurrent clients until told to stop, with a mix of plain
calls, streamed calls and calls to a chain whose first model always fails (so a request has several
attempts), and keeps the request id (`x-course-llm-request-id`) of every request that got its full
answer: a 200 with a body, or a stream read to its `[DONE]`.

`audit_rows` then checks the database against what the fake upstream saw. Every prompt carries a
unique tag, and the fake upstream (tests/fake_upstream.py) records every request body it gets, so
the attempts one answered request made are counted independently of the proxy: its rows must be
exactly that many, attempts 1..n, the last one a success, no (request_id, attempt) twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

from course_llm.db import LLMCall, create_session_factory, dispose_session_factory, is_database_error
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import ProxyProcess, free_port, serve_argv

KEY = "sk-durability-key"
REQUEST_ID = "x-course-llm-request-id"
#: What a request asks for: (model group, streamed). "fallback" is a chain whose first model
#: always answers 500: two attempts on it (one retry), then the second model answers.
KINDS: dict[str, tuple[str, bool]] = {
    "plain": ("plain", False),
    "stream": ("plain", True),
    "fallback": ("fallback", False),
    "stream_fallback": ("fallback", True),
}
#: The request mix, cycled by each client: half plain, the rest streamed or multi-attempt.
MIX = ["plain", "stream", "plain", "fallback", "plain", "stream_fallback", "plain", "stream"]
#: Attempts each kind makes against the load registry (checked by `audit_rows` too).
ATTEMPTS = {"plain": 1, "stream": 1, "fallback": 3, "stream_fallback": 3}


def registry_data(upstream_base_url: str) -> dict[str, Any]:
    """Two OpenAI-compatible models on the fake upstream: `ok` answers, `flaky` always answers 500."""
    model = {
        "provider": "openai",
        "api_base": upstream_base_url,
        "api_key_env": "FAKE_UPSTREAM_KEY",
        "max_context": 8000,
        "cost_per_1k": {"input": 0.001, "output": 0.002},
    }
    return {
        "models": {"ok": {**model, "model": "load-ok"}, "flaky": {**model, "model": "load-fail-500"}},
        "actions": {"plain": {}, "fallback": {}},
        "routing": {"plain": {"default": ["ok"]}, "fallback": {"default": ["flaky", "ok"]}},
    }


def write_registry(path: Path, upstream_base_url: str) -> Path:
    path.write_text(yaml.safe_dump(registry_data(upstream_base_url)))
    return path


def proxy_env(db_url: str, journal: Path) -> dict[str, str]:
    return {
        "LITELLM_MASTER_KEY": KEY,
        "COURSE_LLM_DATABASE_URL": db_url,
        "COURSE_LLM_SPOOL_PATH": str(journal),
        "FAKE_UPSTREAM_KEY": "fake-key",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def serve_process(registry: Path, db_url: str, journal: Path, log: Path) -> ProxyProcess:
    """`course-llm serve` on a free port (not started)."""
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port))
    return ProxyProcess(argv, proxy_env(db_url, journal), port, log)


# -------------------------------------------------------------------------------------------------
# Load


@dataclass(frozen=True)
class Answer:
    """A request that got its full answer."""

    request_id: str
    kind: str
    tag: str


@dataclass
class Load:
    """What the clients saw."""

    answered: list[Answer] = field(default_factory=list)
    #: Requests without a full answer: (kind, what happened).
    unanswered: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.answered) + len(self.unanswered)


def prompt(tag: str) -> str:
    return f"Summarise lecture {tag} in two sentences."


async def _call(client: httpx.AsyncClient, kind: str, tag: str) -> str:
    """One request; its request id once the answer is complete. Raises when it is not."""
    group, streamed = KINDS[kind]
    body: dict[str, Any] = {"model": group, "messages": [{"role": "user", "content": prompt(tag)}]}
    if not streamed:
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        if not response.json()["choices"][0]["message"]["content"]:
            raise RuntimeError("an empty answer")
        return response.headers[REQUEST_ID]
    body["stream"] = True
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        done = False
        async for line in response.aiter_lines():
            if line.strip() == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and '"error"' in line:
                raise RuntimeError(f"an error frame: {line[:200]}")
        if not done:
            raise RuntimeError("the stream ended without [DONE]")
        return response.headers[REQUEST_ID]


async def run_load(
    base_url: str,
    stop: asyncio.Event,
    *,
    clients: int = 16,
    run: str = "",
    mix: Iterable[str] = MIX,
    timeout_s: float = 30,
    on_answer: Callable[[Answer], None] | None = None,
) -> Load:
    """`clients` concurrent clients call `base_url` until `stop` is set; returns what they saw.

    A request in flight when `stop` is set still finishes (or fails, if the proxy is gone)."""
    kinds = list(mix)
    load = Load()
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=timeout_s, limits=limits, trust_env=False
    ) as client:

        async def worker() -> None:
            while not stop.is_set():
                i = next(counter)
                kind = kinds[i % len(kinds)]
                tag = f"{run}-{i}"
                try:
                    request_id = await _call(client, kind, tag)
                except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                    load.unanswered.append((kind, f"{type(exc).__name__}: {exc}"[:300]))
                    await asyncio.sleep(0.05)  # a dead proxy refuses at once: do not spin
                    continue
                answer = Answer(request_id, kind, tag)
                load.answered.append(answer)
                if on_answer is not None:
                    on_answer(answer)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        load.seconds = time.monotonic() - start
    return load


# -------------------------------------------------------------------------------------------------
# Audit


def _body_text(body: Any) -> str:
    return json.dumps(body.get("messages", "")) if isinstance(body, dict) else ""


def upstream_attempts(upstream: FakeUpstream, run: str) -> Counter[str]:
    """How many requests the fake upstream received per tag of `run` (one per attempt)."""
    counts: Counter[str] = Counter()
    marker = f"lecture {run}-"
    for request in upstream.requests():
        text = _body_text(request.get("body"))
        start = text.find(marker)
        if start >= 0:
            tag = text[start + len("lecture ") :].split(" ", 1)[0]
            counts[tag] += 1
    return counts


@dataclass(frozen=True)
class Row:
    id: str
    request_id: str
    attempt: int
    success: bool
    model_id: str
    error_class: str | None = None

    def brief(self) -> str:
        return f"#{self.attempt} {self.model_id} " + ("ok" if self.success else f"failed {self.error_class}")


async def fetch_rows(db_url: str, request_ids: Iterable[str]) -> list[Row]:
    """Every llm_calls row of these requests (an empty list while the table does not exist yet)."""
    ids = sorted(set(request_ids))
    factory = create_session_factory(db_url)
    rows: list[Row] = []
    try:
        async with factory() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                result = await session.execute(
                    sa.select(
                        LLMCall.id,
                        LLMCall.request_id,
                        LLMCall.attempt,
                        LLMCall.success,
                        LLMCall.model_id,
                        LLMCall.error_class,
                    ).where(LLMCall.request_id.in_(chunk))
                )
                rows += [Row(str(r[0]), *r[1:]) for r in result]
    except Exception as exc:
        if not is_database_error(exc):
            raise
        return []
    finally:
        await dispose_session_factory(factory)
    return rows


@dataclass
class Audit:
    """The answered requests against the rows in the database."""

    answered: int
    expected: int  # attempt rows the answered requests need
    found: int  # rows of those requests in the database
    #: request id → what is wrong with its rows (missing, extra, out of order, not ending in success)
    problems: dict[str, str] = field(default_factory=dict)
    duplicate_ids: list[str] = field(default_factory=list)
    duplicate_attempts: list[tuple[str, int]] = field(default_factory=list)
    multi_attempt: int = 0  # answered requests with more than one attempt
    lost: int = 0  # expected rows with no row in the database

    @property
    def ok(self) -> bool:
        return not (self.problems or self.duplicate_ids or self.duplicate_attempts)

    def line(self) -> str:
        return (
            f"answered {self.answered} / rows expected {self.expected} / rows found {self.found} / "
            f"lost {self.lost}"
        )

    def describe(self, limit: int = 10) -> str:
        shown = list(self.problems.items())[:limit]
        lines = [self.line(), *(f"  {rid}: {what}" for rid, what in shown)]
        if len(self.problems) > limit:
            lines.append(f"  … and {len(self.problems) - limit} more requests")
        if self.duplicate_ids:
            lines.append(f"  duplicate row ids: {self.duplicate_ids[:limit]}")
        if self.duplicate_attempts:
            lines.append(f"  duplicate (request_id, attempt): {self.duplicate_attempts[:limit]}")
        return "\n".join(lines)


def audit(rows: list[Row], answered: list[Answer], attempts: Counter[str]) -> Audit:
    """Check `rows` (from the database or a journal) against every answered request; `attempts` is
    `upstream_attempts(...)`: how many attempts each request's tag made upstream."""
    by_request: dict[str, list[Row]] = {}
    for row in rows:
        by_request.setdefault(row.request_id, []).append(row)
    result = Audit(len(answered), sum(attempts[a.tag] for a in answered), len(rows))
    result.duplicate_ids = [i for i, n in Counter(r.id for r in rows).items() if n > 1]
    pairs = Counter((r.request_id, r.attempt) for r in rows)
    result.duplicate_attempts = [pair for pair, n in pairs.items() if n > 1]
    for answer in answered:
        mine = sorted(by_request.get(answer.request_id, []), key=lambda r: r.attempt)
        want = attempts[answer.tag]
        result.multi_attempt += want > 1
        got = [r.attempt for r in mine]
        result.lost += len(set(range(1, want + 1)) - set(got))
        if want != ATTEMPTS[answer.kind]:
            result.problems[answer.request_id] = (
                f"{answer.kind}: the upstream saw {want} attempts, {ATTEMPTS[answer.kind]} expected"
            )
        elif got != list(range(1, want + 1)):
            seen = ", ".join(r.brief() for r in mine) or "no row"
            result.problems[answer.request_id] = f"{answer.kind}: {want} attempts upstream, rows: {seen}"
        elif not mine[-1].success or any(r.success for r in mine[:-1]):
            outcome = [r.success for r in mine]
            result.problems[answer.request_id] = f"{answer.kind}: success per attempt {outcome}"
    return result


def journal_rows(prefix: Path) -> list[Row]:
    """The rows waiting in the journal under `prefix` (after each file's checkpoint)."""
    from course_llm.recording.replay import waiting_rows

    return [
        Row(str(r.id), r.request_id, r.attempt, r.success, r.model_id, r.error_class)
        for r in waiting_rows(prefix)
    ]


async def audit_rows(db_url: str, answered: list[Answer], attempts: Counter[str]) -> Audit:
    """`audit` of the database's rows."""
    return audit(await fetch_rows(db_url, (a.request_id for a in answered)), answered, attempts)


async def wait_for_rows(
    db_url: str, answered: list[Answer], attempts: Counter[str], timeout_s: float
) -> Audit:
    """`audit_rows` until it finds every row (then once more, so late duplicates show) or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await audit_rows(db_url, answered, attempts)
        if result.lost == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(0.5)
    return await audit_rows(db_url, answered, attempts)
