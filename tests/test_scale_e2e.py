"""End to end: three `course-llm serve` replicas behind a real nginx, sharing PostgreSQL and Redis (issue 15).

DESIGN.md's scale-out contract, checked on real processes: replicas on 127.0.0.1, each with its own
journal and replica name, one PostgreSQL database (this module's own, created empty: the first
three replicas start at once and must migrate it without racing), Redis database 15, the fake
upstream (tests/fake_upstream.py, or the scripted one of tests/test_routing_stage2.py for the
budget), nginx in front (tests/nginx.py), the official openai client as the caller.

- Load through nginx: every answered call has all its attempt rows, once (tests/load.py's audit
  against what the upstream saw), and every replica served some.
- SIGKILL one replica mid-load, keep the load going (nginx routes around it; calls in flight on it
  may fail: the promise is about answered calls), restart it on the same journal: nothing lost.
- A circuit opened through one replica is honoured by the others: they skip the model (a
  CircuitOpen row) without sending it anything.
- A budget spent by calls spread over the replicas refuses the next call on every replica.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import redis
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_ADMIN_URL, _postgres_admin, _postgres_unreachable
from tests.fake_upstream import FakeUpstream
from tests.load import (
    KEY,
    KINDS,
    MIX,
    REQUEST_ID,
    Answer,
    Load,
    journal_rows,
    prompt,
    proxy_env,
    registry_data,
    upstream_attempts,
    wait_for_rows,
)
from tests.nginx import Nginx, nginx_binary
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_breaker_routing import OPEN
from tests.test_budget_routing import CALL, budgeted
from tests.test_proxy_e2e import rows_of
from tests.test_response_cache import REDIS_URL, redis_or_skip
from tests.test_routing_stage2 import ACTION, ScriptedUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REPLICAS = ("a", "b", "c")
#: Concurrent clients: enough to keep every replica busy on 2 cores without queueing for long.
CLIENTS = 12
#: The upstream's answer time: keeps requests in flight (for the kill) without making the test slow.
UPSTREAM_DELAY_MS = 20
AUTH = {"Authorization": f"Bearer {KEY}"}


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx() -> str:
    return nginx_binary()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """This module's own empty PostgreSQL database (the replicas migrate it), dropped at the end.

    Not the session's database: the budget is seeded from the rows of its action, which other
    modules write there too."""
    server = make_url(POSTGRES_ADMIN_URL)
    name = f"course_llm_scale_{secrets.token_hex(6)}"
    try:
        asyncio.run(_postgres_admin(POSTGRES_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
        _postgres_unreachable(f"PostgreSQL not reachable at {server.host}:{server.port}: {exc}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_postgres_admin(POSTGRES_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_server() -> Iterator[redis.Redis]:
    client = redis_or_skip()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def up(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.reset()
    upstream.set_behaviour("*", delay_ms=UPSTREAM_DELAY_MS)
    yield upstream
    upstream.reset()


# -- three replicas and nginx --------------------------------------------------------------------


@dataclass
class Cluster:
    replicas: list[ProxyProcess]
    journals: list[Path]
    nginx: Nginx

    def port(self, index: int) -> int:
        return self.replicas[index].port

    def logs(self, limit: int = 1500) -> str:
        parts = [
            f"--- replica {n}:\n{r.log()[-limit:]}" for n, r in zip(REPLICAS, self.replicas, strict=True)
        ]
        return "\n".join([*parts, f"--- nginx:\n{self.nginx.log()[-limit:]}"])


def _start_all(processes: list[ProxyProcess]) -> None:
    with ThreadPoolExecutor(len(processes)) as pool:
        for future in [pool.submit(p.start) for p in processes]:
            future.result()


@contextmanager
def cluster(registry: Path, db_url: str, tmp: Path, nginx: str) -> Iterator[Cluster]:
    """Three `serve` replicas started at once (each its own journal and COURSE_LLM_REPLICA), nginx
    in front; everything stopped (SIGTERM: the replicas drain) at the end."""
    replicas, journals = [], []
    for name in REPLICAS:
        (tmp / name).mkdir(parents=True, exist_ok=True)
        journal = tmp / name / "journal" / "calls"
        env = proxy_env(db_url, journal) | {
            "COURSE_LLM_REDIS_URL": REDIS_URL,
            "COURSE_LLM_REPLICA": f"replica-{name}",
        }
        port = free_port()
        argv = serve_argv("--registry", str(registry), "--port", str(port))
        replicas.append(ProxyProcess(argv, env, port, tmp / name / "serve.log"))
        journals.append(journal)
    balancer = Nginx(nginx, [r.port for r in replicas], tmp / "nginx")
    try:
        _start_all(replicas)
        balancer.start()
        yield Cluster(replicas, journals, balancer)
    finally:
        balancer.stop()
        with ThreadPoolExecutor(len(replicas)) as pool:
            list(pool.map(lambda p: p.stop(), replicas))


def load_registry(tmp: Path, up: FakeUpstream, **sections: Any) -> Path:
    """tests/load.py's registry (`plain`, and `fallback` whose first model always answers 500)."""
    path = tmp / "models.yaml"
    path.write_text(yaml.safe_dump(registry_data(up.base_url) | sections))
    return path


