"""Circuits shared through Redis (course_llm/control/redis_circuits.py): open in one process, open in all.

Two breakers stand for two processes on one Redis (database 15, emptied per test); `sync()` is
called by hand where the background task would run it every 0.25 s. Then two facade routers with
the same `redis_url`: a circuit the first opens makes the second skip the model as a CircuitOpen
row, without an upstream call. The proxy across replicas is tests/test_scale_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis

from course_llm.control.breaker import CircuitBreaker
from course_llm.control.redis_circuits import SharedCircuits
from course_llm.control.sections import CircuitBreakerConfig
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import parse_registry
from tests.test_breaker_routing import (  # noqa: F401 (up and upstream are fixtures)
    FAILED,
    OPEN,
    chain_of,
    up,
    upstream,
    with_breaker,
)
from tests.test_response_cache import REDIS_URL, redis_or_skip
from tests.test_routing_stage2 import ACTION, Rows, ScriptedUpstream, stage2_registry

KEY = "course_llm:circuits"
MARKER = "#shared"
MODEL = "gpt"


@pytest.fixture
async def server() -> AsyncIterator[redis.Redis]:
    """Redis database 15, empty but for the hash's marker (as after the first sync of a process)."""
    client = redis_or_skip()
    client.flushdb()
    client.hset(KEY, MARKER, "1")
    yield client
    client.flushdb()
    client.close()


async def process(cooldown_s: float = 30.0) -> tuple[CircuitBreaker, SharedCircuits]:
    """A process's breaker, shared, after its first sync (which takes the hash's marker)."""
    breaker = CircuitBreaker(CircuitBreakerConfig(failures=2, cooldown_s=cooldown_s))
    shared = SharedCircuits(REDIS_URL)
    shared.attach(breaker)
    await shared.sync()
    return breaker, shared


@contextlib.asynccontextmanager
async def processes(
    count: int, cooldown_s: float = 30.0
) -> AsyncIterator[list[tuple[CircuitBreaker, SharedCircuits]]]:
    """`count` processes' breakers and shared circuits (as `process`), closed when done."""
    started: list[tuple[CircuitBreaker, SharedCircuits]] = []
    try:
        for _ in range(count):
            started.append(await process(cooldown_s))
        yield started
    finally:
        for _, shared in started:
            await shared.aclose()


def open_here(breaker: CircuitBreaker, status: int = 503) -> None:
    for _ in range(2):
        breaker.record_failure(MODEL, status, transient=True)
    assert breaker.state(MODEL) == "open"


async def test_a_circuit_opened_in_one_process_is_open_in_another(server: redis.Redis) -> None:
    async with processes(2) as ((a, a_shared), (b, b_shared)):
        open_here(a)
        assert b.allow(MODEL)  # not told yet
        await a_shared.sync()
        await b_shared.sync()
        assert not b.allow(MODEL)
        [circuit] = b.open_circuits()
        assert (circuit.state, circuit.last_status_code, circuit.consecutive_failures) == ("open", 503, 2)
        assert 29 < circuit.reopens_in_s <= 30
        stored = json.loads(server.hget(KEY, MODEL) or b"{}")
        assert stored["status"] == 503 and stored["until"] == pytest.approx(time.time() + 30, abs=2)


async def test_a_successful_trial_anywhere_closes_the_circuit_everywhere(server: redis.Redis) -> None:
    async with processes(2, cooldown_s=0.2) as ((a, a_shared), (b, b_shared)):
        open_here(a)
        await a_shared.sync()
        await b_shared.sync()
        await asyncio.sleep(0.25)
        assert b.state(MODEL) == "half_open" and a.state(MODEL) == "half_open"
        assert b.allow(MODEL)  # b's trial
        b.record_success(MODEL)
        await b_shared.sync()
        assert server.hget(KEY, MODEL) is None
        await a_shared.sync()
        assert a.state(MODEL) == "closed" and a.open_circuits() == []


