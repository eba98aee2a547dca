"""Circuits shared through Redis (`COURSE_LLM_REDIS_URL`): a circuit open in one process is open in all.

Each process keeps its own `CircuitBreaker` (breaker.py): `allow()` stays a dictionary lookup, with
no network on the request path. This module links the breakers of every worker and replica through
one Redis hash, `course_llm:circuits`, a field per model id that is open or half-open somewhere:

    {"until": <Unix time its cooldown ends>, "status": <last HTTP status or null>, "failures": n}

- A process whose breaker opens a circuit (or re-opens it after a failed trial) writes the field,
  unless the field already says a later `until` (a Lua script: the latest cooldown wins).
- A process whose trial closes a circuit deletes the field, only if it still holds the value this
  process last saw (a Lua compare-and-delete): a re-opening elsewhere meanwhile is not undone.
- Every `interval_s` (0.25 s) each process sends what changed, then reads the whole hash (one
  HGETALL, a few fields at most): a field it has not seen opens the circuit here (`adopt`, with
  the time left to `until`), and a field it had seen that is gone closes it (`forget`).

So an opening reaches every process within about `interval_s` (plus a round trip). What stays per
process, on purpose: the count of consecutive failures before a circuit opens (each process opens
on what it saw; the first to open opens it everywhere), and the half-open trial: once `until` has
passed, each process may send one trial; the first success closes the circuit everywhere, a
failure re-opens it everywhere. `until` is wall-clock time: replicas on different hosts need
synchronised clocks (NTP), or a cooldown is longer or shorter by their skew.

Redis away: each breaker goes on alone (as without Redis), changes wait in memory (the newest per
model) and are sent when Redis answers again; a failure is logged once per outage. Redis back
empty (no persistence, as in deploy/compose.yaml): a marker field tells a lost hash from circuits
closed elsewhere, and every process sends again what is open in it. A field that is not one this
module writes, or that would keep a circuit open longer than the registry's cooldown, is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
import uuid
from typing import Any

import structlog

from course_llm.control.breaker import CircuitBreaker

__all__ = ["SharedCircuits"]

log = structlog.get_logger()

#: Sets field ARGV[1] to ARGV[2] unless the stored value's `until` is later than ARGV[3].
_OPEN = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  local ok, value = pcall(cjson.decode, stored)
  local ends = ok and type(value) == 'table' and tonumber(value['until'])
  if ends and ends > tonumber(ARGV[3]) then
    return stored
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
"""
#: Deletes field ARGV[1] only while it still holds ARGV[2].
_CLOSE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
#: A field nobody has changed for this long is dropped when read (a circuit left half-open by
#: processes that all stopped). It only ever closes a circuit nobody is tracking any more.
_STALE_S = 24 * 3600.0
#: The field that marks the hash as kept (not a model id: those never hold a "#"), a random value
#: per hash: when it is missing or new, Redis lost the hash, and a missing circuit was not closed
#: by anyone (`_recover`).
_MARKER = "#shared"
#: How far ahead of this process's cooldown a field's `until` may be (clocks of other hosts);
#: beyond that the field is dropped: no one opens a circuit for longer than the registry says.
_CLOCK_SKEW_S = 60.0
#: Seconds one Redis connect or command may take.
_TIMEOUT_S = 2.0