# -- the load, through the official client -------------------------------------------------------


def openai_client(base_url: str, connections: int = 1) -> openai.AsyncOpenAI:
    """No client retries: a retry would resend a tag, and the audit counts the upstream's attempts."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return openai.AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key=KEY,
        max_retries=0,
        timeout=30,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits, trust_env=False),
    )


async def call(client: openai.AsyncOpenAI, kind: str, tag: str) -> str:
    """One request of tests/load.py's mix; its request id once the answer is complete, else raises."""
    group, streamed = KINDS[kind]
    messages: Any = [{"role": "user", "content": prompt(tag)}]
    if not streamed:
        raw = await client.chat.completions.with_raw_response.create(model=group, messages=messages)
        if not raw.parse().choices[0].message.content:
            raise RuntimeError("an empty answer")
        return raw.headers[REQUEST_ID]
    raw_stream = await client.chat.completions.with_raw_response.create(
        model=group, messages=messages, stream=True
    )
    finished, text = False, ""
    async for chunk in raw_stream.parse():
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finished = finished or choice.finish_reason is not None
    if not (finished and text):
        raise RuntimeError("the stream ended before its finish_reason")
    return raw_stream.headers[REQUEST_ID]


class Traffic:
    """`CLIENTS` clients calling `base_url` until `stop()`; `reach(n)` waits for n answers in all."""

    def __init__(self, base_url: str, run: str) -> None:
        self.base_url, self.run = base_url, run
        self.load = Load()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._drive())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _drive(self) -> None:
        counter = iter(range(10**9))
        client = openai_client(self.base_url, CLIENTS)

        async def worker() -> None:
            while not self._stop.is_set():
                i = next(counter)
                kind, tag = MIX[i % len(MIX)], f"{self.run}-{i}"
                try:
                    request_id = await call(client, kind, tag)
                except (openai.APIError, httpx.HTTPError, RuntimeError, KeyError) as exc:
                    self.load.unanswered.append((kind, f"{type(exc).__name__}: {exc}"[:300]))
                    await asyncio.sleep(0.05)  # a refused call comes back at once: do not spin
                    continue
                self.load.answered.append(Answer(request_id, kind, tag))
                self._changed.set()

        start = time.monotonic()
        try:
            await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        finally:
            self.load.seconds = time.monotonic() - start
            await client.close()

    async def reach(self, answers: int, timeout_s: float = 60) -> bool:
        """Wait until `answers` calls are answered in all; False when time ran out first."""
        deadline = time.monotonic() + timeout_s
        while len(self.load.answered) < answers:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1))
        return True

    async def stop(self) -> Load:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.load


async def get_json(base_url: str, path: str) -> Any:
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=10, trust_env=False) as http:
        response = await http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for_drained(journals: list[Path], timeout_s: float = 60) -> list[int]:
    """Rows still waiting in each journal, once all are empty or time is up."""
    deadline = time.monotonic() + timeout_s
    waiting = [len(journal_rows(j)) for j in journals]
    while any(waiting) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        waiting = [len(journal_rows(j)) for j in journals]
    return waiting


# -- 1: load through nginx -----------------------------------------------------------------------