async def test_a_close_does_not_undo_a_reopening_elsewhere(server: redis.Redis) -> None:
    async with processes(2, cooldown_s=0.2) as ((a, a_shared), (b, b_shared)):
        open_here(a)
        await a_shared.sync()
        await b_shared.sync()
        await asyncio.sleep(0.25)
        assert a.allow(MODEL) and b.allow(MODEL)  # each process's trial
        a.record_failure(MODEL, 500, transient=True)  # a's trial fails: a new cooldown
        await a_shared.sync()
        b.record_success(MODEL)  # b's trial answers, but b saw the older opening
        await b_shared.sync()
        assert json.loads(server.hget(KEY, MODEL) or b"{}")["status"] == 500  # still there
        # b took the re-opening (open, or half-open already if the machine stalled 0.2 s)
        assert b.state(MODEL) != "closed" and b.open_circuits()[0].last_status_code == 500
        await a_shared.sync()
        assert a.state(MODEL) != "closed"


async def test_the_latest_cooldown_wins_and_an_earlier_one_never_shortens_it(server: redis.Redis) -> None:
    async with processes(2) as ((a, a_shared), (b, b_shared)):
        open_here(b)
        await b_shared.sync()
        earlier = server.hget(KEY, MODEL)
        await asyncio.sleep(0.05)
        open_here(a)  # a opens on its own a little later, before it has heard of b's
        await a_shared.sync()
        later = server.hget(KEY, MODEL)
        assert later != earlier
        assert json.loads(later or b"{}")["until"] > json.loads(earlier or b"{}")["until"]
        await b_shared._send(MODEL, "open", (earlier or b"").decode())  # b's again, late
        assert server.hget(KEY, MODEL) == later


def test_an_adopted_circuit_is_never_open_longer_than_the_registry_says() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(failures=2, cooldown_s=5))
    breaker.adopt(MODEL, 3600, 500, 2)
    [circuit] = breaker.open_circuits()
    assert circuit.reopens_in_s <= 5
    assert breaker.opened_total == 0  # counted by the process that opened it, not by each


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b'{"until": "soon"}',
        b'{"until": Infinity}',
        b'{"until": 1e300, "status": "x"}',
        b"[]",
        b'{"until": 1, "failures": 1e400}',  # int(inf): OverflowError
        b"[" * 100_000,  # RecursionError
        b'{"until": 1, "status": true}',
        json.dumps({"until": time.time() + 365 * 86400, "status": 500, "failures": 2}).encode(),
    ],
    ids=[
        "text",
        "until-text",
        "infinity",
        "status-text",
        "list",
        "huge-failures",
        "deep",
        "status-bool",
        "a-year",
    ],
)
async def test_a_field_that_is_not_a_circuit_is_dropped_and_opens_nothing(
    server: redis.Redis, value: bytes
) -> None:
    server.hset(KEY, MODEL, value)
    async with processes(1) as [(breaker, shared)]:
        await shared.sync()
        assert breaker.allow(MODEL) and breaker.open_circuits() == []
        assert server.hget(KEY, MODEL) is None
        await shared.sync()  # and the syncs after go on
        assert shared.sync_failures == 0


async def test_a_circuit_left_half_open_for_a_day_is_dropped(server: redis.Redis) -> None:
    server.hset(KEY, MODEL, json.dumps({"until": time.time() - 2 * 86400, "status": 500, "failures": 3}))
    async with processes(1) as [(breaker, shared)]:
        await shared.sync()
        assert breaker.state(MODEL) == "closed" and server.hget(KEY, MODEL) is None


async def test_redis_back_empty_does_not_close_circuits_and_they_are_sent_again(server: redis.Redis) -> None:
    async with processes(2) as ((a, a_shared), (b, b_shared)):
        open_here(a)
        await a_shared.sync()
        await b_shared.sync()
        assert b.state(MODEL) == "open"
        server.flushdb()  # Redis restarted without persistence
        await b_shared.sync()
        await a_shared.sync()
        assert (a.state(MODEL), b.state(MODEL)) == ("open", "open")
        assert server.hget(KEY, MODEL) is not None and server.hget(KEY, MARKER) is not None
        async with processes(1) as [(fresh, fresh_shared)]:  # started after the loss, it learns of it too
            await fresh_shared.sync()
            assert fresh.state(MODEL) == "open"