class SharedCircuits:
    """Keeps one `CircuitBreaker` in step with every other process on the same Redis hash."""

    def __init__(
        self,
        redis_url: str,
        *,
        key: str = "course_llm:circuits",
        interval_s: float = 0.25,
        client: Any = None,
    ) -> None:
        import redis.asyncio

        # Timeouts: a Redis that stopped answering must not hold a sync (or the shutdown) for
        # the operating system's connect timeout, minutes on a dropped route.
        self._redis: Any = client or redis.asyncio.Redis.from_url(
            redis_url, socket_connect_timeout=_TIMEOUT_S, socket_timeout=_TIMEOUT_S
        )
        self._key = key
        self.interval_s = interval_s
        self._open_script = self._redis.register_script(_OPEN)
        self._close_script = self._redis.register_script(_CLOSE)
        self._breaker: CircuitBreaker | None = None
        # model id → the newest change of this process not yet sent: ("open", value) or ("close", None).
        self._changes: dict[str, tuple[str, str | None]] = {}
        self._changes_lock = threading.Lock()  # the breaker may report from LiteLLM's threads
        # model id → (the field's value as last seen or written, the circuit's reopens_at here).
        self._seen: dict[str, tuple[str, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._epoch: str | None = None  # the hash's marker as this process last saw it
        self._failing = False
        #: Syncs that failed (Redis away).
        self.sync_failures = 0

    def attach(self, breaker: CircuitBreaker) -> None:
        """Share `breaker`'s circuits (it tells this object of its changes from now on)."""
        self._breaker = breaker
        breaker.listener = self

    # -- told by the breaker (any thread) -------------------------------------------------------

    def opened(
        self, model_id: str, reopens_at: float, reopens_in_s: float, status_code: int | None, failures: int
    ) -> None:
        until = time.time() + reopens_in_s
        value = json.dumps({"until": round(until, 3), "status": status_code, "failures": failures})
        with self._changes_lock:
            self._changes[model_id] = ("open", value)
            self._seen[model_id] = (value, reopens_at)

    def closed(self, model_id: str) -> None:
        with self._changes_lock:
            self._changes[model_id] = ("close", None)

    # -- the background sync ----------------------------------------------------------------------

    def start(self) -> None:
        """Sync every `interval_s` in the background of the running loop (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="course_llm-circuits")

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
                if self._failing:
                    self._failing = False
                    log.info("circuits_shared_again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: each breaker goes on alone meanwhile
                self.sync_failures += 1
                if not self._failing:
                    self._failing = True
                    log.error("circuits_sync_failed", error=type(exc).__name__, detail=str(exc)[:200])
            await asyncio.sleep(self.interval_s)

    async def sync(self) -> None:
        """Send this process's changes, then take the others'."""
        breaker = self._breaker
        if breaker is None:
            return
        with self._changes_lock:
            changes, self._changes = self._changes, {}
        try:
            for model_id, (kind, value) in list(changes.items()):
                await self._send(model_id, kind, value)
                del changes[model_id]
        finally:
            if changes:  # not sent (Redis away, or cancelled): keep them, unless newer ones came
                with self._changes_lock:
                    self._changes = changes | self._changes
        fields = {_text(k): _text(v) for k, v in (await self._redis.hgetall(self._key)).items()}
        epoch = fields.pop(_MARKER, None)
        if epoch is None or epoch != self._epoch:
            await self._recover(epoch)
            return
        now = time.time()
        longest = breaker.config.cooldown_s + _CLOCK_SKEW_S
        for model_id, value in fields.items():
            with self._changes_lock:
                seen = self._seen.get(model_id)
            if seen is not None and seen[0] == value:
                continue
            parsed = _parse(value)
            if parsed is None or now - parsed[0] > _STALE_S or parsed[0] - now > longest:
                await self._close_script(keys=[self._key], args=[model_id, value])
                continue
            until, status, failures = parsed
            reopens_at = breaker.adopt(model_id, until - now, status, failures)
            with self._changes_lock:
                self._seen[model_id] = (value, reopens_at)
        with self._changes_lock:  # gone from the hash: closed elsewhere, unless changed here since
            gone = [m for m in self._seen if m not in fields and m not in self._changes]
            closing = [(m, self._seen.pop(m)[1]) for m in gone]
        for model_id, reopens_at in closing:
            breaker.forget(model_id, reopens_at)

    async def _recover(self, epoch: str | None) -> None:
        """The hash's marker is not the one this process last saw: the hash is new to this process
        (its first sync), or Redis lost it (a restart without persistence, a flush) and someone
        put a new marker. Either way a missing field was not closed by anyone: take the marker
        (a new one if there is none), send again every circuit still open here, close nothing;
        the next sync goes on as usual. Every process does this once per marker."""
        assert self._breaker is not None
        if epoch is None:
            await self._redis.hsetnx(self._key, _MARKER, uuid.uuid4().hex)
            epoch = _text(await self._redis.hget(self._key, _MARKER) or b"")
        with self._changes_lock:
            known = list(self._seen.items())
        for model_id, (value, _) in known:
            if self._breaker.state(model_id) != "closed":
                await self._send(model_id, "open", value)
        self._epoch = epoch

    async def _send(self, model_id: str, kind: str, value: str | None) -> None:
        if kind == "open" and value is not None:
            until = json.loads(value)["until"]
            await self._open_script(keys=[self._key], args=[model_id, value, repr(until)])
            return
        with self._changes_lock:
            seen = self._seen.get(model_id)
        if seen is not None:
            await self._close_script(keys=[self._key], args=[model_id, seen[0]])
            with self._changes_lock:  # forgotten once sent (a failed send is tried again)
                if self._seen.get(model_id) == seen:
                    del self._seen[model_id]

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):  # a last closing or opening reaches the others
            await asyncio.wait_for(self.sync(), _TIMEOUT_S)
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _parse(value: str) -> tuple[float, int | None, int] | None:
    """A field's (until, status, failures); None when it is not one this module wrote."""
    try:
        data = json.loads(value)
        until = float(data["until"])
        status = data.get("status")
        failures = int(data.get("failures") or 0)
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
        return None
    odd_status = status is not None and (isinstance(status, bool) or not isinstance(status, int))
    if not math.isfinite(until) or odd_status:
        return None
    return until, status, failures