async def test_load_through_nginx_records_every_answered_call_and_every_replica_serves(
    up: FakeUpstream, pg_url: str, redis_server: redis.Redis, nginx: str, tmp_path: Path
) -> None:
    with cluster(load_registry(tmp_path, up), pg_url, tmp_path, nginx) as c:
        async with Traffic(c.nginx.base_url, "spread") as traffic:
            reached = await traffic.reach(240)
        load = traffic.load
        result = await wait_for_rows(pg_url, load.answered, upstream_attempts(up, "spread"), timeout_s=60)
        served = c.nginx.served_by()
        logs = c.logs()
        # /metrics is per process, every sample labelled with its replica: together they add up.
        scrapes = [replica_metrics(r) for r in c.replicas]
    names = [{labels.get("replica") for labels, _ in scrape} for scrape in scrapes]
    assert names == [{f"replica-{name}"} for name in REPLICAS]
    calls = [
        sum(v for labels, v in scrape if labels["name"] == "course_llm_calls_total") for scrape in scrapes
    ]
    assert all(n > 0 for n in calls) and sum(calls) == result.found, (calls, result.line())
    assert reached, f"only {len(load.answered)} answered: {load.unanswered[:5]}\n{logs}"
    assert load.unanswered == [], load.unanswered[:5]
    assert result.ok and result.lost == 0, f"{result.describe()}\n{logs}"
    assert result.multi_attempt > 0
    assert {a.kind for a in load.answered} == set(KINDS)
    assert sorted(served) == sorted(r.port for r in c.replicas), served
    assert min(served.values()) >= len(load.answered) // 10, served  # round robin: about a third each