async def test_redis_back_empty_keeps_a_circuit_only_the_second_process_to_sync_knew(
    server: redis.Redis,
) -> None:
    async with processes(2) as ((a, a_shared), (b, b_shared)):
        open_here(b)  # b's own circuit, sent, but a has not synced since
        await b_shared.sync()
        server.flushdb()
        await a_shared.sync()  # a finds the hash lost first and puts a new marker
        await b_shared.sync()  # b must not take its circuit for closed elsewhere
        assert b.state(MODEL) == "open" and server.hget(KEY, MODEL) is not None
        await a_shared.sync()
        assert a.state(MODEL) == "open"


async def test_a_closing_that_failed_to_reach_redis_is_sent_when_it_answers(server: redis.Redis) -> None:
    async with processes(2, cooldown_s=0.2) as ((a, a_shared), (b, b_shared)):
        open_here(a)
        await a_shared.sync()
        await b_shared.sync()
        await asyncio.sleep(0.25)
        assert a.allow(MODEL)
        a.record_success(MODEL)  # a's trial closes it, but Redis does not answer the closing
        closing = a_shared._close_script

        async def unreachable(**_: object) -> None:
            raise redis.exceptions.ConnectionError("away")

        a_shared._close_script = unreachable  # type: ignore[method-assign]
        with pytest.raises(redis.exceptions.ConnectionError):
            await a_shared.sync()
        a_shared._close_script = closing  # type: ignore[method-assign]
        await a_shared.sync()  # back: the closing goes out, and a does not take the field again
        assert server.hget(KEY, MODEL) is None and a.state(MODEL) == "closed"
        await b_shared.sync()
        assert b.state(MODEL) == "closed"


async def test_a_circuit_closed_elsewhere_closes_here_only_while_the_hash_is_kept(
    server: redis.Redis,
) -> None:
    async with processes(2) as ((a, a_shared), (b, b_shared)):
        open_here(a)
        await a_shared.sync()
        await b_shared.sync()
        server.hdel(KEY, MODEL)  # what a closing process does (compare-and-delete)
        await b_shared.sync()
        assert b.state(MODEL) == "closed"


async def test_with_redis_away_the_breaker_goes_on_alone_and_shares_its_opening_later(
    server: redis.Redis,
) -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(failures=2, cooldown_s=30))
    away = SharedCircuits("redis://127.0.0.1:1/0")
    away.attach(breaker)
    open_here(breaker)
    with pytest.raises(redis.exceptions.ConnectionError):
        await away.sync()
    assert not breaker.allow(MODEL)  # the local circuit works all the same
    await away.aclose()
    # The opening waited in memory: a sync that reaches Redis sends it.
    back = SharedCircuits(REDIS_URL)
    back._breaker = breaker  # the same breaker, now on a Redis that answers
    back._changes = away._changes
    try:
        await back.sync()
        assert server.hget(KEY, MODEL) is not None
    finally:
        await back.aclose()


async def test_two_routers_on_one_redis_share_an_open_circuit(
    server: redis.Redis,
    up: ScriptedUpstream,  # noqa: F811
) -> None:
    up.script("m-first", FAILED)
    registry = parse_registry(with_breaker(stage2_registry(up.base_url)))
    rows = Rows()
    async with asyncio.timeout(60):  # a hang fails here, with the awaiting stack, not the suite
        first = ModelRouter(registry, writer=rows, redis_url=REDIS_URL)  # type: ignore[arg-type]
        second = ModelRouter(registry, writer=rows, redis_url=REDIS_URL)  # type: ignore[arg-type]
        async with first, second:
            await first.complete(ACTION, "x")  # two 500s: its circuit opens
            await asyncio.sleep(0.2)
            await second.complete(ACTION, "warm up")  # starts the second router's sync; may call m-first
            deadline = time.monotonic() + 30  # 0.25 s normally; generous for a loaded machine
            while second.breaker is not None and second.breaker.state("first") == "closed":
                assert time.monotonic() < deadline, "the opening never reached the second router"
                await asyncio.sleep(0.05)
            up.reset()
            skipped = await second.complete(ACTION, "x")
    assert chain_of(rows, skipped.request_id) == [
        (1, "first", None, OPEN, False),
        (2, "second", None, None, True),
    ]
    assert up.models() == ["m-second"]