def replica_metrics(replica: ProxyProcess) -> list[tuple[dict[str, str], float]]:
    """One replica's `/metrics` samples: (their labels, with the sample's name as "name", value)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{replica.base_url}/metrics", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text[:300]
    return [
        ({**sample.labels, "name": sample.name}, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


# -- 2: SIGKILL one replica mid-load, then restart it ---------------------------------------------


async def test_a_replica_killed_mid_load_then_restarted_loses_no_answered_call(
    up: FakeUpstream, pg_url: str, redis_server: redis.Redis, nginx: str, tmp_path: Path
) -> None:
    with cluster(load_registry(tmp_path, up), pg_url, tmp_path, nginx) as c:
        victim, journal = c.replicas[1], c.journals[1]
        async with Traffic(c.nginx.base_url, "kill") as traffic:
            assert await traffic.reach(60), c.logs()
            victim.stop(sig=signal.SIGKILL)  # from the loop's thread: no client moves on meanwhile
            killed_at = len(traffic.load.answered)
            served_before = c.nginx.served_by()[victim.port]
            waiting_at_kill = len(journal_rows(journal))
            rerouted = await traffic.reach(killed_at + 60)  # nginx routes around the dead replica
            await asyncio.to_thread(victim.start)  # same port, same journal prefix
            restarted_at = len(traffic.load.answered)
            served_at_restart = c.nginx.served_by()[victim.port]
            await asyncio.sleep(3)  # past nginx's fail_timeout (2 s): it tries the replica again
            after_restart = await traffic.reach(restarted_at + 40)
        load = traffic.load
        waiting = await wait_for_drained(c.journals)
        result = await wait_for_rows(pg_url, load.answered, upstream_attempts(up, "kill"), timeout_s=60)
        served_after = c.nginx.served_by()[victim.port] - served_at_restart
        logs = c.logs()
    assert rerouted and after_restart, f"{len(load.answered)} answered: {load.unanswered[:5]}\n{logs}"
    assert served_before > 0  # it had answered calls of its own when it died
    assert load.unanswered, "no call failed: the kill landed between calls, not in the middle of them"
    assert result.ok and result.lost == 0, (
        f"rows waiting in its journal at the kill: {waiting_at_kill}\n{result.describe()}\n{logs}"
    )
    assert waiting == [0, 0, 0], waiting
    assert served_after > 0, "nginx never sent the restarted replica a call"
    assert result.multi_attempt > 0


# -- 3: a circuit opened through one replica -----------------------------------------------------


async def test_a_circuit_opened_through_one_replica_is_honoured_by_the_others(
    up: FakeUpstream, pg_url: str, redis_server: redis.Redis, nginx: str, tmp_path: Path
) -> None:
    breaker = {"circuit_breaker": {"failures": 2, "cooldown_s": 600}}
    with cluster(load_registry(tmp_path, up, **breaker), pg_url, tmp_path, nginx) as c:
        a, others = c.replicas[0], c.replicas[1:]
        # `fallback` is [flaky, ok]; flaky always answers 500 and is tried twice: its circuit opens.
        async with openai_client(a.base_url) as client:
            opened = await call(client, "fallback", "circuit-open")
        rows_a = await rows_of(pg_url, opened, 3)
        circuits_a = (await get_json(a.base_url, "/usage/circuits"))["circuits"]
        failing_hits = len(up.requests("load-fail-500"))
        # Sharing takes a sync (0.25 s) and a round trip; a loaded machine gets up to 30 s.
        deadline = time.monotonic() + 30
        while True:
            seen = [(await get_json(r.base_url, "/usage/circuits"))["circuits"] for r in others]
            if all(any(x["model_id"] == "flaky" for x in s) for s in seen):
                break
            assert time.monotonic() < deadline, f"the circuit never reached the others: {seen}"
            await asyncio.sleep(0.2)
        skipped = []
        for i, replica in enumerate(others):
            async with openai_client(replica.base_url) as client:
                request_id = await call(client, "fallback", f"circuit-{i}")
            rows = await rows_of(pg_url, request_id, 2)
            skipped.append([(r.attempt, r.model_id, r.error_class, r.success) for r in rows])
        sent_to_failing = len(up.requests("load-fail-500")) - failing_hits
        logs = c.logs()
    assert [(r.model_id, r.success) for r in rows_a] == [("flaky", False), ("flaky", False), ("ok", True)]
    assert [x["model_id"] for x in circuits_a] == ["flaky"], circuits_a
    assert skipped == [[(1, "flaky", OPEN, False), (2, "ok", None, True)]] * 2, logs
    assert sent_to_failing == 0


# -- 4: a budget spent across replicas -----------------------------------------------------------


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


async def test_a_budget_spent_through_all_replicas_refuses_the_next_call_on_every_one(
    scripted: ScriptedUpstream, pg_url: str, redis_server: redis.Redis, nginx: str, tmp_path: Path
) -> None:
    scripted.reset()
    calls = 6  # two per replica; each costs CALL, the limit is a tenth of one less than six
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump(budgeted(scripted.base_url, limit_usd=calls * CALL - CALL / 10)))
    with cluster(registry, pg_url, tmp_path, nginx) as c:
        async with openai_client(c.nginx.base_url) as through_nginx:
            for i in range(calls):
                await through_nginx.chat.completions.create(
                    model=ACTION, messages=[{"role": "user", "content": f"spend {i}"}]
                )
        served = c.nginx.served_by()
        deadline = time.monotonic() + 10  # each replica reads the counters back every second
        states: list[list[tuple[str, str]]] = []
        while time.monotonic() < deadline:
            budgets = [(await get_json(r.base_url, "/usage/budgets"))["budgets"] for r in c.replicas]
            states = [[(b["name"], b["state"]) for b in each] for each in budgets]
            if all(s == [("daily", "exceeded")] for s in states):
                break
            await asyncio.sleep(0.25)
        scripted.reset()
        refusals: list[Any] = []
        for replica in c.replicas:
            async with openai_client(replica.base_url) as client:
                try:
                    answer = await client.chat.completions.create(
                        model=ACTION, messages=[{"role": "user", "content": "one more"}]
                    )
                except openai.RateLimitError as exc:
                    refused = exc.response.json()["error"]["provider_specific_fields"]["error"]
                    refusals.append((refused["type"], refused["budget"]))
                else:
                    refusals.append(("answered", answer.choices[0].message.content))
        counters = [float(redis_server.get(k) or 0) for k in redis_server.keys("course_llm:budget:*")]
    assert sorted(served) == sorted(r.port for r in c.replicas), served  # every replica spent some
    assert states == [[("daily", "exceeded")]] * 3, states
    assert refusals == [("budget_exceeded", "daily")] * 3
    assert scripted.models() == []  # refused before anything was sent
    assert counters == [pytest.approx(calls * CALL)]
